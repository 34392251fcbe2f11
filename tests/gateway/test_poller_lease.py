"""The poller fence's timing, against an in-memory Lease store and fast-forwarded loop time.

The properties that matter: a pod polls only while it holds the Lease; a holder that cannot
renew stops before anyone else may take over; a pod waits for a live holder and takes a dead
one's Lease only after its full duration; what it waits for is reported once, not per retry.
The same fence against a real API server and real pods: tests/operator/test_poller_fence.py.
"""

from __future__ import annotations

import asyncio
import copy
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from switchboard_contract import ErrorCode
from switchboard_contract import lease as records
from switchboard_gateway import telegram_protocol as proto
from switchboard_gateway.adapter import AdapterError
from switchboard_gateway.config import LeaseTiming
from switchboard_gateway.poller_lease import LeaseApiError, PollerLease

pytestmark = pytest.mark.looptime  # asyncio sleeps and timeouts run in fast-forwarded time

TIMING = LeaseTiming()  # the defaults: 30 s lease, 20 s deadline, renew every 5 s, look every 1 s


class Lease:
    """One Lease as the API server keeps it: a replace must carry the current
    resourceVersion (else 409), each write bumps it."""

    def __init__(self, spec: dict[str, Any] | None = None) -> None:
        self.body: dict[str, Any] = {"metadata": {"name": "c-gateway", "resourceVersion": "1"}}
        if spec is not None:
            self.body["spec"] = spec
        self.writes = 0

    def spec(self) -> dict[str, Any]:
        return dict(self.body.get("spec") or {})

    def write(self, spec: dict[str, Any]) -> None:
        """Another client's write (a pod this test plays by hand)."""
        self.body["spec"] = spec
        self._bump()

    def _bump(self) -> None:
        meta = self.body["metadata"]
        meta["resourceVersion"] = str(int(meta["resourceVersion"]) + 1)
        self.writes += 1


class Store:
    """One pod's view of the Lease: ``error`` makes its requests fail, ``hang`` makes them
    never answer (an API server that is unreachable from this pod)."""

    where = "n/c-gateway"

    def __init__(self, lease: Lease) -> None:
        self.lease = lease
        self.error: LeaseApiError | None = None
        self.hang = False
        self.puts = 0

    async def _reach(self) -> None:
        if self.hang:
            await asyncio.Event().wait()
        if self.error is not None:
            raise self.error

    async def get(self) -> dict[str, Any]:
        await self._reach()
        return copy.deepcopy(self.lease.body)

    async def put(self, body: dict[str, Any]) -> dict[str, Any]:
        await self._reach()
        current = self.lease.body["metadata"]["resourceVersion"]
        if body["metadata"]["resourceVersion"] != current:
            raise LeaseApiError(409, "Conflict")
        self.lease.body = copy.deepcopy(body)
        self.lease._bump()
        self.puts += 1
        return copy.deepcopy(self.lease.body)


def now() -> float:
    return asyncio.get_running_loop().time()


EPOCH = datetime(2026, 12, 3, tzinfo=UTC)


def wall() -> datetime:
    """A wall clock that moves with loop time (renewTime changes with each renewal)."""
    return EPOCH + timedelta(seconds=now())


def pod(store: Store, name: str) -> PollerLease:
    return PollerLease(store, name, TIMING, monotonic=now, wall=wall)


class Told:
    def __init__(self) -> None:
        self.said: list[AdapterError | None] = []

    async def __call__(self, why: AdapterError | None) -> None:
        self.said.append(why)


async def test_a_lease_the_operator_just_created_is_taken_at_once() -> None:
    lease = Lease()  # metadata only, as the operator creates it
    a, told = pod(Store(lease), "pod-a"), Told()
    assert await a.acquire(asyncio.Event(), told)
    assert told.said == [] and now() < 1
    spec = lease.spec()
    assert spec["holderIdentity"] == "pod-a" and spec["leaseDurationSeconds"] == 30
    assert spec["leaseTransitions"] == 0
    assert a.remaining() == pytest.approx(TIMING.renew_deadline, abs=0.01)


async def test_a_released_lease_is_taken_at_once_and_counts_a_transition() -> None:
    lease = Lease(records.release(records.claim(None, "old", 30, wall())))
    assert await pod(Store(lease), "new").acquire(asyncio.Event(), Told())
    assert now() < 1
    assert lease.spec()["holderIdentity"] == "new" and lease.spec()["leaseTransitions"] == 1


async def test_a_live_holder_is_waited_for_and_said_once() -> None:
    lease = Lease()
    holder = pod(Store(lease), "pod-a")
    assert await holder.acquire(asyncio.Event(), Told())
    keeper = asyncio.create_task(holder.hold())
    stop, told = asyncio.Event(), Told()
    waiter = asyncio.create_task(pod(Store(lease), "pod-b").acquire(stop, told))
    await asyncio.sleep(300)  # ten lease durations, renewed all along
    assert not waiter.done() and told.said == [None]
    stop.set()
    assert await waiter is False
    assert lease.spec()["holderIdentity"] == "pod-a" and not keeper.done()
    keeper.cancel()


async def test_a_dead_holders_lease_is_taken_only_after_its_full_duration() -> None:
    lease = Lease()
    assert await pod(Store(lease), "pod-a").acquire(asyncio.Event(), Told())  # then gone
    start = now()
    assert await pod(Store(lease), "pod-b").acquire(asyncio.Event(), Told())
    waited = now() - start
    assert TIMING.seconds <= waited <= TIMING.seconds + 2 * TIMING.wait_period
    assert lease.spec()["holderIdentity"] == "pod-b" and lease.spec()["leaseTransitions"] == 1


