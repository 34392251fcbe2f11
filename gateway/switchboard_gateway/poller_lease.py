"""The poller fence: at most one pod of a connection talks to the platform at a time.

Two pollers on one Telegram token are exactly a 409 Conflict, and two QQ sessions of one bot
fight over it. `Recreate` orders a rollout, but a deleted pod's replacement starts while the
old one is still terminating. So a pod holds a coordination.k8s.io/v1 Lease (``<name>-gateway``,
created by the operator, owned by the connection) before its adapter starts, renews it while it
runs, and clears the holder first thing on SIGTERM once the adapter has stopped. A pod that does
not hold it waits (`connecting`), and never reaches the platform.

The algorithm is client-go's leader election (switchboard_contract.lease for the records):
expiry is judged by this process's monotonic clock; a holder that has not renewed within the
renew deadline stops its adapter, at least ``seconds - renew_deadline`` before another pod may
take the expired Lease over; each renewal may use only what is left of the deadline. Written
here rather than taken from a library: the kubernetes Python client has no leader election
for asyncio (its ``leaderelection`` module is threaded, polls, and cannot bound a renewal).
A long poll outlives the moment it was sent: each getUpdates asks the server to answer within
`poll_window()` (the time before another pod may take the Lease over), so a poll sent just
before a pod froze is answered before its successor may poll. What no lease prevents
(client-go's neither): a request delayed in the network itself beyond that window.

The gateway's Role allows exactly ``get`` and ``update`` on this one Lease (resourceNames);
``create`` cannot be limited to a name, so the operator creates it. Without the Lease (403,
404) the gateway waits and says so in status (`gateway_lease_unavailable`).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any, Protocol

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from switchboard_contract import ErrorCode
from switchboard_contract import lease as records
from switchboard_gateway.adapter import AdapterError
from switchboard_gateway.config import LeaseTiming
from switchboard_gateway.redact import describe

log = logging.getLogger("switchboard.lease")

RELEASE_TIMEOUT = 2.0
# A claim lost to a concurrent writer (409): someone else wrote the Lease meanwhile.
SOMEONE_ELSE = "another pod (it changed the Lease meanwhile)"


class LeaseApiError(Exception):
    def __init__(self, status: int, reason: str) -> None:
        super().__init__(f"HTTP {status} {reason}")
        self.status = status


class LeaseStore(Protocol):
    """One Lease, read and replaced (resourceVersion in the body: optimistic concurrency)."""

    where: str  # "namespace/name", for messages

    async def get(self) -> dict[str, Any]: ...

    async def put(self, lease: dict[str, Any]) -> dict[str, Any]: ...


class KubeLeaseStore:
    """The kubernetes sync client in a worker thread; plain dicts in and out."""

    def __init__(self, namespace: str, name: str, api_client: client.ApiClient,
                 request_timeout: tuple[float, float] = (3.0, 5.0)) -> None:
        self.namespace, self.name = namespace, name
        self.where = f"{namespace}/{name}"
        self._api = client.CoordinationV1Api(api_client)
        self._timeout = request_timeout

    async def get(self) -> dict[str, Any]:
        return await self._call(self._api.read_namespaced_lease, self.name, self.namespace)

    async def put(self, lease: dict[str, Any]) -> dict[str, Any]:
        return await self._call(self._api.replace_namespaced_lease, self.name, self.namespace,
                                lease)

    async def _call(self, method: Callable[..., Any], *args: Any) -> dict[str, Any]:
        try:
            # _preload_content=False: the raw JSON, not the client's models (dicts everywhere).
            response = await asyncio.to_thread(method, *args, _preload_content=False,
                                               _request_timeout=self._timeout)
        except ApiException as exc:
            raise LeaseApiError(int(exc.status or 0), str(exc.reason)) from None
        lease: dict[str, Any] = json.loads(response.data)
        return lease


class PollerLease:
    def __init__(self, store: LeaseStore, identity: str, timing: LeaseTiming, *,
                 monotonic: Callable[[], float] = time.monotonic,
                 wall: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
        self.store, self.identity, self.timing = store, identity, timing
        self.monotonic, self.wall = monotonic, wall
        self._observer = records.LeaseObserver()
        self._mine: dict[str, Any] | None = None  # the Lease as we last wrote it
        self._valid_until = 0.0  # monotonic time until which this pod may poll

    def remaining(self) -> float:
        """Seconds this pod may still talk to the platform (0: it does not hold the Lease)."""
        return max(0.0, self._valid_until - self.monotonic())

    def poll_window(self) -> float:
        """Seconds within which a request sent now must be over: no other pod may take the
        Lease before ``valid_until + seconds - renew_deadline`` (0: this pod does not hold it)."""
        if self._valid_until == 0.0:
            return 0.0
        grace = self.timing.seconds - self.timing.renew_deadline
        return max(0.0, self._valid_until + grace - self.monotonic())

    async def acquire(self, stop: asyncio.Event,
                      waiting: Callable[[AdapterError | None], Awaitable[None]]) -> bool:
        """Until this pod holds the Lease (True) or ``stop`` fires (False). ``waiting`` hears
        why it waits, on each change: an error when the Lease cannot be read or written,
        None while another live pod holds it."""
        told: AdapterError | str | None = "nothing yet"
        holder_logged = ""
        while not stop.is_set():
            started = self.monotonic()
            why: AdapterError | None = None
            try:
                async with asyncio.timeout(self.timing.renew_deadline):
                    holder = await self._attempt(started)
                if holder is None:
                    log.info("holding Lease %s as %s", self.store.where, self.identity)
                    return True
                if holder != holder_logged:
                    holder_logged = holder
                    log.info("Lease %s is held by %s: waiting before reaching the platform",
                             self.store.where, holder)
            except Exception as exc:  # 403/404/5xx, a timeout, an unreachable API server
                why = AdapterError(
                    ErrorCode.LEASE_UNAVAILABLE,
                    f"waiting for the poller Lease {self.store.where}: {_describe(exc)}", True)
            if why != told:
                told = why
                if why is not None:
                    log.warning("%s", why.message)
                await waiting(why)
            await _wait(stop, self.timing.wait_period)
        return False

    async def hold(self) -> None:
        """Renew until the Lease is lost: not renewed within the renew deadline, or taken over
        by another pod. Returns then (the caller stops the adapter)."""
        pause = self.timing.renew_period
        while True:
            left = self._valid_until - self.monotonic()
            if left <= 0:
                log.error("poller Lease %s not renewed within %gs: stopping", self.store.where,
                          self.timing.renew_deadline)
                break
            await asyncio.sleep(min(pause, left))
            started = self.monotonic()
            budget = self._valid_until - started
            if budget <= 0:
                continue  # the check above says so
            try:
                async with asyncio.timeout(budget):
                    holder = await self._attempt(started)
            except Exception as exc:
                log.warning("renewing the poller Lease %s failed: %s", self.store.where,
                            _describe(exc))
                pause = self.timing.wait_period  # sooner than the period: the deadline runs
                continue
            pause = self.timing.renew_period
            if holder is not None:
                log.error("poller Lease %s was taken over by %s: stopping", self.store.where,
                          holder)
                break
        self._mine, self._valid_until = None, 0.0

    async def release(self) -> None:
        """Hand the Lease over at once (holder cleared), if this pod still holds it."""
        self._valid_until = 0.0
        try:
            async with asyncio.timeout(RELEASE_TIMEOUT):
                lease = await self.store.get()
                spec = lease.get("spec") or {}
                if spec.get("holderIdentity") != self.identity:
                    return
                lease["spec"] = records.release(spec)
                await self.store.put(lease)
            log.info("released Lease %s", self.store.where)
        except Exception as exc:  # it expires by itself
            log.warning("releasing the poller Lease %s failed: %s", self.store.where,
                        _describe(exc))
        finally:
            self._mine = None

    async def _attempt(self, started: float) -> str | None:
        """Take or renew the Lease once; the other live holder if that is someone else."""
        if self._mine is not None:
            lease = self._mine  # renew with one PUT on our last write
            lease["spec"]["renewTime"] = records.micro_time(self.wall())
            try:
                self._mine = await self.store.put(lease)
                self._valid_until = started + self.timing.renew_deadline
                return None
            except LeaseApiError as exc:
                self._mine = None
                if exc.status != 409:
                    raise
        lease = await self.store.get()
        spec = lease.get("spec") or {}
        holder = self._observer.live_holder(spec, self.identity, started, self.timing.seconds)
        if holder is not None:
            return holder
        lease["spec"] = records.claim(spec or None, self.identity, self.timing.seconds,
                                      self.wall())
        try:
            self._mine = await self.store.put(lease)
        except LeaseApiError as exc:
            if exc.status == 409:
                return SOMEONE_ELSE
            raise
        # From before the request: the API server accepted it no earlier, so another pod's
        # lease-duration wait starts later still.
        self._valid_until = started + self.timing.renew_deadline
        return None


def _describe(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "no answer from the API server in time"
    if isinstance(exc, LeaseApiError) and exc.status == 404:
        return f"{exc} (the operator creates it; is it running?)"
    if isinstance(exc, LeaseApiError) and exc.status == 403:
        return f"{exc} (the gateway's Role must allow get and update on it)"
    return describe(exc)


async def _wait(stop: asyncio.Event, seconds: float) -> None:
    try:
        async with asyncio.timeout(seconds):
            await stop.wait()
    except TimeoutError:
        pass


def from_config(namespace: str, name: str, identity: str, timing: LeaseTiming,
                api_client: client.ApiClient) -> PollerLease:
    return PollerLease(KubeLeaseStore(namespace, name, api_client), identity, timing)
