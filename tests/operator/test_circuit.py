from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import yaml

from switchboard_operator.circuit import (
    Circuit,
    CircuitPolicy,
    CircuitState,
    Event,
    ScaleTo,
    Transition,
    desired_replicas,
    format_time,
    manual_reset,
    on_connected_for,
    on_cooldown_elapsed,
    on_restart_failure,
    parse_time,
)

NOW = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)
POLICY = CircuitPolicy()  # 10 failures, reset after 600 s, cooldown 300 s, max 3600 s
CRD = Path(__file__).resolve().parents[2] / "crds" / "platformconnections.switchboard.dev.yaml"


def s(seconds: float) -> timedelta:
    return timedelta(seconds=seconds)


def opened(cooldown: int = 300, failures: int = 10, opens: int = 1) -> CircuitState:
    return CircuitState(
        state=Circuit.OPEN,
        consecutive_failures=failures,
        opens=opens,
        opened_at=NOW,
        next_probe_time=NOW + s(cooldown),
        cooldown_seconds=cooldown,
    )


def half_open(cooldown: int = 300, failures: int = 10, opens: int = 1) -> CircuitState:
    return CircuitState(
        state=Circuit.HALF_OPEN,
        consecutive_failures=failures,
        opens=opens,
        opened_at=NOW - s(cooldown),
        cooldown_seconds=cooldown,
    )


def scale_targets(t: Transition) -> list[int]:
    return [e.replicas for e in t.effects if isinstance(e, ScaleTo)]


def event_reasons(t: Transition) -> list[str]:
    return [e.reason for e in t.effects if isinstance(e, Event)]


# --- on_restart_failure -------------------------------------------------------------------


@pytest.mark.parametrize("failures_before", [0, 1, 5, 8])
def test_failure_below_threshold_only_counts(failures_before):
    before = CircuitState(consecutive_failures=failures_before, opens=2)
    t = on_restart_failure(before, POLICY, NOW)
    assert t.state == CircuitState(consecutive_failures=failures_before + 1, opens=2)
    assert t.effects == ()


@pytest.mark.parametrize(
    ("threshold", "failures_before"),
    [(10, 9), (1, 0), (3, 2), (3, 7)],  # the last: already past the threshold (policy lowered)
)
def test_failure_at_threshold_opens_with_base_cooldown(threshold, failures_before):
    policy = CircuitPolicy(failure_threshold=threshold, cooldown_seconds=120)
    before = CircuitState(consecutive_failures=failures_before, opens=4)
    t = on_restart_failure(before, policy, NOW)
    assert t.state == CircuitState(
        state=Circuit.OPEN,
        consecutive_failures=failures_before + 1,
        opens=5,
        opened_at=NOW,
        next_probe_time=NOW + s(120),
        cooldown_seconds=120,
    )
    assert scale_targets(t) == [0]
    [event] = [e for e in t.effects if isinstance(e, Event)]
    assert (event.type, event.reason) == ("Warning", "CircuitOpened")
    assert format_time(NOW + s(120)) in event.message


@pytest.mark.parametrize(
    ("cooldown_before", "max_cooldown", "expected"),
    [(300, 3600, 600), (600, 3600, 1200), (2400, 3600, 3600), (3600, 3600, 3600), (0, 3600, 600)],
)
def test_failed_probe_reopens_with_doubled_capped_cooldown(cooldown_before, max_cooldown, expected):
    policy = CircuitPolicy(max_cooldown_seconds=max_cooldown)
    t = on_restart_failure(half_open(cooldown_before, failures=12, opens=3), policy, NOW)
    assert t.state == CircuitState(
        state=Circuit.OPEN,
        consecutive_failures=13,
        opens=4,
        opened_at=NOW,
        next_probe_time=NOW + s(expected),
        cooldown_seconds=expected,
    )
    assert scale_targets(t) == [0]
    assert event_reasons(t) == ["CircuitReopened"]


def test_failure_report_while_open_is_ignored():
    before = opened()
    assert on_restart_failure(before, POLICY, NOW + s(10)) == Transition(before)


