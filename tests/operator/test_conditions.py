import re
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import yaml

from switchboard_contract import GATEWAY_FIELDS, OPERATOR_FIELDS, ErrorCode, Field
from switchboard_operator.circuit import Circuit, CircuitState
from switchboard_operator.conditions import (
    GATEWAY_STATES,
    NON_RETRYABLE_REASONS,
    READY,
    ConditionValue,
    ReadyInputs,
    Reason,
    delivering_condition,
    make_condition,
    needs_attention,
    ready_condition,
    rollout_in_progress,
    upsert_condition,
)

NOW = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)
EARLIER = "2025-12-31T08:00:00Z"
CRD = Path(__file__).resolve().parents[2] / "crds" / "platformconnections.switchboard.dev.yaml"

OPEN = CircuitState(
    state=Circuit.OPEN,
    consecutive_failures=10,
    opens=1,
    opened_at=NOW,
    next_probe_time=NOW + timedelta(seconds=300),
    cooldown_seconds=300,
)
HALF_OPEN = CircuitState(
    state=Circuit.HALF_OPEN, consecutive_failures=10, opens=1, cooldown_seconds=600
)

CONNECTED = ReadyInputs(gateway_state="connected", gateway_pod="tg-7d9f-abcde")
RETRYING = ReadyInputs(
    gateway_state="retrying",
    attempts="3/10",
    error_code="telegram_network_error",
    error_message="Bad Gateway",
    retryable=True,
)
GAVE_UP = replace(RETRYING, gateway_state="fatal", attempts="10/10")
BAD_TOKEN = ReadyInputs(
    gateway_state="fatal",
    error_code="telegram_invalid_token",
    error_message="Unauthorized",
    retryable=False,
)


@pytest.mark.parametrize(
    ("inputs", "status", "reason", "in_message"),
    [
        (ReadyInputs(), "False", Reason.CONNECTING, "first status report"),
        (ReadyInputs(gateway_state="connecting"), "False", Reason.CONNECTING, "connecting"),
        (CONNECTED, "True", Reason.CONNECTED, "tg-7d9f-abcde"),
        (RETRYING, "False", Reason.RETRYING, "attempt 3/10"),
        (RETRYING, "False", Reason.RETRYING, "telegram_network_error: Bad Gateway"),
        (GAVE_UP, "False", Reason.RESTART_SCHEDULED, "restart pending"),
        (
            replace(GAVE_UP, next_restart_time=NOW + timedelta(seconds=60)),
            "False",
            Reason.RESTART_SCHEDULED,
            "restart scheduled at 2026-01-01T12:01:00Z",
        ),
        (  # fatal without lastError: treated as retryable
            ReadyInputs(gateway_state="fatal"),
            "False",
            Reason.RESTART_SCHEDULED,
            "Gateway gave up",
        ),
        (BAD_TOKEN, "False", Reason.CREDENTIALS_INVALID, "telegram_invalid_token"),
        (BAD_TOKEN, "False", Reason.CREDENTIALS_INVALID, "not restarted automatically"),
        (
            replace(BAD_TOKEN, error_code="telegram_polling_conflict"),
            "False",
            Reason.POLLING_CONFLICT,
            "telegram_polling_conflict",
        ),
        (replace(BAD_TOKEN, error_code="qqbot_banned"), "False", Reason.BANNED, "qqbot_banned"),
        (replace(BAD_TOKEN, error_code="qqbot_delisted"), "False", Reason.BANNED, "delisted"),
        (
            replace(BAD_TOKEN, error_code="qqbot_invalid_credentials"),
            "False",
            Reason.CREDENTIALS_INVALID,
            "qqbot_invalid_credentials",
        ),
        (
            replace(BAD_TOKEN, error_code="gateway_config_invalid"),
            "False",
            Reason.CONFIGURATION_INVALID,
            "gateway_config_invalid",
        ),
        (replace(BAD_TOKEN, error_code="something_new"), "False", Reason.FAILED, "something_new"),
        (replace(BAD_TOKEN, error_code=None), "False", Reason.FAILED, "non-retryable error"),
        (ReadyInputs(gateway_state="disconnected"), "False", Reason.DISCONNECTED, "disconnected"),
        (ReadyInputs(gateway_state="paused"), "Unknown", Reason.UNKNOWN_STATE, "'paused'"),
        (replace(RETRYING, suspended=True), "True", Reason.SUSPENDED, "scaled to 0"),
        (
            replace(RETRYING, secret_missing="Secret tg-token not found"),
            "False",
            Reason.SECRET_MISSING,
            "Secret tg-token not found",
        ),
        (
            replace(GAVE_UP, circuit=OPEN),
            "False",
            Reason.CIRCUIT_OPEN,
            "until 2026-01-01T12:05:00Z",
        ),
        (replace(GAVE_UP, circuit=OPEN), "False", Reason.CIRCUIT_OPEN, "10 consecutive"),
        (replace(RETRYING, circuit=HALF_OPEN), "False", Reason.CIRCUIT_HALF_OPEN, "600s cooldown"),
        (replace(RETRYING, circuit=HALF_OPEN), "False", Reason.CIRCUIT_HALF_OPEN, "attempt 3/10"),
        (replace(RETRYING, rollout_in_progress=True), "False", Reason.PROGRESSING, "Rolling out"),
    ],
)
def test_ready_condition_table(inputs, status, reason, in_message):
    value = ready_condition(inputs)
    assert (value.status, value.reason) == (status, reason)
    assert in_message in value.message


