"""The operator-owned part of status, and whether it needs writing.

Written with server-side apply on the status subresource, field manager switchboard-operator:
the apply always carries every operator-owned field (a field left out is removed), and never a
gateway-owned one (GATEWAY_FIELDS below), so the two writers never overwrite each other.
Nothing is written when the computed fields equal what is stored: an idle connection costs no
API requests.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any

from switchboard_contract import GATEWAY_FIELDS, OPERATOR_FIELDS, OPERATOR_MANAGER
from switchboard_contract import Field as F
from switchboard_operator import conditions as cond
from switchboard_operator.circuit import Circuit, Event, parse_time
from switchboard_operator.decide import Plan

# Reasons that need a person (needsAttention at once).
PERMANENT = {cond.Reason.CREDENTIALS_INVALID, cond.Reason.POLLING_CONFLICT, cond.Reason.BANNED,
             cond.Reason.CONFIGURATION_INVALID, cond.Reason.FAILED, cond.Reason.SECRET_MISSING,
             cond.Reason.POLICY_VIOLATION, cond.Reason.APPLY_FAILED,
             cond.Reason.REPLICA_FAILURE}


@dataclasses.dataclass
class Desired:
    status: dict[str, Any]
    ready: cond.ConditionValue
    wake: datetime | None  # when needsAttention may flip by itself


def desired(body: Mapping[str, Any], plan: Plan, *, secret_missing: str | None,
            rollout_in_progress: bool, applied_hash: str, now: datetime,
            policy_violation: str | None = None, apply_failed: str | None = None,
            replica_failure: str | None = None, available_replicas: int | None = None,
            unavailable_since: datetime | None = None,
            unavailable_grace: timedelta = timedelta(seconds=30),
            pod_problem: str | None = None) -> Desired:
    """What the operator's status fields should say. ``available_replicas``: the gateway
    Deployment's (None: no Deployment seen yet, nothing to cross-check)."""
    meta, spec = body["metadata"], body.get("spec") or {}
    status = body.get("status") or {}
    # A superseded report (its pod was restarted or rolled away) is not the gateway's
    # current state: Ready waits for the new pod's first report instead.
    seen = {k: v for k, v in status.items() if not (plan.superseded and k in GATEWAY_FIELDS)}
    inputs = cond.ReadyInputs.from_resource(
        spec, seen, secret_missing=secret_missing, rollout_in_progress=rollout_in_progress,
        circuit=plan.circuit, policy_violation=policy_violation, apply_failed=apply_failed,
        replica_failure=replica_failure)
    # A connected report is trusted only while the Deployment has a pod available (or for
    # the probe's lag after the report): a gateway that lost its token (its ServiceAccount
    # recreated) or died cannot say so, and its last report would stay "connected" forever.
    distrust = None
    if available_replicas is not None and seen.get(F.STATE) == "connected":
        distrust = cond.unavailable_after(available_replicas, plan.replicas,
                                          parse_time(seen.get(F.STATE_SINCE)),
                                          unavailable_since, unavailable_grace)
    inputs = dataclasses.replace(inputs, next_restart_time=plan.schedule.next_restart,
                                 gateway_unavailable=distrust is not None and now >= distrust,
                                 pod_problem=pod_problem)
    value = cond.ready_condition(inputs)
    generation = int(meta.get("generation", 0))
    ready = cond.make_condition(status.get("conditions"), cond.READY, value, generation, now)
    extra = [cond.make_condition(status.get("conditions"), kind, v, generation, now)
             for kind, v in {**cond.kstatus_conditions(value),
                             cond.DELIVERING: cond.delivering_condition(inputs)}.items()]

    suspended = bool(spec.get("suspend", False))
    not_ready_since = (parse_time(ready["lastTransitionTime"])
                       if ready["status"] != "True" and not suspended else None)
    threshold = int(spec.get("needsAttentionAfterSeconds", 7200))
    attention = cond.needs_attention(plan.circuit.state is Circuit.OPEN, not_ready_since, now,
                                     threshold, permanent_failure=value.reason in PERMANENT)
    wakes = []
    if not attention and not_ready_since is not None:
        wakes.append(not_ready_since + timedelta(seconds=threshold))
    if distrust is not None and now < distrust:
        wakes.append(distrust)
    wake = min(wakes) if wakes else None

    circuit = plan.circuit.to_status()
    if plan.reset_request is not None:
        circuit["resetRequest"] = plan.reset_request
    out: dict[str, Any] = {
        "conditions": [ready, *extra],
        "observedGeneration": generation,
        "consecutiveFailures": plan.circuit.consecutive_failures,
        "circuit": circuit,
        "needsAttention": attention,
        "appliedHash": applied_hash,
        **plan.schedule.to_status(),
    }
    dead = _dead_letter_count(status)
    if dead:
        out[F.DEAD_LETTERS_REPORTED] = dead
    return Desired(out, value, wake)