# --- on_cooldown_elapsed ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("offset", "goes_half_open"),
    [(-1, False), (299, False), (299.999, False), (300, True), (301, True), (86400, True)],
)
def test_cooldown_elapsed_goes_half_open_at_next_probe_time(offset, goes_half_open):
    before = opened(cooldown=300)
    t = on_cooldown_elapsed(before, NOW + s(offset))
    if goes_half_open:
        assert t.state.state is Circuit.HALF_OPEN
        assert t.state.next_probe_time is None
        assert (t.state.opened_at, t.state.cooldown_seconds) == (NOW, 300)
        assert t.state.consecutive_failures == before.consecutive_failures
        assert scale_targets(t) == [1]
        assert event_reasons(t) == ["CircuitHalfOpen"]
    else:
        assert t == Transition(before)


@pytest.mark.parametrize("before", [CircuitState(), half_open()])
def test_cooldown_elapsed_does_nothing_unless_open(before):
    assert on_cooldown_elapsed(before, NOW + s(10**6)) == Transition(before)


def test_open_without_probe_time_is_treated_as_due():
    before = CircuitState(state=Circuit.OPEN, consecutive_failures=10, opens=1)
    assert on_cooldown_elapsed(before, NOW).state.state is Circuit.HALF_OPEN


# --- on_connected_for ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("before", "connected_for", "expected_state", "expected_failures", "expected_events"),
    [
        (half_open(), s(0), Circuit.CLOSED, 0, ["CircuitClosed"]),
        (half_open(failures=40), s(5), Circuit.CLOSED, 0, ["CircuitClosed"]),
        (CircuitState(consecutive_failures=4), s(599), Circuit.CLOSED, 4, []),
        (CircuitState(consecutive_failures=4), s(600), Circuit.CLOSED, 0, []),
        (CircuitState(consecutive_failures=4), s(7200), Circuit.CLOSED, 0, []),
        (CircuitState(), s(7200), Circuit.CLOSED, 0, []),
        (opened(), s(7200), Circuit.OPEN, 10, []),
    ],
)
def test_connected_for(before, connected_for, expected_state, expected_failures, expected_events):
    t = on_connected_for(before, POLICY, connected_for)
    assert t.state.state is expected_state
    assert t.state.consecutive_failures == expected_failures
    assert t.state.opens == before.opens
    assert event_reasons(t) == expected_events
    assert scale_targets(t) == []  # a connected gateway already runs


def test_closing_clears_the_open_period():
    t = on_connected_for(half_open(cooldown=1200, opens=3), POLICY, s(1))
    assert t.state == CircuitState(state=Circuit.CLOSED, opens=3)


def test_connected_for_is_idempotent():
    first = on_connected_for(half_open(), POLICY, s(1)).state
    again = on_connected_for(first, POLICY, s(10_000))
    assert again == Transition(first)


# --- manual_reset -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("before", "expected_scale", "expected_events"),
    [
        (opened(opens=2), [1], ["CircuitReset"]),
        (half_open(opens=2), [], ["CircuitReset"]),
        (CircuitState(consecutive_failures=3, opens=2), [], ["CircuitReset"]),
        (CircuitState(opens=2), [], []),
    ],
)
def test_manual_reset(before, expected_scale, expected_events):
    t = manual_reset(before)
    assert t.state == CircuitState(state=Circuit.CLOSED, opens=2)
    assert scale_targets(t) == expected_scale
    assert event_reasons(t) == expected_events


# --- replicas -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("state", "suspended", "replicas"),
    [
        (CircuitState(), False, 1),
        (CircuitState(), True, 0),
        (opened(), False, 0),
        (opened(), True, 0),
        (half_open(), False, 1),
        (half_open(), True, 0),
    ],
)
def test_desired_replicas(state, suspended, replicas):
    assert desired_replicas(state, suspended) == replicas


