"""The Ready condition and needsAttention. Pure: no I/O, no clock reads.

:func:`ready_condition` maps what the operator knows (spec, the Secret, the gateway's own status
report, the circuit breaker, the gateway Deployment rollout) to Ready's status, reason and
message. The first matching rule wins:

==========================  ======  ==================  ==========================================
situation                   status  reason              why this order
==========================  ======  ==================  ==========================================
spec refused by the policy  False   PolicyViolation     nothing is created for this spec
spec.suspend                False   Suspended           the user's choice beats everything
Secret / key missing        False   SecretMissing       the pod cannot even start
circuit open                False   CircuitOpen         gateway is scaled to 0; its report is old
Deployment rolling out      False   Progressing         the report may be from the old pod
fatal, not retryable        False   CredentialsInvalid  needs a person; shown even when half-open
                                    PollingConflict
                                    Banned
                                    ConfigurationInvalid
                                    Failed (other code)
connected                   True    Connected
circuit half-open           False   CircuitHalfOpen     probe running (detail in the message)
no report yet / connecting  False   Connecting
retrying                    False   Retrying
fatal, retryable            False   RestartScheduled    the operator restarts it with back-off
disconnected                False   Disconnected
anything else               Unknown UnknownState
==========================  ======  ==================  ==========================================

Apply circuit transitions (circuit.py) before computing the condition, so that e.g. a probe
that connected is already ``closed``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any, Literal

from switchboard_operator.circuit import Circuit, CircuitState, format_time, parse_time

READY = "Ready"
# kstatus (Flux) and the API conventions' abnormal-true conditions: Reconciling while work is
# under way, Stalled when waiting will not help. Both derive from Ready.
RECONCILING = "Reconciling"
STALLED = "Stalled"

ConditionStatus = Literal["True", "False", "Unknown"]


class Reason(StrEnum):
    """Reasons of the Ready condition (CamelCase, as metav1.Condition requires)."""

    CONNECTED = "Connected"
    CONNECTING = "Connecting"
    RETRYING = "Retrying"
    RESTART_SCHEDULED = "RestartScheduled"
    CREDENTIALS_INVALID = "CredentialsInvalid"
    POLLING_CONFLICT = "PollingConflict"
    BANNED = "Banned"
    CONFIGURATION_INVALID = "ConfigurationInvalid"
    FAILED = "Failed"
    DISCONNECTED = "Disconnected"
    SECRET_MISSING = "SecretMissing"
    POLICY_VIOLATION = "PolicyViolation"
    CIRCUIT_OPEN = "CircuitOpen"
    CIRCUIT_HALF_OPEN = "CircuitHalfOpen"
    SUSPENDED = "Suspended"
    PROGRESSING = "Progressing"
    UNKNOWN_STATE = "UnknownState"


# Non-retryable error codes of the gateway (status.lastError.code) and the reason they show as.
# Codes not listed here show as Failed, with the code in the message.
NON_RETRYABLE_REASONS: Mapping[str, Reason] = {
    "telegram_invalid_token": Reason.CREDENTIALS_INVALID,  # 401/404 from the Bot API
    "qqbot_invalid_credentials": Reason.CREDENTIALS_INVALID,  # getAppAccessToken refused
    "telegram_polling_conflict": Reason.POLLING_CONFLICT,  # 409 after conflictRetries
    "qqbot_banned": Reason.BANNED,  # close code 4915
    "qqbot_delisted": Reason.BANNED,  # close code 4914
    "qqbot_intents_rejected": Reason.CONFIGURATION_INVALID,  # close codes 4013, 4014
    "config_invalid": Reason.CONFIGURATION_INVALID,  # the gateway's settings are unusable
}

# Gateway states (status.state), as the CRD enumerates them.
GATEWAY_STATES = ("connecting", "connected", "retrying", "fatal", "disconnected")


@dataclass(frozen=True)
class ReadyInputs:
    """Everything Ready depends on. Defaults describe a fresh, healthy object."""

    # What the cluster's policy refuses in the spec (policy.violations), joined; None: allowed.
    policy_violation: str | None = None
    suspended: bool = False
    # None when the Secret and its keys exist; else a short description for the message,
    # e.g. "Secret tg-token has no key 'token'". Never the secret's value.
    secret_missing: str | None = None
    circuit: CircuitState = field(default_factory=CircuitState)
    rollout_in_progress: bool = False
    # Gateway-owned status fields; gateway_state None means the gateway has not reported yet.
    gateway_state: str | None = None
    attempts: str | None = None
    error_code: str | None = None
    error_message: str | None = None
    # lastError.retryable; None (no lastError) counts as retryable, so recovery is attempted.
    retryable: bool | None = None
    gateway_pod: str | None = None
    # Operator-owned: when the next back-off restart happens, if one is scheduled.
    next_restart_time: datetime | None = None

    @classmethod
    def from_resource(
        cls,
        spec: Mapping[str, Any],
        status: Mapping[str, Any] | None,
        *,
        secret_missing: str | None = None,
        rollout_in_progress: bool = False,
        circuit: CircuitState | None = None,
        policy_violation: str | None = None,
    ) -> ReadyInputs:
        """Collect the inputs from a PlatformConnection's spec and status.

        ``circuit`` overrides the circuit read from status (pass the state after this
        reconcile's transitions).
        """
        status = status or {}
        last_error = status.get("lastError") or {}
        return cls(
            policy_violation=policy_violation,
            suspended=bool(spec.get("suspend", False)),
            secret_missing=secret_missing,
            circuit=circuit if circuit is not None else CircuitState.from_status(status),
            rollout_in_progress=rollout_in_progress,
            gateway_state=status.get("state"),
            attempts=status.get("attempts"),
            error_code=last_error.get("code"),
            error_message=_printable(last_error.get("message")),
            retryable=last_error.get("retryable"),
            gateway_pod=status.get("gatewayPod"),
            next_restart_time=parse_time(status.get("nextRestartTime")),
        )


@dataclass(frozen=True)
class ConditionValue:
    status: ConditionStatus
    reason: Reason
    message: str


def ready_condition(i: ReadyInputs) -> ConditionValue:
    """Status, reason and message of the Ready condition (see the table in the module doc)."""
    if i.policy_violation:
        return _false(Reason.POLICY_VIOLATION,
                      f"Refused by the cluster's policy, nothing runs for this spec: "
                      f"{i.policy_violation}.")
    if i.suspended:
        return _false(Reason.SUSPENDED, "spec.suspend is true: the gateway is scaled to 0.")
    if i.secret_missing:
        return _false(
            Reason.SECRET_MISSING,
            f"{i.secret_missing}. The gateway stays at 0 replicas until then.",
        )
    if i.circuit.state is Circuit.OPEN:
        until = (
            f" until {format_time(i.circuit.next_probe_time)}"
            if i.circuit.next_probe_time is not None
            else ""
        )
        return _false(
            Reason.CIRCUIT_OPEN,
            f"Circuit open after {i.circuit.consecutive_failures} consecutive failed restarts: "
            f"gateway scaled to 0{until}, then one probe runs.{_last_error(i)}",
        )
    if i.rollout_in_progress:
        return _false(
            Reason.PROGRESSING, "Rolling out the gateway Deployment for the current spec."
        )

    state = i.gateway_state
    if state == "fatal" and i.retryable is False:
        reason = NON_RETRYABLE_REASONS.get(i.error_code or "", Reason.FAILED)
        return _false(
            reason,
            f"Gateway stopped with a non-retryable error{_code(i)}{_colon_message(i)}. "
            "It is not restarted automatically: fix the cause.",
        )
    if state == "connected":
        pod = f" (pod {i.gateway_pod})" if i.gateway_pod else ""
        return ConditionValue("True", Reason.CONNECTED, f"Gateway is connected{pod}.")
    if i.circuit.state is Circuit.HALF_OPEN:
        return _false(
            Reason.CIRCUIT_HALF_OPEN,
            f"Probing with one gateway after a {i.circuit.cooldown_seconds}s cooldown; "
            f"gateway is {state or 'starting'}{_attempt(i)}.{_last_error(i)}",
        )
    if state is None:
        return _false(Reason.CONNECTING, "Waiting for the gateway's first status report.")
    if state == "connecting":
        return _false(Reason.CONNECTING, f"Gateway is connecting{_attempt(i)}.")
    if state == "retrying":
        return _false(Reason.RETRYING, f"Gateway is reconnecting{_attempt(i)}.{_last_error(i)}")
    if state == "fatal":
        when = (
            f"restart scheduled at {format_time(i.next_restart_time)}"
            if i.next_restart_time is not None
            else "restart pending"
        )
        return _false(
            Reason.RESTART_SCHEDULED,
            f"Gateway gave up{_code(i)}{_colon_message(i)}; {when}.",
        )
    if state == "disconnected":
        return _false(Reason.DISCONNECTED, f"Gateway reported disconnected.{_last_error(i)}")
    return ConditionValue("Unknown", Reason.UNKNOWN_STATE, f"Gateway reported state {state!r}.")


def make_condition(
    existing: Iterable[Mapping[str, Any]] | None,
    type_: str,
    value: ConditionValue,
    generation: int,
    now: datetime,
) -> dict[str, Any]:
    """A metav1.Condition dict for ``type_``.

    lastTransitionTime is copied from the condition of the same type in ``existing`` when the
    status did not change (reason or message changes are not transitions); otherwise it is
    ``now``.
    """
    previous = next((c for c in existing or () if c.get("type") == type_), None)
    if previous is not None and previous.get("status") == value.status:
        transition = previous.get("lastTransitionTime") or format_time(now)
    else:
        transition = format_time(now)
    return {
        "type": type_,
        "status": value.status,
        "reason": str(value.reason),
        "message": value.message,
        "lastTransitionTime": transition,
        "observedGeneration": generation,
    }


def upsert_condition(
    conditions: Iterable[Mapping[str, Any]] | None, condition: Mapping[str, Any]
) -> list[dict[str, Any]]:
    """A copy of ``conditions`` with ``condition`` replacing the one of the same type
    (appended when absent); for writers that send the whole list (e.g. a merge patch)."""
    out = [dict(c) for c in conditions or () if c.get("type") != condition["type"]]
    out.append(dict(condition))
    return out


def rollout_in_progress(deployment: Mapping[str, Any] | None,
                        completed_generation: int | None = None) -> bool:
    """Whether the gateway Deployment has not yet rolled out its current template.

    True while the Deployment is missing, its controller has not observed the latest
    generation, pods of an old template remain, or fewer replicas than desired run the new
    template. That last one only counts while the generation has not been seen complete
    (``completed_generation``, remembered by the caller): a pod missing from a generation
    that was complete is being replaced (a restart, an eviction), not rolled out. Readiness
    is deliberately not considered: a gateway that is up but retrying is reported as
    Retrying, not as a stuck rollout.
    """
    if deployment is None:
        return True
    metadata = deployment.get("metadata") or {}
    spec = deployment.get("spec") or {}
    status = deployment.get("status") or {}
    generation = int(metadata.get("generation", 0))
    desired = int(spec.get("replicas", 1))
    if int(status.get("observedGeneration", 0)) < generation:
        return True
    updated = int(status.get("updatedReplicas", 0))
    if int(status.get("replicas", 0)) > updated:
        return True
    return updated < desired and completed_generation != generation


def needs_attention(
    circuit_open: bool,
    retrying_since: datetime | None,
    now: datetime,
    threshold_seconds: int,
    *,
    permanent_failure: bool = False,
) -> bool:
    """status.needsAttention: a person should look. Retries continue regardless.

    True when the circuit is open, when the connection has not been connected since
    ``retrying_since`` for at least ``threshold_seconds`` (spec.needsAttentionAfterSeconds), or
    when ``permanent_failure`` (a non-retryable error or a missing Secret: nothing recovers
    without a person). ``retrying_since`` is None while connected or suspended; the Ready
    condition's lastTransitionTime while Ready is False is a suitable source.
    """
    if now.tzinfo is None or (retrying_since is not None and retrying_since.tzinfo is None):
        raise ValueError("datetimes must be timezone-aware")
    if circuit_open or permanent_failure:
        return True
    if retrying_since is None:
        return False
    return now - retrying_since >= timedelta(seconds=threshold_seconds)


# Longest piece of a gateway's error text the Ready message (and its Events) quotes. The
# gateway bounds and cleans it already; a custom image might not.
MAX_QUOTED_ERROR = 512


def _printable(text: str | None) -> str | None:
    if text is None:
        return None
    clean = "".join(c if c.isprintable() else " " for c in str(text))
    return clean[:MAX_QUOTED_ERROR]


def _false(reason: Reason, message: str) -> ConditionValue:
    return ConditionValue("False", reason, message)


def _attempt(i: ReadyInputs) -> str:
    return f", attempt {i.attempts}" if i.attempts else ""


def _code(i: ReadyInputs) -> str:
    return f" ({i.error_code})" if i.error_code else ""


def _colon_message(i: ReadyInputs) -> str:
    return f": {i.error_message}" if i.error_message else ""


def _last_error(i: ReadyInputs) -> str:
    if i.error_code and i.error_message:
        return f" Last error: {i.error_code}: {i.error_message}"
    if i.error_code or i.error_message:
        return f" Last error: {i.error_code or i.error_message}"
    return ""


# Ready reasons that will not get better by waiting: a person (or a Secret/spec change) must act.
STALLED_REASONS = frozenset({
    Reason.CREDENTIALS_INVALID, Reason.POLLING_CONFLICT, Reason.BANNED,
    Reason.CONFIGURATION_INVALID, Reason.FAILED, Reason.SECRET_MISSING, Reason.CIRCUIT_OPEN,
    Reason.POLICY_VIOLATION})


def kstatus_conditions(ready: ConditionValue) -> dict[str, ConditionValue]:
    """Reconciling and Stalled for the given Ready value (suspended: neither; it is at rest)."""
    stalled = ready.status == "False" and ready.reason in STALLED_REASONS
    working = ready.status != "True" and not stalled and ready.reason != Reason.SUSPENDED
    return {
        RECONCILING: ConditionValue("True" if working else "False", ready.reason,
                                    ready.message if working else ""),
        STALLED: ConditionValue("True" if stalled else "False", ready.reason,
                                ready.message if stalled else ""),
    }
