"""The operator's liveness endpoint, /healthz, on one or more addresses.

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


async def serve(port: int, addresses: Sequence[str],
                report: Callable[[], dict[str, Any]]) -> web.AppRunner | None:
    """Serve /healthz on ``port`` at every address (0: off). Returns the runner to clean up."""
    if not port:
        return None

    async def healthz(_: web.Request) -> web.Response:
        return web.json_response(report())

    app = web.Application()
    app.router.add_get("/healthz", healthz)
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
