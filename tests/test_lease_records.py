"""switchboard_contract.lease: expiry by the observer's monotonic clock, claims and releases."""

from __future__ import annotations

from datetime import UTC, datetime

from switchboard_contract import lease

WALL = datetime(2026, 12, 3, 7, 0, 0, 123456, tzinfo=UTC)


def test_expiry_runs_from_when_the_record_last_changed_not_from_its_times() -> None:
    seen = lease.LeaseObserver()
    spec = {"holderIdentity": "a", "leaseDurationSeconds": 30,
            "renewTime": "2000-01-01T00:00:00.000000Z"}  # an old wall time: not trusted
    assert seen.live_holder(spec, "b", now=100.0, default_seconds=15) == "a"
    assert seen.live_holder(spec, "b", now=129.9, default_seconds=15) == "a"
    assert seen.live_holder(spec, "b", now=130.0, default_seconds=15) is None
    renewed = {**spec, "renewTime": "2000-01-01T00:00:05.000000Z"}
    assert seen.live_holder(renewed, "b", now=131.0, default_seconds=15) == "a"  # restarts
    assert seen.live_holder(renewed, "b", now=161.0, default_seconds=15) is None


def test_own_free_and_released_leases_have_no_live_holder() -> None:
    seen = lease.LeaseObserver()
    mine = lease.claim(None, "a", 30, WALL)
    assert seen.live_holder(mine, "a", 0.0, 30) is None
    assert seen.live_holder({}, "a", 0.0, 30) is None
    assert seen.live_holder(lease.release(mine), "b", 0.0, 30) is None


def test_claims_count_transitions_and_keep_acquire_time_on_renewal() -> None:
    first = lease.claim(None, "a", 30, WALL)
    assert first == {"holderIdentity": "a", "leaseDurationSeconds": 30,
                     "acquireTime": "2026-12-03T07:00:00.123456Z",
                     "renewTime": "2026-12-03T07:00:00.123456Z", "leaseTransitions": 0}
    later = WALL.replace(second=5)
    renewed = lease.claim(first, "a", 30, later)
    assert renewed["acquireTime"] == first["acquireTime"]
    assert renewed["renewTime"] == "2026-12-03T07:00:05.123456Z"
    assert renewed["leaseTransitions"] == 0
    taken = lease.claim(lease.release(renewed), "b", 30, later)
    assert taken["holderIdentity"] == "b" and taken["leaseTransitions"] == 1
    assert taken["acquireTime"] == taken["renewTime"]
    assert lease.release(taken)["holderIdentity"] == ""