@pytest.mark.parametrize(
    ("inputs", "reason"),
    [
        # Suspended beats everything.
        (
            replace(
                BAD_TOKEN,
                suspended=True,
                secret_missing="x",
                circuit=OPEN,
                rollout_in_progress=True,
            ),
            Reason.SUSPENDED,
        ),
        # A missing Secret beats the circuit and the rollout.
        (
            replace(BAD_TOKEN, secret_missing="x", circuit=OPEN, rollout_in_progress=True),
            Reason.SECRET_MISSING,
        ),
        # An open circuit beats a rollout (scaling to 0 is itself a rollout) and stale reports.
        (replace(CONNECTED, circuit=OPEN, rollout_in_progress=True), Reason.CIRCUIT_OPEN),
        # During a rollout the report may come from the old pod.
        (replace(BAD_TOKEN, rollout_in_progress=True), Reason.PROGRESSING),
        (replace(CONNECTED, rollout_in_progress=True), Reason.PROGRESSING),
        # A non-retryable error needs a person even while probing.
        (replace(BAD_TOKEN, circuit=HALF_OPEN), Reason.CREDENTIALS_INVALID),
        # A probe that connected is connected (callers close the circuit first anyway).
        (replace(CONNECTED, circuit=HALF_OPEN), Reason.CONNECTED),
        (replace(GAVE_UP, circuit=HALF_OPEN), Reason.CIRCUIT_HALF_OPEN),
        (ReadyInputs(circuit=HALF_OPEN), Reason.CIRCUIT_HALF_OPEN),
    ],
)
def test_ready_condition_priorities(inputs, reason):
    assert ready_condition(inputs).reason == reason


def test_only_connected_is_ready():
    for state in (None, *GATEWAY_STATES, "weird"):
        for retryable in (None, True, False):
            value = ready_condition(ReadyInputs(gateway_state=state, retryable=retryable))
            assert (value.status == "True") == (state == "connected"), (state, retryable)


def test_messages_without_error_details_have_no_dangling_text():
    value = ready_condition(ReadyInputs(gateway_state="retrying", attempts="1/10"))
    assert value.message == "Gateway is reconnecting, attempt 1/10."
    value = ready_condition(ReadyInputs(gateway_state="retrying", error_message="timed out"))
    assert value.message == "Gateway is reconnecting. Last error: timed out"


def test_from_resource_reads_spec_and_status():
    status = {
        "state": "fatal",
        "attempts": "10/10",
        "lastError": {"code": "telegram_network_error", "message": "boom", "retryable": True},
        "gatewayPod": "p",
        "nextRestartTime": "2026-01-01T12:01:00Z",
        "consecutiveFailures": 3,
        "circuit": {"state": "closed", "opens": 1, "cooldownSeconds": 0},
    }
    inputs = ReadyInputs.from_resource(
        {"suspend": False}, status, secret_missing=None, rollout_in_progress=False
    )
    assert inputs == ReadyInputs(
        gateway_state="fatal",
        attempts="10/10",
        error_code="telegram_network_error",
        error_message="boom",
        retryable=True,
        gateway_pod="p",
        next_restart_time=NOW + timedelta(seconds=60),
        circuit=CircuitState(consecutive_failures=3, opens=1),
    )
    override = ReadyInputs.from_resource({"suspend": True}, status, circuit=OPEN)
    assert (override.suspended, override.circuit) == (True, OPEN)
    assert ReadyInputs.from_resource({}, None) == ReadyInputs()


