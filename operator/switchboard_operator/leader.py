"""Leader election with a coordination.k8s.io/v1 Lease (client-go's algorithm, simplified).

Why a Lease and not kopf peering: kopf peering needs its own cluster-wide CRDs, pauses only
kopf's handlers (our own timers would keep firing in a paused replica), and treats replicas of
equal priority as a conflict rather than electing one. A Lease is the standard Kubernetes
mechanism, needs no CRD, and gives one clear switch: while not leader, a replica keeps its
watches and caches warm but performs no writes; on becoming leader it reconciles everything
from the state in the API (status holds the whole schedule), so a fail-over resumes the schedule.

Expiry is judged by the local monotonic clock from when this replica last saw the record
change (like client-go), never by comparing renewTime with the local wall clock.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from switchboard_operator import metrics
from switchboard_operator.kube import ApiError, Kube, object_path

log = logging.getLogger(__name__)


def _now_micro() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class LeaderElector:
    def __init__(self, kube: Kube, namespace: str, name: str, identity: str, *,
                 lease_seconds: int = 15, renew_seconds: float = 5.0,
                 retry_seconds: float = 2.0,
                 on_started: Callable[[], None], on_stopped: Callable[[], None]) -> None:
        self.kube, self.namespace, self.name, self.identity = kube, namespace, name, identity
        self.lease_seconds, self.renew, self.retry = lease_seconds, renew_seconds, retry_seconds
        self.on_started, self.on_stopped = on_started, on_stopped
        self.leading = False
        self._observed: tuple[str, str] | None = None  # (holder, renewTime) last seen
        self._observed_at = 0.0
        self._last_renew = 0.0
        self._mine: dict[str, Any] | None = None  # our lease as last written (for cheap renew)

    @property
    def path(self) -> str:
        return object_path("coordination.k8s.io/v1", "Lease", self.namespace, self.name)

    async def run(self) -> None:
        try:
            while True:
                try:
                    ok = await self._try_acquire_or_renew()
                except Exception as exc:  # the API may be unreachable; keep trying
                    log.warning("lease %s/%s: %s", self.namespace, self.name, exc)
                    ok = False
                now = time.monotonic()
                if ok:
                    self._last_renew = now
                    if not self.leading:
                        self._set(True)
                elif self.leading and now - self._last_renew > self.lease_seconds * 2 / 3:
                    # Could not renew in time: step down before another replica may take over.
                    self._set(False)
                await asyncio.sleep(self.renew if self.leading else self.retry)
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

    def _spec(self, acquire: str | None, transitions: int) -> dict[str, Any]:
        now = _now_micro()
        spec: dict[str, Any] = {"holderIdentity": self.identity,
                                "leaseDurationSeconds": self.lease_seconds,
                                "renewTime": now, "leaseTransitions": transitions}
        spec["acquireTime"] = acquire or now
        return spec

    async def _try_acquire_or_renew(self) -> bool:
        if self.leading and self._mine is not None:
            # Renew with one PUT on our last write; a 409 means someone changed it: re-read.
            lease = self._mine
            lease["spec"]["renewTime"] = _now_micro()
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
                    "spec": self._spec(None, 0)}
            try:
                self._mine = await self.kube.request(
                    "POST", self.path.rsplit("/", 1)[0], body=body)
            except ApiError as exc2:
                if exc2.status == 409:
                    return False
                raise
            return True
        spec = lease.get("spec") or {}
        holder = spec.get("holderIdentity") or ""
        record = (holder, spec.get("renewTime") or "")
        now = time.monotonic()
        if record != self._observed:
            self._observed, self._observed_at = record, now
        duration = int(spec.get("leaseDurationSeconds") or self.lease_seconds)
        if holder and holder != self.identity and now - self._observed_at < duration:
            return False  # someone else holds a live lease
        transitions = int(spec.get("leaseTransitions") or 0)
        if holder != self.identity:
            transitions += 1
            acquire = None
        else:
            acquire = spec.get("acquireTime")
        lease["spec"] = self._spec(acquire, transitions)
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
                lease["spec"]["holderIdentity"] = ""
                lease["spec"]["leaseDurationSeconds"] = 1
                await self.kube.request("PUT", self.path, body=lease)
        except Exception as exc:
            log.info("releasing lease failed: %s", exc)
