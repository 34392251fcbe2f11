"""Restart back-off of the operator (spec.restartPolicy). Pure: no I/O, no clock reads.

Restart ``n`` (the n-th consecutive retryable fatal error) waits
``min(initial_delay * 2**(n - 1), max_delay)`` seconds after the failure was reported,
i.e. 30, 60, 120, 240, 300, 300, ... seconds with the defaults (like Hermes' reconnect watcher
and the kubelet's CrashLoopBackOff).
"""

from __future__ import annotations

from datetime import datetime, timedelta

from switchboard_contract.backoff import doubling

DEFAULT_INITIAL_DELAY_SECONDS = 30
DEFAULT_MAX_DELAY_SECONDS = 300


def restart_delay(
    failure: int,
    initial_delay: int = DEFAULT_INITIAL_DELAY_SECONDS,
    max_delay: int = DEFAULT_MAX_DELAY_SECONDS,
) -> int:
    """Seconds to wait before the restart that follows consecutive failure number ``failure``.

    ``failure`` counts from 1. The delay doubles per failure and is capped at ``max_delay``
    (a ``max_delay`` below ``initial_delay`` caps the first delay too).
    """
    if initial_delay < 1 or max_delay < 1:
        raise ValueError(f"delays must be >= 1 s, got initial={initial_delay} max={max_delay}")
    return int(doubling(initial_delay, failure, max_delay))


def restart_due_time(
    last_failure: datetime,
    failure: int,
    initial_delay: int = DEFAULT_INITIAL_DELAY_SECONDS,
    max_delay: int = DEFAULT_MAX_DELAY_SECONDS,
) -> datetime:
    """When the restart after consecutive failure number ``failure`` is due.

    ``last_failure`` is when that failure was reported; it must be timezone-aware (status
    timestamps are RFC 3339 UTC), so that comparisons with ``now`` cannot silently mix zones.
    """
    if last_failure.tzinfo is None:
        raise ValueError("last_failure must be timezone-aware")
    return last_failure + timedelta(seconds=restart_delay(failure, initial_delay, max_delay))


def seconds_until(due: datetime, now: datetime) -> float:
    """Seconds from ``now`` until ``due``; 0 when it is already due (never negative)."""
    if due.tzinfo is None or now.tzinfo is None:
        raise ValueError("due and now must be timezone-aware")
    return max(0.0, (due - now).total_seconds())