# --- make_condition / upsert_condition ----------------------------------------------------

DOWN = ConditionValue("False", Reason.RETRYING, "Gateway is reconnecting, attempt 2/10.")
DOWN_OTHER_REASON = ConditionValue("False", Reason.RESTART_SCHEDULED, "restart pending")
UP = ConditionValue("True", Reason.CONNECTED, "Gateway is connected.")


def existing(status, type_=READY):
    return [
        {
            "type": "Other",
            "status": "True",
            "reason": "X",
            "message": "",
            "lastTransitionTime": "2020-01-01T00:00:00Z",
        },
        {
            "type": type_,
            "status": status,
            "reason": "Old",
            "message": "old",
            "lastTransitionTime": EARLIER,
            "observedGeneration": 1,
        },
    ]


@pytest.mark.parametrize(
    ("previous", "value", "expected_time"),
    [
        (None, DOWN, "2026-01-01T12:00:00Z"),
        ([], DOWN, "2026-01-01T12:00:00Z"),
        (existing("False"), DOWN, EARLIER),
        (existing("False"), DOWN_OTHER_REASON, EARLIER),  # reason change is no transition
        (existing("False"), UP, "2026-01-01T12:00:00Z"),
        (existing("True"), DOWN, "2026-01-01T12:00:00Z"),
        (existing("Unknown"), DOWN, "2026-01-01T12:00:00Z"),
        (existing("False", type_="Degraded"), DOWN, "2026-01-01T12:00:00Z"),  # other type
    ],
)
def test_make_condition_keeps_transition_time_while_status_is_unchanged(
    previous, value, expected_time
):
    condition = make_condition(previous, READY, value, generation=7, now=NOW)
    assert condition == {
        "type": "Ready",
        "status": value.status,
        "reason": str(value.reason),
        "message": value.message,
        "lastTransitionTime": expected_time,
        "observedGeneration": 7,
    }


def test_make_condition_reason_is_a_plain_string():
    condition = make_condition(None, READY, UP, generation=1, now=NOW)
    assert type(condition["reason"]) is str


def test_upsert_condition_replaces_by_type_and_keeps_others():
    new = make_condition(existing("False"), READY, UP, generation=2, now=NOW)
    out = upsert_condition(existing("False"), new)
    assert [c["type"] for c in out] == ["Other", "Ready"]
    assert out[1] == new
    assert upsert_condition(None, new) == [new]


# --- rollout_in_progress ------------------------------------------------------------------


def deployment(generation=2, observed=2, desired=1, updated=1, replicas=1):
    return {
        "metadata": {"generation": generation},
        "spec": {"replicas": desired},
        "status": {
            "observedGeneration": observed,
            "updatedReplicas": updated,
            "replicas": replicas,
        },
    }


@pytest.mark.parametrize(
    ("dep", "expected"),
    [
        (None, True),
        (deployment(), False),
        (deployment(observed=1), True),  # controller has not seen the new template yet
        (deployment(updated=0, replicas=1), True),  # new pod not created yet
        (deployment(updated=1, replicas=2), True),  # old pod still there
        (deployment(desired=0, updated=0, replicas=0), False),  # scaled to 0, done
        (deployment(desired=0, updated=0, replicas=1), True),  # scaling down
        ({"metadata": {"generation": 1}, "spec": {"replicas": 1}}, True),  # no status yet
    ],
)
def test_rollout_in_progress(dep, expected):
    assert rollout_in_progress(dep) is expected


@pytest.mark.parametrize(
    ("dep", "completed", "expected"),
    [
        (deployment(updated=0, replicas=0), 2, False),  # a pod of a rolled-out template replaced
        (deployment(updated=0, replicas=0), 1, True),  # generation 2 never seen complete
        (deployment(observed=1, updated=0, replicas=0), 1, True),
        (deployment(updated=1, replicas=2), 2, True),  # a pod of an old template remains
        (deployment(), 2, False),
    ],
)
def test_rollout_in_progress_after_completion(dep, completed, expected):
    assert rollout_in_progress(dep, completed) is expected