def _dead_letter_count(status: Mapping[str, Any]) -> int:
    value = (status.get(F.DEAD_LETTERS) or {}).get("count")
    return value if isinstance(value, int) and value > 0 else 0


def current(status: Mapping[str, Any] | None) -> dict[str, Any]:
    """The operator-owned fields as stored (only our conditions)."""
    status = status or {}
    out: dict[str, Any] = {k: status[k] for k in OPERATOR_FIELDS if k in status}
    if "conditions" in out:
        ours = (cond.READY, cond.RECONCILING, cond.STALLED, cond.DELIVERING)
        out["conditions"] = [c for c in out["conditions"] if c.get("type") in ours]
    return out


def foreign_fields(body: Mapping[str, Any]) -> dict[str, str]:
    """Operator-owned status fields that another field manager owns (a `kubectl edit
    --subresource=status`, a script): field -> that manager. Server-side apply cannot remove
    a field another manager owns, so leaving one would make every apply differ from status,
    and a hand-set schedule (nextRestartTime: 2099) would be obeyed."""
    found: dict[str, str] = {}
    for entry in (body.get("metadata") or {}).get("managedFields") or []:
        manager = str(entry.get("manager") or "")
        if manager == OPERATOR_MANAGER:
            continue
        owned = ((entry.get("fieldsV1") or {}).get("f:status")) or {}
        for key in owned:
            name = str(key).removeprefix("f:")
            if name in OPERATOR_FIELDS:
                found.setdefault(name, manager)
    return found


def changed(body: Mapping[str, Any], new: Mapping[str, Any]) -> bool:
    return current(body.get("status")) != dict(new)


# Not permanent, but a Warning Event when Ready turns to them: nothing else would tell.
WARNED = {cond.Reason.GATEWAY_NOT_STARTING, cond.Reason.GATEWAY_UNAVAILABLE}


def failure_events(body: Mapping[str, Any], new: Desired) -> list[Event]:
    """A Warning Event when Ready turns to a failure only a person can fix (PERMANENT): what
    `kubectl describe` and event-based alerting show. Derived from the transition of the
    stored Ready reason, so it is posted once, by the write that makes the change."""
    events = _dead_letter_events(body.get("status") or {}, new.status)
    reason = new.ready.reason
    if reason not in PERMANENT | WARNED:
        return events
    old = next((c for c in (body.get("status") or {}).get("conditions") or []
                if c.get("type") == cond.READY), None)
    if old is not None and old.get("reason") == reason:
        return events
    return [Event("Warning", str(reason), new.ready.message), *events]


def _dead_letter_events(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[Event]:
    """A Warning Event when the gateway dead-lettered messages since the last one reported
    (deadLettersReported): the gateway names the chat and message id, never the text, and
    needs no right to post Events itself."""
    count = int(new.get(F.DEAD_LETTERS_REPORTED) or 0)
    reported = int(old.get(F.DEAD_LETTERS_REPORTED) or 0)
    if count <= reported:
        return []
    last = (old.get(F.DEAD_LETTERS) or {}).get("last") or {}
    n = count - reported
    return [Event("Warning", "MessageDeadLettered",
                  f"{n} message{'s' if n > 1 else ''} could not be answered and "
                  f"{'were' if n > 1 else 'was'} given up on; the last: chat "
                  f"{last.get('chatId')}, message {last.get('messageId')}, "
                  f"{last.get('reason')}: {str(last.get('message') or '')[:200]}")]
