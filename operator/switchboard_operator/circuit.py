"""Restart circuit breaker (spec.circuitBreaker). Pure: no I/O, no clock reads.

States (status.circuit.state):

* ``closed``: the operator restarts a gateway that gave up (retryable fatal error) with
  back-off. Every such failure increments ``consecutive_failures``; at ``failure_threshold``
  the circuit opens.
* ``open``: the gateway is scaled to 0 for ``cooldown_seconds``; nothing hammers the platform.
* ``half-open``: after the cooldown one probe gateway runs. If it connects, the circuit closes
  and the failure count resets. If it gives up again, the circuit reopens with the cooldown
  doubled (capped at ``max_cooldown_seconds``).

There is deliberately no terminal state: recovery is always automatic (upstream, a permanent
pause after repeated failures left bots paused forever behind flaky networks); ``manual_reset``
only shortcuts the wait.

Every transition returns a :class:`Transition`: the new state plus the effects the I/O layer
applies, in order. Effects are :class:`ScaleTo` (gateway Deployment replicas) and
:class:`Event` (a Kubernetes Event on the PlatformConnection). An empty effect list means
"nothing to do". :func:`desired_replicas` gives the same replica decision level-triggered, for
reconciles that do not follow a transition.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any, Literal


class Circuit(StrEnum):
    """Values of status.circuit.state."""

    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half-open"


@dataclass(frozen=True)
class CircuitPolicy:
    """spec.circuitBreaker, with the CRD defaults."""

    failure_threshold: int = 10
    reset_after_connected_seconds: int = 600
    cooldown_seconds: int = 300
    max_cooldown_seconds: int = 3600

    @classmethod
    def from_spec(cls, spec: Mapping[str, Any] | None) -> CircuitPolicy:
        """Build from spec.circuitBreaker (missing keys take the defaults)."""
        spec = spec or {}
        default = cls()
        return cls(
            failure_threshold=int(spec.get("failureThreshold", default.failure_threshold)),
            reset_after_connected_seconds=int(
                spec.get("resetAfterConnectedSeconds", default.reset_after_connected_seconds)
            ),
            cooldown_seconds=int(spec.get("cooldownSeconds", default.cooldown_seconds)),
            max_cooldown_seconds=int(spec.get("maxCooldownSeconds", default.max_cooldown_seconds)),
        )


@dataclass(frozen=True)
class CircuitState:
    """The breaker's memory, persisted in status (circuit.* and consecutiveFailures).

    ``cooldown_seconds`` is the cooldown of the current open period (0 while closed);
    ``opens`` counts how often the circuit has opened, ever (it is never reset).
    """

    state: Circuit = Circuit.CLOSED
    consecutive_failures: int = 0
    opens: int = 0
    opened_at: datetime | None = None
    next_probe_time: datetime | None = None
    cooldown_seconds: int = 0

    def to_status(self) -> dict[str, Any]:
        """status.circuit as written by the operator (consecutiveFailures is a sibling field).

        Unset times are left out, so a server-side apply drops them.
        """
        out: dict[str, Any] = {
            "state": self.state.value,
            "opens": self.opens,
            "cooldownSeconds": self.cooldown_seconds,
        }
        if self.opened_at is not None:
            out["openedAt"] = format_time(self.opened_at)
        if self.next_probe_time is not None:
            out["nextProbeTime"] = format_time(self.next_probe_time)
        return out

    @classmethod
    def from_status(cls, status: Mapping[str, Any] | None) -> CircuitState:
        """Read from the PlatformConnection status (the whole status, not status.circuit)."""
        status = status or {}
        circuit = status.get("circuit") or {}
        return cls(
            state=Circuit(circuit.get("state", Circuit.CLOSED)),
            consecutive_failures=int(status.get("consecutiveFailures", 0)),
            opens=int(circuit.get("opens", 0)),
            opened_at=parse_time(circuit.get("openedAt")),
            next_probe_time=parse_time(circuit.get("nextProbeTime")),
            cooldown_seconds=int(circuit.get("cooldownSeconds", 0)),
        )


@dataclass(frozen=True)
class ScaleTo:
    """Set the gateway Deployment's replicas."""

    replicas: int


@dataclass(frozen=True)
class Event:
    """Emit a Kubernetes Event on the PlatformConnection."""

    type: Literal["Normal", "Warning"]
    reason: str
    message: str


Effect = ScaleTo | Event


@dataclass(frozen=True)
class Transition:
    state: CircuitState
    effects: tuple[Effect, ...] = ()


