"""Health (:8080 /healthz, /readyz) and metrics (:9090 /metrics) endpoints.

- /healthz (liveness) fails only when the process is wedged: a heartbeat task stamps the time
  every second, and a stamp older than ``stale_after`` means the event loop is starved or stuck.
  A fully blocked loop cannot answer at all, which fails the probe just the same. It fails at
  once, too, when a vital task (``vital()``: the status writer, the heartbeat itself) has
  ended: nothing could report that in status, so the kubelet restarts the container. Being
  disconnected, retrying or even `fatal` is *not* a liveness failure: the kubelet restarting the
  container would hide the state the operator acts on (see main.py).
- /readyz (readiness) is 200 only while the adapter reports `connected`.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest

from switchboard_gateway.redact import describe


class Readiness:
    """What /readyz answers. Ready when connected; a webhook gateway also as soon as its
    webhook server accepts requests (until a fatal): its Service sends traffic only to Ready
    pods, and the platform starts posting the moment the webhook is set. ``seen`` is set once
    /readyz answered ready (the kubelet's probe): then the pod's endpoint is about to serve."""

    def __init__(self, connected: Callable[[], bool], fatal: Callable[[], bool]) -> None:
        self._connected = connected
        self._fatal = fatal
        self.serving = False
        self.seen = asyncio.Event()

    def ready(self) -> bool:
        return self._connected() or (self.serving and not self._fatal())


class HealthServer:
    def __init__(
        self,
        *,
        host: str,
        health_port: int,
        metrics_port: int,
        ready: Callable[[], bool],
        on_ready: Callable[[], None] = lambda: None,
        state: Callable[[], str] = lambda: "",
        registry: CollectorRegistry = REGISTRY,
        beat_interval: float = 1.0,
        stale_after: float = 10.0,
    ) -> None:
        self.host = host
        self.health_port = health_port
        self.metrics_port = metrics_port
        self._ready = ready
        self._on_ready = on_ready
        self._state = state
        self._registry = registry
        self.beat_interval = beat_interval
        self.stale_after = stale_after
        self._last_beat = 0.0
        self._beat_task: asyncio.Task[None] | None = None
        self._vital: list[asyncio.Task[Any]] = []
        self._runners: list[web.AppRunner] = []

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._last_beat = loop.time()
        self._beat_task = asyncio.create_task(self._beat(), name="heartbeat")
        self.vital(self._beat_task)
        health = web.Application()
        health.router.add_get("/healthz", self._healthz)
        health.router.add_get("/readyz", self._readyz)
        metrics = web.Application()
        metrics.router.add_get("/metrics", self._metrics)
        self.health_port = await self._serve(health, self.health_port)
        self.metrics_port = await self._serve(metrics, self.metrics_port)

    async def _serve(self, app: web.Application, port: int) -> int:
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await runner.setup()
        site = web.TCPSite(runner, self.host, port, reuse_address=True)
        await site.start()
        self._runners.append(runner)
        server = site._server
        assert isinstance(server, asyncio.Server)
        return int(server.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        self._vital.clear()
        if self._beat_task is not None:
            self._beat_task.cancel()
            # It may have died earlier: liveness reported that already.
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._beat_task
        for runner in self._runners:
            await runner.cleanup()
        self._runners.clear()

    def vital(self, task: asyncio.Task[Any]) -> None:
        """Liveness fails as soon as ``task`` ends (until stop())."""
        self._vital.append(task)

    def dead_task(self) -> str | None:
        """The first vital task that has ended by itself, and how (cancelling one is its
        owner's decision, on the way out)."""
        for task in self._vital:
            if task.done() and not task.cancelled():
                exc = task.exception()
                how = describe(exc) if exc is not None else "returned"
                return f"{task.get_name()} stopped: {how}"
        return None

    def alive(self) -> bool:
        return self.dead_task() is None and \
            asyncio.get_running_loop().time() - self._last_beat <= self.stale_after

    async def _beat(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            self._last_beat = loop.time()
            await asyncio.sleep(self.beat_interval)

    async def _healthz(self, request: web.Request) -> web.Response:
        if self.alive():
            return web.Response(text="ok\n")
        return web.Response(status=503,
                            text=f"{self.dead_task() or 'event loop heartbeat is stale'}\n")

    async def _readyz(self, request: web.Request) -> web.Response:
        state = self._state()
        if self._ready():
            self._on_ready()
            return web.Response(text=f"ready: {state}\n")
        return web.Response(status=503, text=f"not ready: {state or 'starting'}\n")

    async def _metrics(self, request: web.Request) -> web.Response:
        body = generate_latest(self._registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})
