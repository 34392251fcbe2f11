"""Restart bookkeeping: the gateway's report, the persisted schedule, and the timers.

No polling: each connection has at most one asyncio timer, armed for the earliest moment its
state can change by itself (a due restart, a circuit probe, a failure-count reset, the
needs-attention threshold). Everything a timer needs is persisted in status first
(nextRestartTime, circuit.nextProbeTime, ...), so a restarted or newly elected operator re-arms
the very same schedule from the API.

A gateway report is identified by ``<gatewayPod>@<stateSince>``; ``status.lastHandledFailure``
holds the identity of the last fatal report the operator acted on, so a report is counted once
even though it stays in status after its pod was deleted (and across operator restarts).
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from switchboard_contract import Field as F
from switchboard_operator.backoff import restart_due_time
from switchboard_operator.circuit import format_time, parse_time

Key = tuple[str, str]


@dataclass(frozen=True)
class Report:
    """The gateway-owned part of status."""

    state: str | None = None
    retryable: bool | None = None
    code: str | None = None
    pod: str | None = None
    pod_uid: str | None = None
    since_raw: str | None = None

    @property
    def identity(self) -> str | None:
        """Which report this is; its time is only an identifier here, never a clock reading
        to decide with (the gateway's clock may be off, or a custom image may lie)."""
        if self.state is None:
            return None
        return f"{self.pod or ''}@{self.since_raw or ''}"

    @classmethod
    def from_status(cls, status: Mapping[str, Any] | None) -> Report:
        status = status or {}
        error = status.get(F.LAST_ERROR) or {}
        return cls(state=status.get(F.STATE), retryable=error.get("retryable"),
                   code=error.get("code"), pod=status.get(F.GATEWAY_POD),
                   pod_uid=status.get(F.GATEWAY_POD_UID), since_raw=status.get(F.STATE_SINCE))


@dataclass
class Schedule:
    """Operator-owned restart fields of status. Every time here is the operator's own."""

    restarts: int = 0
    next_restart: datetime | None = None
    last_restart: datetime | None = None
    # The last fatal report acted on (its identity), its pod's uid, and when it was first seen.
    handled: str | None = None
    failed_pod_uid: str | None = None
    failure_observed_at: datetime | None = None
    # (identity, first seen) of the connected report being timed for the circuit's reset.
    connected_observed: tuple[str, datetime] | None = None

    @property
    def failed_pod(self) -> str | None:
        """The pod of the handled failure: the only pod its restart may delete."""
        pod = (self.handled or "").partition("@")[0]
        return pod or None

    @classmethod
    def from_status(cls, status: Mapping[str, Any] | None) -> Schedule:
        status = status or {}
        seen = status.get(F.CONNECTED_OBSERVED) or {}
        at = parse_time(seen.get("at"))
        return cls(restarts=int(status.get(F.RESTARTS, 0)),
                   next_restart=parse_time(status.get(F.NEXT_RESTART_TIME)),
                   last_restart=parse_time(status.get(F.LAST_RESTART_TIME)),
                   handled=status.get(F.LAST_HANDLED_FAILURE),
                   failed_pod_uid=status.get(F.FAILED_POD_UID),
                   failure_observed_at=parse_time(status.get(F.FAILURE_OBSERVED_AT)),
                   connected_observed=(seen["report"], at)
                   if seen.get("report") and at is not None else None)

    def to_status(self) -> dict[str, Any]:
        out: dict[str, Any] = {F.RESTARTS: self.restarts}
        if self.next_restart is not None:
            out[F.NEXT_RESTART_TIME] = format_time(self.next_restart)
        if self.last_restart is not None:
            out[F.LAST_RESTART_TIME] = format_time(self.last_restart)
        if self.handled is not None:
            out[F.LAST_HANDLED_FAILURE] = self.handled
        if self.failed_pod_uid is not None:
            out[F.FAILED_POD_UID] = self.failed_pod_uid
        if self.failure_observed_at is not None:
            out[F.FAILURE_OBSERVED_AT] = format_time(self.failure_observed_at)
        if self.connected_observed is not None:
            report, at = self.connected_observed
            out[F.CONNECTED_OBSERVED] = {"report": report, "at": format_time(at)}
        return out


def due_time(observed: datetime, failure: int, policy: Mapping[str, Any] | None) -> datetime:
    """When the restart after consecutive failure ``failure``, first seen by the operator at
    ``observed``, is due (spec.restartPolicy).

    Rounded up to the whole second, because status times have second precision: the
    restart happens at exactly the nextRestartTime a person (or a test) reads.
    """
    policy = policy or {}
    due = restart_due_time(observed, failure, int(policy.get("initialDelaySeconds", 30)),
                           int(policy.get("maxDelaySeconds", 300)))
    whole = math.ceil(due.timestamp())
    return datetime.fromtimestamp(whole, UTC)


def utcnow() -> datetime:
    return datetime.now(UTC)


Clock = Callable[[], datetime]


class Timers:
    """At most one wake-up per connection; arming replaces the previous one."""

    # Fire a little late rather than early: an early wake-up finds nothing due yet.
    SLACK = timedelta(milliseconds=5)

    def __init__(self, fire: Callable[[Key], None], clock: Clock = utcnow) -> None:
        self._fire = fire
        self._clock = clock
        self._handles: dict[Key, tuple[datetime, asyncio.TimerHandle]] = {}

    def arm(self, key: Key, when: datetime | None) -> None:
        current = self._handles.get(key)
        if current is not None and current[0] == when:
            return
        self.cancel(key)
        if when is None:
            return
        delay = max(0.0, (when + self.SLACK - self._clock()).total_seconds())
        loop = asyncio.get_running_loop()
        self._handles[key] = (when, loop.call_later(delay, self._expired, key))

    def _expired(self, key: Key) -> None:
        self._handles.pop(key, None)
        self._fire(key)

    def cancel(self, key: Key) -> None:
        entry = self._handles.pop(key, None)
        if entry is not None:
            entry[1].cancel()

    def cancel_all(self) -> None:
        for key in list(self._handles):
            self.cancel(key)

    def due(self, key: Key) -> datetime | None:
        entry = self._handles.get(key)
        return entry[0] if entry else None

    def __len__(self) -> int:
        return len(self._handles)
