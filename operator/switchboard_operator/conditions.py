"""The Ready condition and needsAttention. Pure: no I/O, no clock reads.

:func:`ready_condition` maps what the operator knows (spec, the Secret, the gateway's own status
report, the circuit breaker, the gateway Deployment rollout) to Ready's status, reason and
message. The first matching rule wins:

==========================  ======  ==================  ==========================================
situation                   status  reason              why this order
==========================  ======  ==================  ==========================================
spec refused by the policy  False   PolicyViolation     nothing is created for this spec
apply refused by the API    False   ApplyFailed         the API server's message; nothing runs
spec.suspend                True    Suspended           at rest as asked: healthy for GitOps
Secret / key missing        False   SecretMissing       the pod cannot even start
circuit open                False   CircuitOpen         gateway is scaled to 0; its report is old
pods refused (quota, ...)   False   ReplicaFailure      the Deployment's ReplicaFailure condition
pod cannot start            False   GatewayNotStarting  its waiting reason (no report, no pod up)
Deployment rolling out      False   Progressing         the report may be from the old pod
fatal, not retryable        False   CredentialsInvalid  needs a person; shown even when half-open
                                    PollingConflict
                                    Banned
                                    ConfigurationInvalid
                                    Failed (other code)
connected, no pod available False  GatewayUnavailable  a report the operator cannot trust
connected, backend failing  False   BackendUnavailable  messages are held, none is answered
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

Ready=True means "as the spec asks": connected and delivering, or suspended. The Delivering
condition says only whether messages flow to the backend (False, BackendUnavailable, with the
backend's error while the gateway holds them; Unknown while not connected). A suspended
connection is at rest, so kstatus (Flux's ``wait: true``) must read it as Current, and it
reads any Ready=False as InProgress; Argo CD's health check (helm/switchboard/README.md) says
Suspended by the reason. Whether a gateway is connected is status.state, not Ready's status.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any, Literal

from switchboard_contract import ErrorCode, Field, State
from switchboard_operator.circuit import Circuit, CircuitState, format_time, parse_time

READY = "Ready"
# kstatus (Flux) and the API conventions' abnormal-true conditions: Reconciling while work is
# under way, Stalled when waiting will not help. Both derive from Ready.
RECONCILING = "Reconciling"
STALLED = "Stalled"
# Whether messages reach the backend (the gateway holds them while it fails).
DELIVERING = "Delivering"

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
    APPLY_FAILED = "ApplyFailed"
    REPLICA_FAILURE = "ReplicaFailure"
    CIRCUIT_OPEN = "CircuitOpen"
    CIRCUIT_HALF_OPEN = "CircuitHalfOpen"
    SUSPENDED = "Suspended"
    PROGRESSING = "Progressing"
    BACKEND_UNAVAILABLE = "BackendUnavailable"
    GATEWAY_UNAVAILABLE = "GatewayUnavailable"
    GATEWAY_NOT_STARTING = "GatewayNotStarting"
    DELIVERING = "Delivering"
    NOT_CONNECTED = "NotConnected"
    UNKNOWN_STATE = "UnknownState"


# What Ready says when the gateway stops with a non-retryable error, for every code the gateway
# can write (switchboard_contract.ErrorCode; a test checks the table is total, so a new code
# gets a deliberate reason). Retryable codes show as Failed should one ever come non-retryable
# (a custom image); a code outside the contract shows as Failed, with the code in the message.
_C = ErrorCode
NON_RETRYABLE_REASONS: Mapping[str, Reason] = {
    _C.TELEGRAM_INVALID_TOKEN: Reason.CREDENTIALS_INVALID,  # 401/404 from the Bot API
    _C.QQ_INVALID_CREDENTIALS: Reason.CREDENTIALS_INVALID,  # getAppAccessToken refused
    _C.QQ_TOKEN_INVALID: Reason.CREDENTIALS_INVALID,  # close code 4004
    _C.TELEGRAM_POLLING_CONFLICT: Reason.POLLING_CONFLICT,  # 409 after conflictRetries
    _C.QQ_BANNED: Reason.BANNED,  # close code 4915
    _C.QQ_DELISTED: Reason.BANNED,  # close code 4914
    _C.QQ_INTENTS_REJECTED: Reason.CONFIGURATION_INVALID,  # close codes 4013, 4014
    _C.QQ_SHARDING_REQUIRED: Reason.CONFIGURATION_INVALID,  # close code 4011
    _C.QQ_INVALID_SHARD: Reason.CONFIGURATION_INVALID,  # close code 4010
    _C.CONFIG_INVALID: Reason.CONFIGURATION_INVALID,  # the gateway's settings are unusable
    _C.TELEGRAM_WEBHOOK_REFUSED: Reason.CONFIGURATION_INVALID,  # setWebhook refused the URL
    **{code: Reason.FAILED for code in (
        _C.INTERNAL_ERROR, _C.GATEWAY_STALLED, _C.BACKEND_ERROR, _C.LEASE_UNAVAILABLE,
        _C.LEASE_LOST, _C.TELEGRAM_NETWORK_ERROR, _C.TELEGRAM_WEBHOOK_FAILING,
        _C.TELEGRAM_RATE_LIMITED, _C.TELEGRAM_SEND_FAILED, _C.QQ_RECONNECT_EXHAUSTED,
        _C.QQ_QUICK_DISCONNECTS, _C.QQ_HEARTBEAT_TIMEOUT, _C.QQ_HANDSHAKE_TIMEOUT,
        _C.QQ_NETWORK_ERROR, _C.QQ_TOKEN_ERROR, _C.QQ_GATEWAY_ERROR, _C.QQ_RECONNECT_REQUESTED,
        _C.QQ_INVALID_SESSION, _C.QQ_UNEXPECTED_ERROR, _C.QQ_CONNECTION_LOST,
        _C.QQ_CONNECTION_CLOSED, _C.QQ_INVALID_OPCODE, _C.QQ_INVALID_PAYLOAD,
        _C.QQ_INVALID_VERSION, _C.QQ_SESSION_INVALID, _C.QQ_INVALID_SEQ, _C.QQ_RATE_LIMITED,
        _C.QQ_SESSION_TIMEOUT, _C.QQ_SERVER_ERROR, _C.QQ_REPLY_REJECTED, _C.QQ_REPLY_ERROR)},
}

# Gateway states (status.state), as the CRD enumerates them.
GATEWAY_STATES = tuple(State)


@dataclass(frozen=True)
class ReadyInputs:
    """Everything Ready depends on. Defaults describe a fresh, healthy object."""

    # What the cluster's policy refuses in the spec (policy.violations), joined; None: allowed.
    policy_violation: str | None = None
    # The API server refused to apply a child (its message), e.g. an invalid Deployment.
    apply_failed: str | None = None
    # The gateway Deployment's ReplicaFailure condition ("reason: message"), e.g. a quota.
    replica_failure: str | None = None
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
    # The gateway Deployment has had no available pod for longer than a connected report may
    # lag behind its readiness probe (unavailable_after): the report cannot be current.
    gateway_unavailable: bool = False
    # Why the gateway pod does not start (pod_problems.problem), looked up only while no
    # current report exists and no pod is available; None otherwise.
    pod_problem: str | None = None

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
        apply_failed: str | None = None,
        replica_failure: str | None = None,
    ) -> ReadyInputs:
        """Collect the inputs from a PlatformConnection's spec and status.

        ``circuit`` overrides the circuit read from status (pass the state after this
        reconcile's transitions).
        """
        status = status or {}
        last_error = status.get(Field.LAST_ERROR) or {}
        return cls(
            policy_violation=policy_violation,
            apply_failed=apply_failed,
            replica_failure=replica_failure,
            suspended=bool(spec.get("suspend", False)),
            secret_missing=secret_missing,
            circuit=circuit if circuit is not None else CircuitState.from_status(status),
            rollout_in_progress=rollout_in_progress,
            gateway_state=status.get(Field.STATE),
            attempts=status.get(Field.ATTEMPTS),
            error_code=last_error.get("code"),
            error_message=_printable(last_error.get("message")),
            retryable=last_error.get("retryable"),
            gateway_pod=status.get(Field.GATEWAY_POD),
            next_restart_time=parse_time(status.get(Field.NEXT_RESTART_TIME)),
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
    if i.apply_failed:
        return _false(Reason.APPLY_FAILED,
                      f"The API server refused the gateway's objects for this spec: "
                      f"{_printable(i.apply_failed)}. Retried when the spec changes.")
    if i.suspended:
        return ConditionValue("True", Reason.SUSPENDED,
                              "spec.suspend is true: the gateway is scaled to 0, as asked "
                              "(not connected).")
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
            f"Circuit open after {i.circuit.consecutive_failures} consecutive failures: "
            f"gateway scaled to 0{until}, then one probe runs.{_last_error(i)}",
        )
    if i.replica_failure:
        return _false(Reason.REPLICA_FAILURE,
                      f"The gateway Deployment cannot create its pod: "
                      f"{_printable(i.replica_failure)}.")
    if i.pod_problem:
        # Before the rollout: a pod that cannot start is why a rollout never completes.
        return _false(Reason.GATEWAY_NOT_STARTING,
                      f"The gateway pod does not start: {i.pod_problem}.")
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
    if state == "connected" and i.gateway_unavailable:
        pod = f" by pod {i.gateway_pod}" if i.gateway_pod else ""
        return _false(Reason.GATEWAY_UNAVAILABLE,
                      f"Connected was reported{pod}, but the gateway Deployment has no "
                      "available pod: the report is stale (the pod is gone, not ready or "
                      "cannot write its status).")
    if state == "connected":
        pod = f" (pod {i.gateway_pod})" if i.gateway_pod else ""
        if i.error_code == ErrorCode.BACKEND_ERROR:
            return _false(Reason.BACKEND_UNAVAILABLE,
                          f"Gateway is connected{pod} but the backend does not take messages"
                          f"{_colon_message(i)}. They are held (not confirmed to the platform) "
                          "and retried.")
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
    """": <the gateway's message>", without its own full stop: the sentence goes on."""
    if not i.error_message:
        return ""
    message = i.error_message
    if message.endswith(".") and not message.endswith("..."):
        message = message[:-1]
    return f": {message}"


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
    Reason.POLICY_VIOLATION, Reason.APPLY_FAILED, Reason.REPLICA_FAILURE})


# Stalled reasons that retrying does not fix and that the operator does not heal on its own: a
# person must act (the critical alert). An open circuit is Stalled for kstatus (Flux stops
# waiting) but probes again by itself after its cool-down, so it only warns.
NEEDS_PERSON_REASONS = STALLED_REASONS - {Reason.CIRCUIT_OPEN}


def needs_person(ready_status: str, reason: str) -> bool:
    return ready_status == "False" and reason in NEEDS_PERSON_REASONS


def unavailable_after(available_replicas: int, desired_replicas: int,
                      report_since: datetime | None, unavailable_since: datetime | None,
                      grace: timedelta) -> datetime | None:
    """From when a ``connected`` report is not to be trusted: the Deployment wants a pod but
    has none available (its readiness probe is the gateway's own "connected"). ``grace``
    counts from the later of the report (a fresh pod's probe lags behind it) and the loss of
    availability (a probe that failed once must not flip Ready). None: trusted."""
    if desired_replicas < 1 or available_replicas > 0 or report_since is None:
        return None
    return max(report_since, unavailable_since or report_since) + grace


def delivering_condition(i: ReadyInputs) -> ConditionValue:
    """Whether messages reach the backend: known only while the gateway is connected."""
    if i.gateway_state != "connected" or i.suspended or i.gateway_unavailable:
        return ConditionValue("Unknown", Reason.NOT_CONNECTED,
                              "The gateway is not connected: no messages arrive.")
    if i.error_code == ErrorCode.BACKEND_ERROR:
        return _false(Reason.BACKEND_UNAVAILABLE,
                      f"The backend does not take messages{_colon_message(i)}.")
    return ConditionValue("True", Reason.DELIVERING, "Messages reach the backend.")


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
