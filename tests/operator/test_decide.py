"""The pure per-connection plan (decide.py): counted once, resumable, reset on change."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from switchboard_operator.circuit import Circuit
from switchboard_operator.decide import after_restart, decide
from switchboard_operator.restarts import Report, due_time

T0 = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)


def _body(status: dict[str, Any] | None = None, **spec: Any) -> dict[str, Any]:
    return {"metadata": {"name": "c", "namespace": "n", "generation": 1, "annotations": {}},
            "spec": {"platform": "telegram", **spec}, "status": status or {}}


def _fatal(pod: str = "p1", since: datetime = T0, retryable: bool = True) -> dict[str, Any]:
    return {"state": "fatal", "gatewayPod": pod,
            "stateSince": since.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "lastError": {"code": "telegram_network_error", "message": "x",
                          "retryable": retryable}}


def _merge(plan_status: dict[str, Any], report: dict[str, Any]) -> dict[str, Any]:
    return {**report, **plan_status}


def _persist(plan: Any) -> dict[str, Any]:
    return {**plan.schedule.to_status(), "consecutiveFailures":
            plan.circuit.consecutive_failures, "circuit": plan.circuit.to_status()}


def test_a_fatal_report_is_counted_once_and_restarts_at_the_due_time() -> None:
    body = _body(_fatal(), restartPolicy={"initialDelaySeconds": 30, "maxDelaySeconds": 300})
    plan = decide(body, blocked=None, rolled=False, now=T0)
    assert plan.circuit.consecutive_failures == 1
    assert plan.schedule.next_restart == T0 + timedelta(seconds=30)
    assert plan.restart_due is None and plan.wake == [T0 + timedelta(seconds=30)]

    # Seen again (another event, or a restarted operator): same schedule, not counted again.
    again = _body(_merge(_persist(plan), _fatal()),
                  restartPolicy={"initialDelaySeconds": 30, "maxDelaySeconds": 300})
    plan2 = decide(again, blocked=None, rolled=False, now=T0 + timedelta(seconds=10))
    assert plan2.circuit.consecutive_failures == 1
    assert plan2.schedule.next_restart == T0 + timedelta(seconds=30)

    # Due: restart now; afterwards the stale report (same pod) is superseded, not recounted.
    plan3 = decide(again, blocked=None, rolled=False, now=T0 + timedelta(seconds=30))
    assert plan3.restart_due == T0 + timedelta(seconds=30)
    done = after_restart(plan3, T0 + timedelta(seconds=30))
    stale = _body(_merge(_persist(done), _fatal()))
    plan4 = decide(stale, blocked=None, rolled=False, now=T0 + timedelta(seconds=31))
    assert plan4.circuit.consecutive_failures == 1 and plan4.superseded
    assert plan4.schedule.restarts == 1 and plan4.schedule.next_restart is None


def test_rolled_resets_counters_and_supersedes_the_old_report() -> None:
    status = {**_fatal(retryable=False), "consecutiveFailures": 5,
              "circuit": {"state": "open", "opens": 2, "cooldownSeconds": 600,
                          "nextProbeTime": "2026-01-01T13:00:00Z"}}
    plan = decide(_body(status), blocked=None, rolled=True, now=T0)
    assert plan.circuit.state is Circuit.CLOSED and plan.circuit.consecutive_failures == 0
    assert plan.circuit.opens == 2 and plan.replicas == 1 and plan.superseded
    assert [e.reason for e in plan.events] == ["FailuresReset"]


def test_non_retryable_is_never_restarted() -> None:
    plan = decide(_body(_fatal(retryable=False)), blocked=None, rolled=False, now=T0)
    assert plan.schedule.next_restart is None and plan.circuit.consecutive_failures == 0
    assert not plan.superseded


def test_circuit_opens_at_threshold_and_ignores_the_stale_report_when_half_open() -> None:
    spec = {"circuitBreaker": {"failureThreshold": 1, "cooldownSeconds": 60}}
    plan = decide(_body(_fatal(), **spec), blocked=None, rolled=False, now=T0)
    assert plan.circuit.state is Circuit.OPEN and plan.replicas == 0
    assert plan.schedule.next_restart is None
    assert plan.wake == [T0 + timedelta(seconds=60)]
    later = _body(_merge(_persist(plan), _fatal()), **spec)
    half = decide(later, blocked=None, rolled=False, now=T0 + timedelta(seconds=60))
    assert half.circuit.state is Circuit.HALF_OPEN and half.replicas == 1
    again = _body(_merge(_persist(half), _fatal()), **spec)
    still = decide(again, blocked=None, rolled=False, now=T0 + timedelta(seconds=61))
    assert still.circuit.state is Circuit.HALF_OPEN  # the old pod's report is not the probe's


def test_manual_reset_annotation_acts_once_per_value() -> None:
    spec = {"circuitBreaker": {"failureThreshold": 1, "cooldownSeconds": 3600}}
    opened = decide(_body(_fatal(), **spec), blocked=None, rolled=False, now=T0)
    body = _body(_merge(_persist(opened), _fatal()), **spec)
    body["metadata"]["annotations"]["switchboard.dev/reset-circuit"] = "a"
    plan = decide(body, blocked=None, rolled=False, now=T0)
    assert plan.circuit.state is Circuit.CLOSED and plan.reset_request == "a"
    assert plan.replicas == 1


def test_suspend_and_missing_secret_scale_to_zero_and_drop_the_schedule() -> None:
    for kwargs in ({"suspend": True}, {}):
        missing = None if kwargs else "Secret tg not found"
        plan = decide(_body(_fatal(), **kwargs), blocked=missing, rolled=False, now=T0)
        assert plan.replicas == 0 and plan.schedule.next_restart is None


def test_due_time_rounds_up_to_the_second() -> None:
    assert due_time(T0 + timedelta(milliseconds=300), 1, {"initialDelaySeconds": 2}) == \
        T0 + timedelta(seconds=3)
    assert Report.from_status(_fatal()).identity == "p1@2026-01-01T12:00:00Z"


def _connected(pod: str = "p1", since: datetime = T0) -> dict[str, Any]:
    return {"state": "connected", "gatewayPod": pod,
            "stateSince": since.strftime("%Y-%m-%dT%H:%M:%SZ")}


def test_backoff_runs_on_the_operators_clock_whatever_the_gateways_says() -> None:
    """stateSince is the gateway's clock: 90 s behind must not skip the back-off, an hour
    ahead must not delay it, and a custom image cannot steer its restarts with it."""
    policy = {"initialDelaySeconds": 30, "maxDelaySeconds": 300}
    for skew in (timedelta(seconds=-90), timedelta(hours=1), timedelta(0)):
        plan = decide(_body(_fatal(since=T0 + skew), restartPolicy=policy),
                      blocked=None, rolled=False, now=T0)
        assert plan.schedule.next_restart == T0 + timedelta(seconds=30), skew
        assert plan.schedule.failure_observed_at == T0
        assert plan.restart_due is None


def test_connected_time_for_the_circuit_reset_runs_on_the_operators_clock() -> None:
    breaker = {"resetAfterConnectedSeconds": 60}
    failing = _merge({"consecutiveFailures": 2, "circuit": {"state": "closed"}},
                     _connected(since=T0 - timedelta(hours=1)))  # a gateway an hour behind
    plan = decide(_body(failing, circuitBreaker=breaker), blocked=None, rolled=False, now=T0)
    assert plan.circuit.consecutive_failures == 2, "reset after 0 s connected"
    assert plan.schedule.connected_observed == ("p1@" + failing["stateSince"], T0)
    assert plan.wake == [T0 + timedelta(seconds=60)]
    # A minute later (on the operator's clock), the same report: the failures are forgiven.
    later = _body({**failing, **_persist(plan)}, circuitBreaker=breaker)
    plan2 = decide(later, blocked=None, rolled=False, now=T0 + timedelta(seconds=60))
    assert plan2.circuit.consecutive_failures == 0
    ahead = _merge({"consecutiveFailures": 2, "circuit": {"state": "closed"}},
                   _connected(since=T0 + timedelta(hours=1)))
    plan3 = decide(_body(ahead, circuitBreaker=breaker), blocked=None, rolled=False, now=T0)
    assert plan3.wake == [T0 + timedelta(seconds=60)]  # not an hour later


def test_a_report_from_another_pod_supersedes_the_pending_restart_of_the_failed_one() -> None:
    """p1 failed and its restart is scheduled; p1 was deleted meanwhile and p2 reports: the
    restart is done (nothing left to delete but p1), never aimed at p2."""
    body = _body(_fatal(pod="p1", since=T0), restartPolicy={"initialDelaySeconds": 30})
    plan = decide(body, blocked=None, rolled=False, now=T0)
    assert plan.schedule.failed_pod == "p1"
    p2 = {"state": "connecting", "gatewayPod": "p2", "stateSince": "2026-01-01T12:00:05Z"}
    replaced = _body(_merge(_persist(plan), p2), restartPolicy={"initialDelaySeconds": 30})
    plan2 = decide(replaced, blocked=None, rolled=False, now=T0 + timedelta(seconds=5))
    assert plan2.restart_due == T0 + timedelta(seconds=30)  # executed now, not at 30 s
    assert plan2.schedule.failed_pod == "p1"  # the only pod the restart may delete
    done = after_restart(plan2, T0 + timedelta(seconds=5))
    plan3 = decide(_body(_merge(_persist(done), p2)), blocked=None, rolled=False,
                   now=T0 + timedelta(seconds=6))
    assert plan3.restart_due is None and plan3.schedule.next_restart is None
    assert not plan3.superseded  # p2's report is current