@pytest.mark.parametrize("status, hint", [(404, "the operator creates it"),
                                          (403, "must allow get and update")])
async def test_a_lease_that_cannot_be_read_is_reported_once_until_it_can(
        status: int, hint: str) -> None:
    store, told = Store(Lease()), Told()
    store.error = LeaseApiError(status, "Not Found" if status == 404 else "Forbidden")
    trying = asyncio.create_task(pod(store, "pod-a").acquire(asyncio.Event(), told))
    await asyncio.sleep(60)
    assert not trying.done()
    assert len(told.said) == 1  # sixty tries, one report
    why = told.said[0]
    assert why is not None and why.code == ErrorCode.LEASE_UNAVAILABLE and why.retryable
    assert hint in why.message and "n/c-gateway" in why.message
    store.error = None
    assert await trying is True


async def test_an_unanswered_request_is_bounded_by_the_renew_deadline() -> None:
    store, told = Store(Lease()), Told()
    store.hang = True
    trying = asyncio.create_task(pod(store, "pod-a").acquire(asyncio.Event(), told))
    await asyncio.sleep(TIMING.renew_deadline + 0.5)
    assert told.said and told.said[0] is not None
    assert "no answer from the API server in time" in told.said[0].message
    store.hang = False
    assert await trying is True


async def test_a_holder_renews_every_period_while_it_can() -> None:
    lease = Lease()
    store = Store(lease)
    a = pod(store, "pod-a")
    assert await a.acquire(asyncio.Event(), Told())
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(a.hold(), timeout=102)
    assert store.puts == 1 + 20  # the claim, then one renewal every 5 s


@pytest.mark.parametrize("fault", ["unreachable", "refused"])
async def test_a_holder_that_cannot_renew_stops_before_another_pod_may_take_over(
        fault: str) -> None:
    lease = Lease()
    a_store = Store(lease)
    a = pod(a_store, "pod-a")
    assert await a.acquire(asyncio.Event(), Told())
    keeper = asyncio.create_task(a.hold())
    b_started = asyncio.Event()

    async def pod_b() -> float:
        b_started.set()
        assert await pod(Store(lease), "pod-b").acquire(asyncio.Event(), Told())
        return now()

    b = asyncio.create_task(pod_b())
    await asyncio.sleep(12)  # a renews at 5 and 10 s
    last_renew = 10.0
    if fault == "unreachable":
        a_store.hang = True
    else:
        a_store.error = LeaseApiError(503, "Service Unavailable")
    await keeper  # a gives up
    a_stopped = now()
    assert a.remaining() == 0
    assert a_stopped <= last_renew + TIMING.renew_deadline + 0.01
    b_took = await b
    # Between a's stop and b's start lies at least lease duration minus renew deadline.
    assert b_took - a_stopped >= TIMING.seconds - TIMING.renew_deadline - 0.01
    assert lease.spec()["holderIdentity"] == "pod-b"


async def test_a_holder_whose_lease_was_taken_over_stops_at_its_next_renewal() -> None:
    lease = Lease()
    a = pod(Store(lease), "pod-a")
    assert await a.acquire(asyncio.Event(), Told())
    keeper = asyncio.create_task(a.hold())
    await asyncio.sleep(1)
    lease.write(records.claim(lease.spec(), "intruder", 30, wall()))
    await keeper
    assert now() <= 1 + TIMING.renew_period + 0.01 and a.remaining() == 0
    assert lease.spec()["holderIdentity"] == "intruder"


async def test_release_clears_only_a_lease_this_pod_still_holds() -> None:
    lease = Lease()
    a = pod(Store(lease), "pod-a")
    assert await a.acquire(asyncio.Event(), Told())
    await a.release()
    assert lease.spec()["holderIdentity"] == "" and a.remaining() == 0
    assert await pod(Store(lease), "pod-b").acquire(asyncio.Event(), Told())
    writes = lease.writes
    await a.release()  # no longer ours: untouched
    assert lease.spec()["holderIdentity"] == "pod-b" and lease.writes == writes


async def test_release_against_an_unreachable_api_server_is_bounded() -> None:
    store = Store(Lease())
    a = pod(store, "pod-a")
    assert await a.acquire(asyncio.Event(), Told())
    store.hang = True
    start = now()
    await a.release()  # logs; the Lease expires by itself
    assert now() - start <= 2.01 and a.remaining() == 0


async def test_the_poll_window_ends_where_another_pod_may_take_over() -> None:
    a = pod(Store(Lease()), "pod-a")
    assert a.poll_window() == 0  # not held
    assert await a.acquire(asyncio.Event(), Told())
    assert a.poll_window() == pytest.approx(TIMING.seconds, abs=0.01)  # 20 s + 10 s grace
    await asyncio.sleep(7)
    assert a.poll_window() == pytest.approx(TIMING.seconds - 7, abs=0.01)
    await a.release()
    assert a.poll_window() == 0


@pytest.mark.parametrize("sent_at", [0.0, 10.0, 19.5])
async def test_a_long_poll_sent_before_a_pod_froze_is_answered_before_its_successor_polls(
        sent_at: float) -> None:
    """pod-a polls (the configured 30 s long poll, shortened by the fence) and freezes: no
    renewal, no release. pod-b takes over; the server must have answered a's poll by then,
    else the two polls overlap (409 Conflict on the real Bot API)."""
    lease = Lease()
    a = pod(Store(lease), "pod-a")
    assert await a.acquire(asyncio.Event(), Told())
    b = asyncio.create_task(pod(Store(lease), "pod-b").acquire(asyncio.Event(), Told()))
    await asyncio.sleep(sent_at)
    answered_by = now() + proto.long_poll_timeout(30.0, a.poll_window())
    assert await b
    assert answered_by < now()
