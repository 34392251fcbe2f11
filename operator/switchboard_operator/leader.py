"""Leader election with a coordination.k8s.io/v1 Lease (client-go's algorithm, simplified).

Why a Lease and not kopf peering: kopf peering needs its own cluster-wide CRDs, pauses only
kopf's handlers (our own timers would keep firing in a paused replica), and treats replicas of
equal priority as a conflict rather than electing one. A Lease is the standard Kubernetes
mechanism, needs no CRD, and gives one clear switch: while not leader, a replica keeps its
watches and caches warm but performs no writes; on becoming leader it reconciles everything
from the state in the API (status holds the whole schedule), so a fail-over resumes the schedule.

Expiry is judged by the local monotonic clock from when this replica last saw the record
change (like client-go, switchboard_contract.lease), never by renewTime and the wall clock.

Stepping down is bounded (client-go's renew deadline): each renewal may take only what is left
of the deadline, and past it the leader stops leading, which cancels every reconcile, pod
deletion, Event and timer in flight (reconcile.Controller.stop_leading). Writes are fenced as
well: the API client sends none once remaining() is 0 and bounds each one by it, so a task the
cancellation has not reached yet, or a process resumed after a pause, cannot act.
What no lease can prevent (client-go's neither): a write sent in time and then held in the
network for longer than lease - deadline may still land late.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from switchboard_contract import lease as records
from switchboard_operator import metrics
from switchboard_operator.kube import ApiError, Kube, object_path

log = logging.getLogger(__name__)

# controller-runtime's defaults: a replica that has not renewed within the renew deadline stops
# acting, at least lease - deadline (5 s) before another may take the expired Lease over.
LEASE_SECONDS, RENEW_DEADLINE, RETRY_SECONDS = 15, 10.0, 2.0


class LeaderElector:
    def __init__(self, kube: Kube, namespace: str, name: str, identity: str, *,
                 lease_seconds: int = LEASE_SECONDS, renew_deadline: float = RENEW_DEADLINE,
                 retry_seconds: float = RETRY_SECONDS,
                 on_started: Callable[[], None], on_stopped: Callable[[], None],
                 monotonic: Callable[[], float] = time.monotonic,
                 wall: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
        if not 0 < retry_seconds < renew_deadline < lease_seconds:
            raise ValueError("need 0 < retry period < renew deadline < lease duration")
        self.kube, self.namespace, self.name, self.identity = kube, namespace, name, identity
        self.lease_seconds, self.renew_deadline = lease_seconds, renew_deadline
        self.retry = retry_seconds
        self.monotonic, self.wall = monotonic, wall
        self.on_started, self.on_stopped = on_started, on_stopped
        self.leading = False
        self._observer = records.LeaseObserver()
        self._valid_until = 0.0  # monotonic time until which this replica may act
        self._announced = ""  # the other holder last logged
        self._mine: dict[str, Any] | None = None  # our lease as last written (for cheap renew)

    @property
    def path(self) -> str:
        return object_path("coordination.k8s.io/v1", "Lease", self.namespace, self.name)

    def remaining(self) -> float:
        """Seconds this replica may still act as leader (0 when it is not leading). The
        operator's API client checks it before every write and bounds each write by it."""
        if not self.leading:
            return 0.0
        return max(0.0, self._valid_until - self.monotonic())

    async def run(self) -> None:
        try:
            while True:
                started = self.monotonic()
                # Every attempt is bounded: while leading, by what is left of the renew
                # deadline (so a hanging renewal cannot keep a stale leader acting); else by
                # the renew deadline itself.
                budget = self._valid_until - started if self.leading else self.renew_deadline
                try:
                    ok = await asyncio.wait_for(self._try_acquire_or_renew(),
                                                max(0.001, budget))
                except TimeoutError:
                    log.warning("lease %s/%s: no answer within %.1fs", self.namespace,
                                self.name, budget)
                    ok = False
                except Exception as exc:  # the API may be unreachable; keep trying
                    log.warning("lease %s/%s: %s", self.namespace, self.name, exc)
                    ok = False
                if ok:
                    # Measured from before the request was sent: the API server accepted it
                    # no earlier, so another replica's lease-duration wait starts later still.
                    self._valid_until = started + self.renew_deadline
                    if not self.leading:
                        self._set(True)
                elif self.leading and self.monotonic() >= self._valid_until:
                    # Not renewed within the deadline: step down (the controller cancels
                    # everything in flight) before another replica may take over.
                    self._set(False)
                pause = self.retry
                if self.leading:
                    pause = min(pause, max(0.0, self._valid_until - self.monotonic()))
                await asyncio.sleep(pause)
        finally:
            if self.leading:
                self._set(False)
                await self._release()

    def _set(self, leading: bool) -> None:
        self.leading = leading
        metrics.LEADER.set(1 if leading else 0)
        log.info("%s leadership of lease %s/%s (%s)", "acquired" if leading else "lost",
                 self.namespace, self.name, self.identity)
        (self.on_started if leading else self.on_stopped)()

    async def _try_acquire_or_renew(self) -> bool:
        if self.leading and self._mine is not None:
            # Renew with one PUT on our last write; a 409 means someone changed it: re-read.
            lease = self._mine
            lease["spec"]["renewTime"] = records.micro_time(self.wall())
            try:
                self._mine = await self.kube.request("PUT", self.path, body=lease)
                return True
            except ApiError as exc:
                self._mine = None
                if exc.status != 409:
                    raise
        try:
            lease = await self.kube.request("GET", self.path)
        except ApiError as exc:
            if exc.status != 404:
                raise
            body = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                    "metadata": {"name": self.name, "namespace": self.namespace},
                    "spec": records.claim(None, self.identity, self.lease_seconds,
                                          self.wall())}
            try:
                self._mine = await self.kube.request(
                    "POST", self.path.rsplit("/", 1)[0], body=body)
            except ApiError as exc2:
                if exc2.status == 409:
                    return False
                raise
            return True
        spec = lease.get("spec") or {}
        holder = self._observer.live_holder(spec, self.identity, self.monotonic(),
                                            self.lease_seconds)
        if holder is not None:
            if holder != self._announced:
                # Said once per holder: `make run` beside the chart's operator waits here.
                self._announced = holder
                log.warning("Lease %s/%s is held by %s: this replica waits and writes "
                            "nothing while that operator acts", self.namespace, self.name,
                            holder)
            return False  # someone else holds a live lease
        lease["spec"] = records.claim(spec, self.identity, self.lease_seconds, self.wall())
        try:
            # PUT with the resourceVersion we read: optimistic concurrency decides races.
            self._mine = await self.kube.request("PUT", self.path, body=lease)
        except ApiError as exc:
            if exc.status == 409:
                return False
            raise
        return True

    async def _release(self) -> None:
        """Hand over at once on a clean shutdown (holder cleared), instead of after expiry."""
        try:
            lease = await self.kube.request("GET", self.path)
            if (lease.get("spec") or {}).get("holderIdentity") == self.identity:
                lease["spec"] = records.release(lease["spec"])
                await self.kube.request("PUT", self.path, body=lease)
        except Exception as exc:
            log.info("releasing lease failed: %s", exc)
