from datetime import UTC, datetime, timedelta, timezone

import pytest

from switchboard_operator.backoff import restart_delay, restart_due_time, seconds_until

T0 = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("failure", "expected"),
    [(1, 30), (2, 60), (3, 120), (4, 240), (5, 300), (6, 300), (7, 300), (100, 300)],
)
def test_restart_delay_defaults_double_up_to_five_minutes(failure, expected):
    assert restart_delay(failure) == expected


@pytest.mark.parametrize(
    ("failure", "initial", "maximum", "expected"),
    [
        (1, 5, 60, 5),
        (2, 5, 60, 10),
        (3, 5, 60, 20),
        (4, 5, 60, 40),
        (5, 5, 60, 60),
        (6, 5, 60, 60),
        (1, 10, 10, 10),
        (3, 10, 10, 10),
        (3, 7, 100, 28),
        (4, 7, 50, 50),  # 56 would exceed the cap
        (1, 100, 30, 30),  # max below initial caps the first delay as well
        (10**9, 1, 86400, 86400),  # huge counts stay cheap and capped
    ],
)
def test_restart_delay_custom_policy(failure, initial, maximum, expected):
    assert restart_delay(failure, initial, maximum) == expected


@pytest.mark.parametrize(
    ("failure", "initial", "maximum"),
    [(0, 30, 300), (-1, 30, 300), (1, 0, 300), (1, 30, 0), (1, -5, 300)],
)
def test_restart_delay_rejects_nonsense(failure, initial, maximum):
    with pytest.raises(ValueError):
        restart_delay(failure, initial, maximum)


@pytest.mark.parametrize(
    ("failure", "initial", "maximum", "expected_seconds"),
    [(1, 30, 300, 30), (3, 30, 300, 120), (9, 30, 300, 300), (2, 1, 1, 1)],
)
def test_restart_due_time_is_last_failure_plus_delay(failure, initial, maximum, expected_seconds):
    due = restart_due_time(T0, failure, initial, maximum)
    assert due == T0 + timedelta(seconds=expected_seconds)
    assert due.tzinfo is not None


def test_restart_due_time_keeps_the_callers_time_zone_instant():
    plus8 = timezone(timedelta(hours=8))
    local = T0.astimezone(plus8)
    assert restart_due_time(local, 1) == T0 + timedelta(seconds=30)


def test_restart_due_time_rejects_naive_datetimes():
    with pytest.raises(ValueError):
        restart_due_time(datetime(2026, 1, 1, 12, 0, 0), 1)


@pytest.mark.parametrize(
    ("due_offset", "expected"),
    [(90, 90.0), (0.5, 0.5), (0, 0.0), (-10, 0.0)],
)
def test_seconds_until_is_never_negative(due_offset, expected):
    assert seconds_until(T0 + timedelta(seconds=due_offset), T0) == expected


def test_seconds_until_rejects_naive_datetimes():
    with pytest.raises(ValueError):
        seconds_until(datetime(2026, 1, 1), T0)