def on_restart_failure(state: CircuitState, policy: CircuitPolicy, now: datetime) -> Transition:
    """The gateway gave up with a retryable fatal error (it wants a restart).

    * closed: count the failure; at ``failure_threshold`` open the circuit with the base
      cooldown and scale to 0. Below the threshold there are no effects: the caller schedules
      the back-off restart (see backoff.py) as usual.
    * half-open: the probe failed; reopen with the cooldown doubled (capped) and scale to 0.
    * open: the gateway should not be running; a late report from a terminating pod is ignored.

    When the returned state is open, the caller must not schedule a back-off restart.
    """
    _require_aware(now)
    failures = state.consecutive_failures + 1
    if state.state is Circuit.CLOSED:
        if failures < policy.failure_threshold:
            return Transition(dataclasses.replace(state, consecutive_failures=failures))
        return _open(
            state,
            failures,
            cooldown=min(policy.cooldown_seconds, policy.max_cooldown_seconds),
            now=now,
            reason="CircuitOpened",
            # Failures, not restarts: the first failure comes before any restart.
            why=f"{failures} consecutive failures of the gateway without a lasting connection "
                f"(threshold {policy.failure_threshold})",
        )
    if state.state is Circuit.HALF_OPEN:
        previous = state.cooldown_seconds or policy.cooldown_seconds
        return _open(
            state,
            failures,
            cooldown=min(previous * 2, policy.max_cooldown_seconds),
            now=now,
            reason="CircuitReopened",
            why="the probe gateway gave up again",
        )
    return Transition(state)


def on_cooldown_elapsed(state: CircuitState, now: datetime) -> Transition:
    """Open and ``now >= next_probe_time``: go half-open and start one probe gateway.

    Otherwise nothing changes; call it on every timer tick. The caller should re-check at
    ``state.next_probe_time``.
    """
    _require_aware(now)
    if state.state is not Circuit.OPEN:
        return Transition(state)
    if state.next_probe_time is not None and now < state.next_probe_time:
        return Transition(state)
    new = dataclasses.replace(state, state=Circuit.HALF_OPEN, next_probe_time=None)
    return Transition(
        new,
        (
            ScaleTo(1),
            Event(
                "Normal",
                "CircuitHalfOpen",
                f"Cooldown of {state.cooldown_seconds}s elapsed; starting one probe gateway.",
            ),
        ),
    )


def on_connected_for(
    state: CircuitState, policy: CircuitPolicy, connected_for: timedelta
) -> Transition:
    """The gateway has reported ``connected`` for ``connected_for`` (now - status.stateSince).

    * half-open: the probe connected; close the circuit and reset the failure count.
    * closed: after ``reset_after_connected_seconds`` of connection the failure count resets
      (no event: nothing a person needs to know).
    * open: ignored (a stale report; the gateway is scaled to 0).

    Idempotent: calling it again with a longer duration changes nothing further.
    """
    if state.state is Circuit.HALF_OPEN:
        new = CircuitState(state=Circuit.CLOSED, opens=state.opens)
        return Transition(
            new,
            (
                Event(
                    "Normal",
                    "CircuitClosed",
                    "Probe gateway connected; circuit closed and failure count reset.",
                ),
            ),
        )
    if (
        state.state is Circuit.CLOSED
        and state.consecutive_failures > 0
        and connected_for >= timedelta(seconds=policy.reset_after_connected_seconds)
    ):
        return Transition(dataclasses.replace(state, consecutive_failures=0))
    return Transition(state)


def manual_reset(state: CircuitState) -> Transition:
    """A person asked for a reset: close the circuit, forget the failures, run the gateway.

    ``opens`` is history and is kept. Resetting a closed circuit without failures is a no-op.
    """
    new = CircuitState(state=Circuit.CLOSED, opens=state.opens)
    if state == new:
        return Transition(state)
    effects: list[Effect] = []
    if state.state is Circuit.OPEN:
        effects.append(ScaleTo(1))
    effects.append(
        Event(
            "Normal",
            "CircuitReset",
            f"Circuit reset by request (was {state.state.value}, "
            f"{state.consecutive_failures} consecutive failures).",
        )
    )
    return Transition(new, tuple(effects))


def desired_replicas(state: CircuitState, suspended: bool = False) -> int:
    """Replicas of the gateway Deployment: 0 when suspended or the circuit is open, else 1."""
    return 0 if suspended or state.state is Circuit.OPEN else 1


def format_time(value: datetime) -> str:
    """RFC 3339 in UTC with second precision, as metav1.Time serialises."""
    _require_aware(value)
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(value: str | None) -> datetime | None:
    """Parse an RFC 3339 timestamp from status; None stays None."""
    if not value:
        return None
    parsed = datetime.fromisoformat(value)
    if parsed.tzinfo is None:
        raise ValueError(f"timestamp without a time zone: {value!r}")
    return parsed


def _open(
    state: CircuitState, failures: int, *, cooldown: int, now: datetime, reason: str, why: str
) -> Transition:
    probe = now + timedelta(seconds=cooldown)
    new = CircuitState(
        state=Circuit.OPEN,
        consecutive_failures=failures,
        opens=state.opens + 1,
        opened_at=now,
        next_probe_time=probe,
        cooldown_seconds=cooldown,
    )
    message = (
        f"Circuit open after {why}: gateway scaled to 0 for {cooldown}s; "
        f"probe at {format_time(probe)}."
    )
    return Transition(new, (ScaleTo(0), Event("Warning", reason, message)))


def _require_aware(value: datetime) -> None:
    if value.tzinfo is None:
        raise ValueError("datetimes must be timezone-aware")
