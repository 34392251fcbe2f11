"""Leader election's bounds, fast: the renew deadline, the write fence, the step-down that
cancels work in flight. The real-control-plane tests are test_leader.py (fail-over) and
test_leader_partition.py (a frozen network, measured in the API server's audit log)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import kopf
import pytest
from aiohttp import web
from fakekube import FakeKube
from test_controller_units import _conn, _controller, _settle

from switchboard_operator.kube import Kube, NotLeading
from switchboard_operator.leader import LeaderElector


class LeaseApi:
    """One Lease behind GET/PUT/POST with resourceVersion checks; ``stall`` makes every
    request hang (a partition)."""

    def __init__(self) -> None:
        self.lease: dict[str, Any] | None = None
        self.rv = 0
        self.stall = False

    async def request(self, method: str, path: str, *, body: Any = None,
                      **_: Any) -> dict[str, Any]:
        from switchboard_operator.kube import ApiError
        if self.stall:
            await asyncio.Event().wait()
        if method == "GET":
            if self.lease is None:
                raise ApiError(404, "{}", path)
            return {**self.lease, "spec": dict(self.lease["spec"])}
        if method == "POST" and self.lease is not None:
            raise ApiError(409, "{}", path)
        if method == "PUT" and (self.lease is None or body["metadata"].get(
                "resourceVersion") != self.lease["metadata"]["resourceVersion"]):
            raise ApiError(409, "{}", path)
        self.rv += 1
        self.lease = {**body, "metadata": {**body["metadata"], "resourceVersion": str(self.rv)},
                      "spec": dict(body["spec"])}
        return {**self.lease, "spec": dict(self.lease["spec"])}


def _elector(api: LeaseApi, log: list[tuple[str, float]], **kw: Any) -> LeaderElector:
    return LeaderElector(api, "ns", "lease", "me",  # type: ignore[arg-type]
                         on_started=lambda: log.append(("started", time.monotonic())),
                         on_stopped=lambda: log.append(("stopped", time.monotonic())), **kw)


async def _until(predicate: Any, within: float = 5.0) -> None:
    deadline = time.monotonic() + within
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.01)


async def test_a_renewal_that_hangs_ends_leadership_at_the_renew_deadline() -> None:
    api, log = LeaseApi(), []
    elector = _elector(api, log, lease_seconds=3, renew_deadline=1.0, retry_seconds=0.2)
    task = asyncio.create_task(elector.run())
    await _until(lambda: elector.leading)
    renewed = api.rv
    await _until(lambda: api.rv > renewed)  # a renewal went through
    api.stall = True
    stalled_at = time.monotonic()
    await _until(lambda: not elector.leading, within=3.0)
    # Within the deadline of the last renewal (1 s), not after an HTTP timeout (30 s).
    assert log[-1][0] == "stopped"
    assert log[-1][1] - stalled_at <= 1.0 + 0.3
    assert elector.remaining() == 0
    api.stall = False
    await _until(lambda: elector.leading)  # the Lease is still ours: it leads again
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


async def test_the_fence_closes_at_the_deadline_even_if_the_loop_has_not_run() -> None:
    """A process paused past its deadline (SIGSTOP, a VM freeze) must not write when it
    resumes, whichever task runs first: remaining() reads the clock, not the loop's state."""
    now = [100.0]
    api, log = LeaseApi(), []
    elector = _elector(api, log, monotonic=lambda: now[0])
    task = asyncio.create_task(elector.run())
    await _until(lambda: elector.leading)
    assert elector.remaining() == pytest.approx(10.0)
    now[0] += 9.9
    assert elector.remaining() == pytest.approx(0.1)
    now[0] += 0.2  # past the deadline; the elector's loop has not looked yet
    assert elector.leading and elector.remaining() == 0
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


def test_timings_must_leave_a_margin() -> None:
    with pytest.raises(ValueError):
        _elector(LeaseApi(), [], lease_seconds=10, renew_deadline=10.0)


@pytest.fixture
async def slow_api() -> Any:
    """A real HTTP server on loopback whose write answers take 1 s; it counts what reaches it."""
    seen: list[str] = []

    async def handle(request: web.Request) -> web.Response:
        seen.append(f"{request.method} {request.path}")
        if request.method != "GET":
            await asyncio.sleep(1)
        return web.json_response({})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    kube = Kube(kopf.ConnectionInfo(server=f"http://127.0.0.1:{port}"))
    yield kube, seen
    await kube.close()
    await runner.cleanup()


async def test_the_api_client_sends_no_write_once_the_fence_is_closed(slow_api: Any) -> None:
    kube, seen = slow_api
    left = [0.0]
    kube.fence = lambda: left[0]
    kube.fence_exempt = ("/apis/coordination.k8s.io/v1/namespaces/n/leases/l",)
    with pytest.raises(NotLeading):
        await kube.request("POST", "/api/v1/namespaces/n/events", body={})
    await kube.request("GET", "/api/v1/namespaces/n/pods")  # reads are not acts
    assert seen == ["GET /api/v1/namespaces/n/pods"]
    # A write is bounded by what is left of the lease, not by the 30 s session timeout.
    left[0] = 0.3
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        await kube.request("DELETE", "/api/v1/namespaces/n/pods/p")
    assert time.monotonic() - started < 2
    # Renewing the Lease itself is never fenced.
    left[0] = 0.0
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(kube.request(
            "PUT", "/apis/coordination.k8s.io/v1/namespaces/n/leases/l", body={}), 0.5)
    assert seen[-1] == "PUT /apis/coordination.k8s.io/v1/namespaces/n/leases/l"


async def test_stepping_down_cancels_the_reconciles_in_flight() -> None:
    kube = FakeKube()
    kube.hang.add("apply")
    controller = _controller(kube)
    controller.observe_connection("ADDED", _conn())
    controller.start_leading()
    await _until(lambda: kube.hanging == 1)  # applying the gateway's objects
    controller.stop_leading()
    await _settle(controller)
    assert kube.hanging == 0  # the apply was cancelled, not left to land
    assert controller.queue.idle()
    assert ("apply_status", "c") not in kube.calls
    await controller.close()
