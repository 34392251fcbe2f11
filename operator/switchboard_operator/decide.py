"""What to do for one PlatformConnection, now. Pure: the caller passes the clock and the cache.

Level-triggered: given spec, status (both owners' fields), the Secret's state and the time, it
returns the whole plan (circuit and restart schedule after this step, replicas, a restart to
execute, Events to post, when to wake up next). Running it twice on the same input gives the
same plan, so extra wake-ups or watch events never double-count anything.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from switchboard_contract import State
from switchboard_operator import circuit as cb
from switchboard_operator.restarts import Report, Schedule, due_time

RESET_ANNOTATION = "switchboard.dev/reset-circuit"


@dataclass
class Plan:
    circuit: cb.CircuitState
    schedule: Schedule
    replicas: int
    reset_request: str | None = None
    # Due time of a restart to execute now (None: no restart now).
    restart_due: datetime | None = None
    restart_reason: str = ""
    backoff_seconds: float = 0.0
    # The gateway's report comes from a pod the operator already dealt with (restarted,
    # replaced by a roll or scaled away): Ready must not describe it as current.
    superseded: bool = False
    events: list[cb.Event] = field(default_factory=list)
    wake: list[datetime] = field(default_factory=list)


def decide(body: Mapping[str, Any], *, blocked: str | None, rolled: bool,
           now: datetime) -> Plan:
    """What to do now. ``blocked``: why the gateway must not run at all (its Secret is
    missing, or the cluster's policy refuses the spec): 0 replicas and no restarts."""
    spec = body.get("spec") or {}
    status = body.get("status") or {}
    annotations = (body.get("metadata") or {}).get("annotations") or {}
    policy = cb.CircuitPolicy.from_spec(spec.get("circuitBreaker"))
    circuit = cb.CircuitState.from_status(status)
    schedule = Schedule.from_status(status)
    report = Report.from_status(status)
    suspended = bool(spec.get("suspend", False))
    events: list[cb.Event] = []
    wake: list[datetime] = []

    if rolled:
        # New spec or rotated Secret: the gateway restarts with it and deserves a fresh start
        # (this is also how a non-retryable failure is retried: fix the Secret or the spec).
        if circuit.state is not cb.Circuit.CLOSED or circuit.consecutive_failures:
            events.append(cb.Event("Normal", "FailuresReset",
                                   "Spec or Secret changed: gateway rolled; failure count "
                                   f"({circuit.consecutive_failures}) and circuit reset."))
        circuit = cb.CircuitState(opens=circuit.opens)
        schedule.next_restart = None
        if report.identity is not None:
            schedule.handled = report.identity

    reset_request = (status.get("circuit") or {}).get("resetRequest")
    requested = annotations.get(RESET_ANNOTATION)
    if requested is not None and requested != reset_request:
        t = cb.manual_reset(circuit)
        circuit = t.state
        events += [e for e in t.effects if isinstance(e, cb.Event)]
        reset_request = requested

    if suspended or blocked:
        schedule.next_restart = None  # nothing runs, so nothing to restart
    elif report.state == State.FATAL and report.retryable is not False \
            and report.identity != schedule.handled:
        # A new retryable fatal report: count it once, then restart with back-off or open.
        # The back-off runs from now, the operator's first sight of it: the report's
        # stateSince is the gateway's clock (skewed, or set by a custom image at will).
        # Whole seconds, as status shows times: the back-off a person reads from
        # failureObservedAt to nextRestartTime is exactly the configured one.
        observed = now.replace(microsecond=0)
        schedule.handled = report.identity
        schedule.failed_pod_uid = report.pod_uid
        schedule.failure_observed_at = observed
        t = cb.on_restart_failure(circuit, policy, now)
        circuit = t.state
        events += [e for e in t.effects if isinstance(e, cb.Event)]
        if circuit.state is cb.Circuit.CLOSED:
            schedule.next_restart = due_time(observed, circuit.consecutive_failures,
                                             spec.get("restartPolicy"))
        else:
            schedule.next_restart = None
    elif report.state == State.CONNECTED and report.identity is not None:
        # How long it has been connected, on the operator's clock: since this report was
        # first seen (recorded in status, so a new leader goes on timing the same report).
        timed = schedule.connected_observed
        since = timed[1] if timed is not None and timed[0] == report.identity else now
        t = cb.on_connected_for(circuit, policy, now - since)
        circuit = t.state
        events += [e for e in t.effects if isinstance(e, cb.Event)]
        schedule.next_restart = None  # it recovered by itself
        # Timed only while there are failures to forgive: a healthy connection's reports
        # cost no status write.
        timing = circuit.state is not cb.Circuit.CLOSED or bool(circuit.consecutive_failures)
        schedule.connected_observed = (report.identity, since) if timing else None
        if circuit.state is cb.Circuit.CLOSED and circuit.consecutive_failures:
            wake.append(since + timedelta(seconds=policy.reset_after_connected_seconds))

    if report.state != State.CONNECTED:
        schedule.connected_observed = None

    if circuit.state is cb.Circuit.OPEN:
        t = cb.on_cooldown_elapsed(circuit, now)
        if t.state != circuit:
            circuit = t.state
            events += [e for e in t.effects if isinstance(e, cb.Event)]
        elif circuit.next_probe_time is not None:
            wake.append(circuit.next_probe_time)

    plan = Plan(circuit=circuit, schedule=schedule, reset_request=reset_request,
                replicas=cb.desired_replicas(circuit, suspended or bool(blocked)),
                events=events, wake=wake)
    nxt = schedule.next_restart
    # Another pod reports: the failed one was replaced (deleted by a person, or by an operator
    # that died before recording its restart). The restart is due at once; it deletes only
    # the failed pod, so the replacement is kept.
    replaced = report.pod is not None and schedule.failed_pod is not None \
        and report.pod != schedule.failed_pod
    if nxt is not None and circuit.state is not cb.Circuit.OPEN:
        if now >= nxt or replaced:
            plan.restart_due = nxt
            plan.restart_reason = _handled_code(report, schedule)
            if schedule.failure_observed_at is not None:
                plan.backoff_seconds = max(
                    0.0, (nxt - schedule.failure_observed_at).total_seconds())
        else:
            wake.append(nxt)
    plan.superseded = (report.identity is not None and report.identity == schedule.handled
                       and plan.restart_due is None and schedule.next_restart is None)
    return plan


def _handled_code(report: Report, schedule: Schedule) -> str:
    """The error code of the failure being restarted for; unknown once the report is the
    replacement's."""
    return (report.code if report.identity == schedule.handled else None) or "unknown"


def after_restart(plan: Plan, now: datetime) -> Plan:
    """The plan once its due restart was executed (the pods were deleted)."""
    schedule = dataclasses.replace(plan.schedule, restarts=plan.schedule.restarts + 1,
                                   last_restart=now, next_restart=None)
    return dataclasses.replace(plan, schedule=schedule, restart_due=None, superseded=True)