# --- needs_attention ----------------------------------------------------------------------

HOUR = timedelta(hours=1)


@pytest.mark.parametrize(
    ("circuit_open", "retrying_since", "permanent", "expected"),
    [
        (False, None, False, False),
        (False, NOW, False, False),
        (False, NOW - HOUR, False, False),
        (False, NOW - 2 * HOUR + timedelta(seconds=1), False, False),
        (False, NOW - 2 * HOUR, False, True),
        (False, NOW - 30 * HOUR, False, True),
        (True, None, False, True),
        (True, NOW, False, True),
        (False, None, True, True),
    ],
)
def test_needs_attention(circuit_open, retrying_since, permanent, expected):
    got = needs_attention(circuit_open, retrying_since, NOW, 7200, permanent_failure=permanent)
    assert got is expected


def test_needs_attention_rejects_naive_datetimes():
    with pytest.raises(ValueError):
        needs_attention(False, datetime(2026, 1, 1), NOW, 7200)
    with pytest.raises(ValueError):
        needs_attention(False, None, datetime(2026, 1, 1), 7200)


# --- agreement with the CRD ---------------------------------------------------------------


def _status_schema():
    crd = yaml.safe_load(CRD.read_text())
    return crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["status"]


def test_reasons_are_valid_condition_reasons():
    item = _status_schema()["properties"]["conditions"]["items"]["properties"]
    pattern = re.compile(item["reason"]["pattern"])
    for reason in Reason:
        assert pattern.fullmatch(reason), reason
        assert len(reason) <= item["reason"]["maxLength"]
    assert set(NON_RETRYABLE_REASONS.values()) <= set(Reason)
    assert set(item["status"]["enum"]) == {"True", "False", "Unknown"}


def test_gateway_states_match_the_crd_enum():
    assert list(GATEWAY_STATES) == _status_schema()["properties"]["state"]["enum"]


def test_every_error_code_the_gateway_can_write_has_a_ready_reason():
    assert set(NON_RETRYABLE_REASONS) == set(ErrorCode)
    for code in ErrorCode:
        inputs = replace(BAD_TOKEN, error_code=str(code))
        assert ready_condition(inputs).reason is NON_RETRYABLE_REASONS[code]


def test_the_contract_names_exactly_the_crds_status_fields():
    assert set(Field) == set(_status_schema()["properties"])
    assert set(GATEWAY_FIELDS) | set(OPERATOR_FIELDS) == set(Field)
    assert not set(GATEWAY_FIELDS) & set(OPERATOR_FIELDS)


@pytest.mark.parametrize(("status", "reason", "reconciling", "stalled"), [
    ("True", Reason.CONNECTED, "False", "False"),
    ("False", Reason.RETRYING, "True", "False"),
    ("False", Reason.PROGRESSING, "True", "False"),
    ("False", Reason.CIRCUIT_OPEN, "False", "True"),
    ("False", Reason.CREDENTIALS_INVALID, "False", "True"),
    ("False", Reason.SECRET_MISSING, "False", "True"),
    ("True", Reason.SUSPENDED, "False", "False"),
    ("Unknown", Reason.UNKNOWN_STATE, "True", "False"),
])
def test_kstatus_conditions_follow_ready(status: str, reason: Reason, reconciling: str,
                                         stalled: str) -> None:
    from switchboard_operator.conditions import (
        RECONCILING,
        STALLED,
        ConditionValue,
        kstatus_conditions,
    )

    got = kstatus_conditions(ConditionValue(status, reason, "why"))  # type: ignore[arg-type]
    assert got[RECONCILING].status == reconciling
    assert got[STALLED].status == stalled
    assert (got[STALLED].message == "why") == (stalled == "True")


def test_quoted_error_text_is_bounded_and_printable() -> None:
    hostile = "boom\r\n\x1b[31mFORGED\x00" + "A" * 5000
    inputs = ReadyInputs.from_resource({}, {"state": "retrying", "attempts": "1/3",
                                            "lastError": {"code": "x", "message": hostile}})
    message = ready_condition(inputs).message
    assert message.isprintable() and "boom" in message and "FORGED" in message
    assert len(message) < 700