def test_scale_effects_agree_with_desired_replicas():
    transitions = [
        on_restart_failure(CircuitState(consecutive_failures=9), POLICY, NOW),
        on_restart_failure(half_open(), POLICY, NOW),
        on_cooldown_elapsed(opened(), NOW + s(300)),
        on_connected_for(half_open(), POLICY, s(1)),
        manual_reset(opened()),
        manual_reset(half_open()),
    ]
    for t in transitions:
        for replicas in scale_targets(t):
            assert desired_replicas(t.state) == replicas, t


# --- a whole story ------------------------------------------------------------------------


def test_flaky_network_story_recovers_without_a_person():
    state, now = CircuitState(), NOW
    for _ in range(9):
        state = on_restart_failure(state, POLICY, now).state
        assert state.state is Circuit.CLOSED
    t = on_restart_failure(state, POLICY, now)
    state = t.state
    assert (state.state, state.cooldown_seconds, state.opens) == (Circuit.OPEN, 300, 1)

    cooldowns = []
    for _ in range(6):  # probes keep failing: 600, 1200, 2400, 3600, 3600, 3600
        now = state.next_probe_time
        state = on_cooldown_elapsed(state, now).state
        assert state.state is Circuit.HALF_OPEN
        state = on_restart_failure(state, POLICY, now + s(420)).state
        cooldowns.append(state.cooldown_seconds)
    assert cooldowns == [600, 1200, 2400, 3600, 3600, 3600]
    assert state.opens == 7

    state = on_cooldown_elapsed(state, state.next_probe_time).state
    state = on_connected_for(state, POLICY, s(3)).state  # the network is back
    assert state == CircuitState(state=Circuit.CLOSED, opens=7)

    for _ in range(10):  # a later bad spell starts again from the base cooldown
        state = on_restart_failure(state, POLICY, now).state
    assert (state.state, state.cooldown_seconds) == (Circuit.OPEN, 300)


# --- status round trip and the CRD --------------------------------------------------------


@pytest.mark.parametrize("state", [CircuitState(), opened(opens=3), half_open(cooldown=1200)])
def test_status_round_trip(state):
    status = {"consecutiveFailures": state.consecutive_failures, "circuit": state.to_status()}
    assert CircuitState.from_status(status) == state


def test_to_status_shape():
    assert opened(cooldown=600, opens=2).to_status() == {
        "state": "open",
        "opens": 2,
        "cooldownSeconds": 600,
        "openedAt": "2026-01-01T12:00:00Z",
        "nextProbeTime": "2026-01-01T12:10:00Z",
    }
    assert CircuitState().to_status() == {"state": "closed", "opens": 0, "cooldownSeconds": 0}


def test_from_empty_status_is_closed():
    assert CircuitState.from_status(None) == CircuitState()
    assert CircuitState.from_status({}) == CircuitState()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-01-01T12:00:00Z", NOW),
        ("2026-01-01T20:00:00+08:00", NOW),
        (None, None),
        ("", None),
    ],
)
def test_parse_time(text, expected):
    assert parse_time(text) == expected


def test_parse_time_rejects_missing_zone():
    with pytest.raises(ValueError):
        parse_time("2026-01-01T12:00:00")


def test_naive_now_is_rejected():
    with pytest.raises(ValueError):
        on_restart_failure(CircuitState(), POLICY, datetime(2026, 1, 1))
    with pytest.raises(ValueError):
        on_cooldown_elapsed(opened(), datetime(2026, 1, 1))


def _crd_spec_and_status():
    crd = yaml.safe_load(CRD.read_text())
    props = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]
    return props["spec"]["properties"], props["status"]["properties"]


def test_policy_defaults_match_the_crd():
    spec, _ = _crd_spec_and_status()
    breaker = spec["circuitBreaker"]["properties"]
    from_crd = CircuitPolicy.from_spec({k: v["default"] for k, v in breaker.items()})
    assert from_crd == CircuitPolicy()
    assert CircuitPolicy.from_spec(None) == CircuitPolicy()
    assert CircuitPolicy.from_spec({"cooldownSeconds": 60}).cooldown_seconds == 60


def test_circuit_states_match_the_crd_enum():
    _, status = _crd_spec_and_status()
    assert status["circuit"]["properties"]["state"]["enum"] == [c.value for c in Circuit]
