"""A tiny standalone echo backend speaking the relay protocol (docs/relay.md).

    python -m switchboard_gateway.backend --port 8090 [--host 127.0.0.1]

prints ``READY http://HOST:PORT/relay`` and answers every POST /relay with
``{"text": "echo: <text>"}``. Tests and the benchmark use :class:`EchoBackend` in-process, whose
``fail_status``/``hold`` knobs make it fail or hang on purpose.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
from typing import Any, Self

from aiohttp import web

from switchboard_gateway.relay import echo_reply


class EchoBackend:
    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self.host = host
        self.port = port
        self.received: list[dict[str, Any]] = []  # every request body, failed ones included
        self.fail_status: int | None = None  # answer this status instead of the echo
        self.hold: asyncio.Event | None = None  # if set, requests wait for it before answering
        self._runner: web.AppRunner | None = None
        self._changed = asyncio.Event()

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/relay"

    async def start(self) -> Self:
        app = web.Application()
        app.router.add_post("/relay", self._relay)
        app.router.add_get("/healthz", self._healthz)
        self._runner = web.AppRunner(app, access_log=None, handler_cancellation=True)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port, reuse_address=True)
        await site.start()
        server = site._server  # the bound port when 0 was asked for
        assert server is not None and isinstance(server, asyncio.Server)
        self.port = server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> Self:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def texts(self) -> list[str]:
        return [str(body.get("text")) for body in self.received]

    async def wait_until(self, predicate: Any, timeout: float = 10.0) -> None:  # noqa: ASYNC109
        async with asyncio.timeout(timeout):
            while not predicate():
                changed = self._changed
                await changed.wait()

    @staticmethod
    async def _healthz(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def _relay(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.received.append(body)
        self._changed.set()
        self._changed = asyncio.Event()
        if self.hold is not None:
            await self.hold.wait()
        if self.fail_status is not None:
            return web.json_response({"error": "backend failing on purpose"},
                                     status=self.fail_status)
        return web.json_response({"text": echo_reply(str(body.get("text", "")))})


async def _serve(host: str, port: int) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    async with EchoBackend(host, port) as backend:
        print(f"READY {backend.url}", flush=True)
        await stop.wait()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Echo backend for the Switchboard relay")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8090, help="0 picks a free port")
    args = parser.parse_args(argv)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(args.host, args.port))


if __name__ == "__main__":
    main()