def test_a_backend_that_fails_makes_ready_false_and_delivering_says_why() -> None:
    failing = replace(CONNECTED, error_code=ErrorCode.BACKEND_ERROR,
                      error_message="HTTP 503; message held, retry 2 in 2s")
    ready = ready_condition(failing)
    assert (ready.status, ready.reason) == ("False", Reason.BACKEND_UNAVAILABLE)
    assert "HTTP 503" in ready.message
    delivering = delivering_condition(failing)
    assert (delivering.status, delivering.reason) == ("False", Reason.BACKEND_UNAVAILABLE)
    assert delivering_condition(CONNECTED).status == "True"
    assert delivering_condition(RETRYING).status == "Unknown"
    assert ready_condition(CONNECTED).status == "True"


def test_a_message_that_ends_a_sentence_gets_no_second_full_stop() -> None:
    stopped = replace(BAD_TOKEN, error_message="the bot token was rejected by the server.")
    message = ready_condition(stopped).message
    assert "server. It is" in message and ".." not in message
    cut = replace(BAD_TOKEN, error_message="a long platform answer...")
    assert "answer.... It is" in ready_condition(cut).message  # an ellipsis stays one


def test_a_connected_report_is_distrusted_only_without_an_available_pod_after_the_grace() -> None:
    from switchboard_operator.conditions import unavailable_after

    since = datetime(2026, 1, 1, tzinfo=UTC)
    grace = timedelta(seconds=30)
    assert unavailable_after(0, 1, since, None, grace) == since + grace
    later = since + timedelta(hours=2)  # connected for hours, then the pod went unready
    assert unavailable_after(0, 1, since, later, grace) == later + grace
    assert unavailable_after(0, 1, later, since, grace) == later + grace  # a fresh report
    assert unavailable_after(1, 1, since, None, grace) is None  # a pod is available: trusted
    assert unavailable_after(0, 0, since, None, grace) is None  # scaled to 0 on purpose
    assert unavailable_after(0, 1, None, None, grace) is None  # no report time: nothing to judge

    base = ReadyInputs(gateway_state="connected", gateway_pod="gw-1")
    stale = ready_condition(replace(base, gateway_unavailable=True))
    assert (stale.status, stale.reason) == ("False", Reason.GATEWAY_UNAVAILABLE)
    assert "gw-1" in stale.message
    assert ready_condition(base).reason == Reason.CONNECTED
    assert delivering_condition(replace(base, gateway_unavailable=True)).status == "Unknown"


def test_pod_problems_names_the_first_container_that_does_not_start() -> None:
    from switchboard_operator.pod_problems import problem

    def pod(name: str, **status: object) -> dict[str, object]:
        return {"metadata": {"name": name}, "status": status}

    creating = pod("a", containerStatuses=[{"name": "gateway", "state": {"waiting": {
        "reason": "ContainerCreating"}}}])
    assert problem([creating]) is None
    stuck = pod("b", containerStatuses=[{"name": "gateway", "state": {"waiting": {
        "reason": "ImagePullBackOff", "message": "Back-off pulling image \"x:1\"\n"}}}])
    assert problem([creating, stuck]) == \
        'pod b: container gateway: ImagePullBackOff: Back-off pulling image "x:1" '
    looping = pod("c", containerStatuses=[{"name": "gateway", "state": {"waiting": {
        "reason": "CrashLoopBackOff"}}, "lastState": {"terminated": {"exitCode": 3,
                                                                      "reason": "Error"}}}])
    assert problem([looping]) == \
        "pod c: container gateway: CrashLoopBackOff: last exit code 3 (Error)"
    unschedulable = pod("d", conditions=[{"type": "PodScheduled", "status": "False",
                                          "reason": "Unschedulable",
                                          "message": "0/3 nodes are available"}])
    assert problem([unschedulable]) == "pod d: Unschedulable: 0/3 nodes are available"
    assert len(problem([pod("e", containerStatuses=[{"name": "g", "state": {"waiting": {
        "reason": "X", "message": "m" * 5000}}}])]) or "") <= 300
