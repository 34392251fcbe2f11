"""The HTTP server a webhook gateway receives its platform's posts on (both platforms)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Coroutine, Hashable
from typing import Any
from urllib.parse import urlsplit

from aiohttp import web

MAX_BODY = 1 << 20  # an update is a few KiB; the platforms' largest are far below 1 MiB


def path_of(url: str) -> str:
    """The path of the public URL the gateway serves (the Ingress or the user's routing keeps
    it; only the host changes on the way)."""
    return urlsplit(url).path or "/"


async def serve(handler: Callable[[web.Request], Awaitable[web.StreamResponse]], *, url: str,
                host: str, port: int) -> tuple[web.AppRunner, int]:
    """Serve ``handler`` on ``url``'s path at host:port; the runner (cleanup() stops it) and
    the bound port (``port`` 0 in tests: a free one)."""
    app = web.Application(client_max_size=MAX_BODY)
    app.router.add_route("*", path_of(url), handler)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
    await runner.setup()
    site = web.TCPSite(runner, host, port, reuse_address=True)
    await site.start()
    server = site._server
    assert isinstance(server, asyncio.Server)
    return runner, int(server.sockets[0].getsockname()[1])


class Attempts:
    """One attempt per update: the platform gives up waiting on a slow answer and posts the
    same update again while the first attempt still runs; the repeat joins that attempt
    (shielded: it outlives the request that started it) instead of relaying twice."""

    def __init__(self) -> None:
        self._running: dict[Hashable, asyncio.Task[bool]] = {}

    async def join(self, key: Hashable,
                   start: Callable[[], Coroutine[Any, Any, bool]]) -> bool:
        task = self._running.get(key)
        if task is None:
            task = asyncio.create_task(start())
            self._running[key] = task
            task.add_done_callback(lambda _: self._running.pop(key, None))
        return await asyncio.shield(task)
