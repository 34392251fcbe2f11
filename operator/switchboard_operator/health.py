"""The operator's liveness (/healthz) and readiness (/readyz) endpoints, on one or more
addresses.

/healthz answers whenever the event loop turns (a wedged loop fails it: restart). /readyz
answers 200 only once every watch has listed its objects: before that the operator would
decide from a partial cache, and a rolling update should not count it as up.

Why not kopf's own liveness endpoint: it binds a single host taken from a URL. The chart needs
two: the pod IP, which the kubelet probes, and 127.0.0.1, which `kubectl port-forward` reaches
(it connects through the pod's loopback). Like kopf's endpoint it answers from the operator's
event loop, so a wedged loop fails the probe; the body says whether this replica leads.
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Sequence
from typing import Any

from aiohttp import web


def check_free(port: int, addresses: Sequence[str]) -> None:
    """Raise OSError (one line: address, port, reason) if /healthz could not bind, before kopf
    starts: a port already taken then ends the operator with that line, not a traceback."""
    if not port:
        return
    for address in addresses:
        family = socket.AF_INET6 if ":" in address else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind((address, port))
            except OSError as exc:
                raise OSError(exc.errno, f"cannot serve /healthz on {address}:{port}: "
                                         f"{exc.strerror}") from None


async def serve(port: int, addresses: Sequence[str], report: Callable[[], dict[str, Any]],
                ready: Callable[[], str | None] = lambda: None) -> web.AppRunner | None:
    """Serve /healthz and /readyz on ``port`` at every address (0: off). ``ready`` returns
    None when ready, else why not. Returns the runner to clean up."""
    if not port:
        return None

    async def healthz(_: web.Request) -> web.Response:
        return web.json_response(report())

    async def readyz(_: web.Request) -> web.Response:
        why = ready()
        return web.json_response({"ready": why is None, **({"reason": why} if why else {})},
                                 status=200 if why is None else 503)

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=1.0)
    await runner.setup()
    for address in addresses:
        try:
            await web.TCPSite(runner, address, port).start()
        except OSError as exc:
            await runner.cleanup()
            raise OSError(exc.errno, f"cannot serve /healthz on {address}:{port}: "
                                     f"{exc.strerror}") from None
    return runner
