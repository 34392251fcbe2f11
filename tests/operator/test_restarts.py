"""Retryable fatal reports restart the gateway on the back-off schedule; the circuit breaker."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime

import pytest
from kubernetes import client
from opkit import (
    ConnWatch,
    Kit,
    Operator,
    PodWatch,
    early_in_a_second,
    parse_time,
    secret,
    telegram_conn,
)

from switchboard_testkit.controlplane import wait_for


@pytest.fixture
def pods(kit: Kit) -> Iterator[PodWatch]:
    w = PodWatch(kit.api, kit.ns)
    yield w
    w.stop()


@pytest.fixture
def conns(kit: Kit) -> Iterator[ConnWatch]:
    w = ConnWatch(kit.api, kit.ns)
    yield w
    w.stop()


def _fail_and_measure(kit: Kit, gw: client.ApiClient, pods: PodWatch, conns: ConnWatch,
                      name: str, pod: str) -> tuple[float, float]:
    """Report a retryable fatal from ``pod``; return (back-off seconds, lateness seconds)."""
    early_in_a_second()
    written = kit.fatal(gw, name, pod)
    since = written["status"]["stateSince"]
    status = conns.scheduled(name, since)
    due = parse_time(status["nextRestartTime"]).timestamp()
    deleted_at = pods.wait_deleted(pod, 30)
    return due - parse_time(since).timestamp(), deleted_at - due


def _connection(kit: Kit, name: str, initial: int, maximum: int) -> tuple[client.ApiClient, str]:
    """A Telegram connection with that restart back-off: the gateway's API client, its pod."""
    kit.core.create_namespaced_secret(kit.ns, secret("tg"))
    kit.create(telegram_conn(name, restartPolicy={"initialDelaySeconds": initial,
                                                  "maxDelaySeconds": maximum}))
    wait_for(lambda: kit.deployment(name), 30, "Deployment")
    return kit.gateway_client(name), kit.one_pod(name).metadata.name


def test_retryable_fatal_restarts_on_schedule_with_growing_backoff(
        kit: Kit, operator: Operator, pods: PodWatch, conns: ConnWatch) -> None:
    kit.core.create_namespaced_secret(kit.ns, secret("tg"))
    kit.create(telegram_conn("flaky"))
    gw = kit.gateway_client(wait_for(lambda: kit.deployment("flaky"), 30, "Deployment")
                            .spec.template.spec.service_account_name.removesuffix("-gateway"))
    kit.wait_ready("flaky", "False", "Connecting")  # rolled out; no report yet
    first = len(conns.history)
    seen: set[str] = set()
    backoffs = []
    for restart in range(1, 5):
        pod = kit.one_pod("flaky", exclude=seen).metadata.name
        seen.add(pod)
        backoff, late = _fail_and_measure(kit, gw, pods, conns, "flaky", pod)
        backoffs.append(backoff)
        # Deleted at the due time, within a second (and not before it).
        assert -0.05 <= late <= 1.0, f"restart {restart}: {late:.3f}s after the due time"
        status = wait_for(lambda r=restart: (s := kit.status("flaky")).get("restarts") == r
                          and s, 10, f"restarts={restart}")
        assert "nextRestartTime" not in status
        assert status["consecutiveFailures"] == restart
    assert backoffs == [1, 2, 4, 4]  # initialDelaySeconds 1 doubling, maxDelaySeconds 4
    events = kit.events("flaky", "GatewayRestarted", at_least=4)
    assert len(events) == 4 and all(e.type == "Normal" for e in events)
    assert "telegram_network_error" in events[0].message
    # A replacement pod runs (has a new name) after every restart.
    assert kit.one_pod("flaky", exclude=seen).metadata.name not in seen
    assert operator.metric("switchboard_restarts_total") == 4
    # A restart replaces a pod of the same template: Ready never calls it a rollout.
    reasons = [c["reason"] for n, s in conns.history[first:] if n == "flaky"
               for c in s.get("conditions") or [] if c["type"] == "Ready"]
    assert "RestartScheduled" in reasons and "Progressing" not in reasons, reasons


def test_restart_finds_the_failed_pod_gone_and_keeps_its_replacement(
        kit: Kit, operator: Operator, pods: PodWatch, conns: ConnWatch) -> None:
    """What an operator finds when its predecessor deleted the pod and died before recording
    the restart (or someone deleted the pod by hand): the fresh replacement is not restarted."""
    gw, pod = _connection(kit, "gone", 3, 6)
    written = kit.fatal(gw, "gone", pod)
    conns.scheduled("gone", written["status"]["stateSince"])
    kit.core.delete_namespaced_pod(pod, kit.ns, grace_period_seconds=0)
    replacement = kit.one_pod("gone", exclude={pod}).metadata.name

    status = wait_for(lambda: (s := kit.status("gone")).get("restarts") == 1 and s, 15,
                      "the restart recorded")
    assert status["consecutiveFailures"] == 1 and "nextRestartTime" not in status
    (event,) = kit.events("gone", "GatewayRestarted")
    assert "already replaced" in event.message
    assert replacement not in pods.deleted
    assert kit.one_pod("gone").metadata.name == replacement


def test_a_report_naming_another_connections_pod_deletes_nothing(
        kit: Kit, operator: Operator) -> None:
    """gatewayPod is written by the gateway: it must not let one gateway have another
    connection's pod deleted."""
    gw, pod = _connection(kit, "mine", 1, 2)
    kit.create(telegram_conn("theirs"))
    theirs = kit.one_pod("theirs").metadata.name
    kit.fatal(gw, "mine", theirs)
    wait_for(lambda: kit.status("mine").get("restarts") == 1, 15, "the restart handled")
    # Both pods still run (kit.pods leaves out terminating ones).
    assert [p.metadata.name for p in kit.pods("theirs")] == [theirs]
    assert [p.metadata.name for p in kit.pods("mine")] == [pod]


def test_circuit_opens_half_opens_reopens_and_closes(
        kit: Kit, operator: Operator, pods: PodWatch, conns: ConnWatch) -> None:
    kit.core.create_namespaced_secret(kit.ns, secret("tg"))
    kit.create(telegram_conn("cb", circuitBreaker={
        "failureThreshold": 2, "cooldownSeconds": 2, "maxCooldownSeconds": 8}))
    wait_for(lambda: kit.deployment("cb"), 30, "Deployment")
    gw = kit.gateway_client("cb")
    first = kit.one_pod("cb").metadata.name
    _fail_and_measure(kit, gw, pods, conns, "cb", first)
    second = kit.one_pod("cb", exclude={first}).metadata.name
    kit.fatal(gw, "cb", second)

    # Open: scaled to 0, Ready False CircuitOpen, needs attention, a Warning Event.
    c = kit.wait_ready("cb", "False", "CircuitOpen")
    status = kit.status("cb")
    assert status["circuit"]["state"] == "open" and status["needsAttention"] is True
    assert status["circuit"]["cooldownSeconds"] == 2 and status["circuit"]["opens"] == 1
    assert "2 consecutive failures" in c["message"] and "restarts" not in c["message"]
    assert kit.deployment("cb").spec.replicas == 0
    # kstatus (Flux) reads this as Failed; Argo CD's health check as Degraded.
    kinds = {x["type"]: x for x in status["conditions"]}
    assert kinds["Stalled"]["status"] == "True" and kinds["Stalled"]["reason"] == "CircuitOpen"
    assert kinds["Reconciling"]["status"] == "False"
    (opened,) = kit.events("cb", "CircuitOpened")
    assert opened.type == "Warning"
    # One restart happened, after the first of two failures: the Event says failures.
    assert "2 consecutive failures" in opened.message and "failed restarts" not in opened.message
    probe_at = parse_time(status["circuit"]["nextProbeTime"]).timestamp()

    # Half-open after the cooldown: one replica, a probe pod.
    wait_for(lambda: kit.deployment("cb").spec.replicas == 1, 10, "half-open: replicas 1")
    assert time.time() >= probe_at - 0.05
    # The operator scales first and writes status right after.
    wait_for(lambda: kit.status("cb")["circuit"]["state"] == "half-open", 5, "half-open")
    probe = kit.one_pod("cb", exclude={first, second}).metadata.name

    # The probe fails: reopened with the cooldown doubled.
    kit.fatal(gw, "cb", probe)
    wait_for(lambda: kit.status("cb")["circuit"].get("opens") == 2, 10, "reopen")
    status = kit.status("cb")
    assert status["circuit"]["state"] == "open" and status["circuit"]["cooldownSeconds"] == 4
    assert kit.deployment("cb").spec.replicas == 0
    assert kit.events("cb", "CircuitReopened")

    # Second probe connects: closed, failures reset, Ready.
    wait_for(lambda: kit.status("cb")["circuit"]["state"] == "half-open", 10, "half-open")
    probe2 = kit.one_pod("cb", exclude={first, second, probe}).metadata.name
    kit.report(gw, "cb", "connected", pod=probe2)
    kit.wait_ready("cb", "True", "Connected")
    status = kit.status("cb")
    assert status["circuit"]["state"] == "closed" and status["consecutiveFailures"] == 0
    assert status["needsAttention"] is False and kit.deployment("cb").spec.replicas == 1
    assert kit.events("cb", "CircuitClosed")
    assert operator.metric("switchboard_circuit_state") == 0


def test_reset_annotation_closes_an_open_circuit(kit: Kit, operator: Operator) -> None:
    kit.core.create_namespaced_secret(kit.ns, secret("tg"))
    kit.create(telegram_conn("manual", circuitBreaker={
        "failureThreshold": 1, "cooldownSeconds": 3600, "maxCooldownSeconds": 3600}))
    wait_for(lambda: kit.deployment("manual"), 30, "Deployment")
    gw = kit.gateway_client("manual")
    kit.fatal(gw, "manual", kit.one_pod("manual").metadata.name)
    kit.wait_ready("manual", "False", "CircuitOpen")
    wait_for(lambda: kit.deployment("manual").spec.replicas == 0, 10, "scaled to 0")

    kit.patch("manual", {"metadata": {"annotations": {"switchboard.dev/reset-circuit": "1"}}})
    wait_for(lambda: kit.deployment("manual").spec.replicas == 1, 10, "scaled back to 1")
    status = kit.status("manual")
    assert status["circuit"]["state"] == "closed" and status["consecutiveFailures"] == 0
    assert status["circuit"]["resetRequest"] == "1"
    assert kit.events("manual", "CircuitReset")


def test_non_retryable_fatal_is_not_restarted_and_recovers_after_secret_change(
        kit: Kit, operator: Operator, pods: PodWatch) -> None:
    kit.core.create_namespaced_secret(kit.ns, secret("tg"))
    kit.create(telegram_conn("badtoken"))
    wait_for(lambda: kit.deployment("badtoken"), 30, "Deployment")
    gw = kit.gateway_client("badtoken")
    pod = kit.one_pod("badtoken").metadata.name
    kit.fatal(gw, "badtoken", pod, retryable=False, code="telegram_invalid_token")
    c = kit.wait_ready("badtoken", "False", "CredentialsInvalid")
    assert "not restarted automatically" in c["message"]
    (warning,) = kit.events("badtoken", "CredentialsInvalid")
    assert warning.type == "Warning" and warning.message == c["message"]
    status = kit.status("badtoken")
    assert status["needsAttention"] is True and "nextRestartTime" not in status
    # No restart: the pod outlives several back-off periods (initialDelaySeconds is 1).
    with pytest.raises(TimeoutError):
        pods.wait_deleted(pod, 3)
    assert kit.status("badtoken").get("restarts", 0) == 0

    # A person fixes the token: the gateway rolls by itself and Ready no longer blames it.
    kit.core.patch_namespaced_secret("tg", kit.ns, {"stringData": {"token": "456:new"}})
    pods.wait_deleted(pod, 15)
    new = kit.one_pod("badtoken", exclude={pod}).metadata.name
    c = wait_for(lambda: (r := kit.ready("badtoken"))["reason"] != "CredentialsInvalid" and r,
                 15, "Ready to drop CredentialsInvalid")
    assert c["reason"] in ("Progressing", "Connecting")
    kit.report(gw, "badtoken", "connected", pod=new)
    kit.wait_ready("badtoken", "True", "Connected")
    assert kit.status("badtoken")["needsAttention"] is False


def test_secret_rotation_rolls_the_pod_and_resets_counters(
        kit: Kit, operator: Operator, pods: PodWatch) -> None:
    kit.core.create_namespaced_secret(kit.ns, secret("tg"))
    kit.create(telegram_conn("rotate", restartPolicy={"initialDelaySeconds": 30,
                                                      "maxDelaySeconds": 300}))
    dep = wait_for(lambda: kit.deployment("rotate"), 30, "Deployment")
    old_hash = dep.spec.template.metadata.annotations["switchboard.dev/secret-hash"]
    gw = kit.gateway_client("rotate")
    pod = kit.one_pod("rotate").metadata.name
    kit.fatal(gw, "rotate", pod)
    wait_for(lambda: kit.status("rotate").get("consecutiveFailures") == 1, 10, "failure 1")
    assert kit.status("rotate")["nextRestartTime"]

    kit.core.replace_namespaced_secret("tg", kit.ns, secret("tg", token="789:rotated"))
    pods.wait_deleted(pod, 15)  # rolled (long before the 30 s back-off)
    dep = kit.deployment("rotate")
    assert dep.spec.template.metadata.annotations["switchboard.dev/secret-hash"] != old_hash
    status = wait_for(lambda: (s := kit.status("rotate")).get("consecutiveFailures") == 0
                      and s, 10, "counters reset")
    assert "nextRestartTime" not in status and status["circuit"]["state"] == "closed"
    assert kit.events("rotate", "FailuresReset")
    kit.one_pod("rotate", exclude={pod})


def test_missing_secret_is_a_condition_and_heals(kit: Kit, operator: Operator) -> None:
    kit.create(telegram_conn("nosecret", secret="later"))
    c = kit.wait_ready("nosecret", "False", "SecretMissing")
    assert "later" in c["message"]
    (warning,) = kit.events("nosecret", "SecretMissing")
    assert warning.type == "Warning" and "later" in warning.message
    assert kit.deployment("nosecret").spec.replicas == 0
    assert kit.status("nosecret")["needsAttention"] is True
    kit.core.create_namespaced_secret(kit.ns, secret("later"))
    wait_for(lambda: kit.deployment("nosecret").spec.replicas == 1, 15, "scaled to 1")
    c = wait_for(lambda: (r := kit.ready("nosecret"))["reason"] != "SecretMissing" and r, 15,
                 "SecretMissing to clear")
    assert c["reason"] in ("Progressing", "Connecting")
    kit.one_pod("nosecret")


def test_suspend_scales_to_zero(kit: Kit, operator: Operator) -> None:
    kit.core.create_namespaced_secret(kit.ns, secret("tg"))
    kit.create(telegram_conn("sleepy"))
    wait_for(lambda: kit.deployment("sleepy").spec.replicas == 1, 30, "replicas 1")
    kit.patch("sleepy", {"spec": {"suspend": True}})
    kit.wait_ready("sleepy", "True", "Suspended")
    assert kit.deployment("sleepy").spec.replicas == 0
    st = kit.status("sleepy")
    assert st["observedGeneration"] == kit.get("sleepy")["metadata"]["generation"]


def test_operator_killed_mid_backoff_resumes_the_same_schedule(
        kit: Kit, start_operator: Callable[..., Operator], pods: PodWatch,
        conns: ConnWatch) -> None:
    first = start_operator("first", "--standalone")
    gw, pod = _connection(kit, "resume", 8, 60)
    written = kit.fatal(gw, "resume", pod)
    status = conns.scheduled("resume", written["status"]["stateSince"])
    due = status["nextRestartTime"]
    first.kill()  # SIGKILL: no clean shutdown, nothing in memory survives

    start_operator("second", "--standalone")
    deleted_at = pods.wait_deleted(pod, 30)
    late = deleted_at - parse_time(due).timestamp()
    assert -0.05 <= late <= 1.0, f"{late:.3f}s after the original due time"
    status = wait_for(lambda: (s := kit.status("resume")).get("restarts") == 1 and s, 10,
                      "restarts=1")
    assert status["consecutiveFailures"] == 1  # the report was not counted twice
    assert status["lastRestartTime"] >= due


def _after(when: str, margin: float = 1.0) -> None:
    """Wait (on the clock) until ``margin`` seconds after the status time ``when``."""
    due = parse_time(when).timestamp() + margin
    wait_for(lambda: time.time() >= due, due - time.time() + 5, f"{when} + {margin}s",
             interval=0.05)


def test_a_replacement_reporting_after_a_failover_is_kept(
        kit: Kit, start_operator: Callable[..., Operator], pods: PodWatch,
        conns: ConnWatch) -> None:
    """The failed pod p1 is deleted while no operator runs, its replacement p2 reports
    `connecting`, then an operator starts: the restart is recorded (p1 was replaced) and p2 is
    neither deleted now nor at the old due time."""
    first = start_operator("first", "--standalone")
    gw, p1 = _connection(kit, "swap", 4, 8)
    written = kit.fatal(gw, "swap", p1)
    due = conns.scheduled("swap", written["status"]["stateSince"])["nextRestartTime"]
    first.kill()
    kit.core.delete_namespaced_pod(p1, kit.ns, grace_period_seconds=0)
    p2 = kit.one_pod("swap", exclude={p1}).metadata.name
    kit.report(gw, "swap", "connecting", pod=p2)

    start_operator("second", "--standalone")
    status = wait_for(lambda: (s := kit.status("swap")).get("restarts") == 1 and s, 15,
                      "the restart recorded")
    assert "nextRestartTime" not in status and status["consecutiveFailures"] == 1
    (event,) = kit.events("swap", "GatewayRestarted")
    assert "already replaced" in event.message
    _after(due)
    assert p2 not in pods.deleted
    assert kit.one_pod("swap").metadata.name == p2
    ready = kit.ready("swap")
    assert ready is not None and ready["reason"] == "Connecting", ready


@pytest.mark.parametrize("skew", [-90, 3600])
def test_backoff_ignores_the_gateways_clock(kit: Kit, operator: Operator, pods: PodWatch,
                                            conns: ConnWatch, skew: int) -> None:
    """A gateway whose clock is 90 s behind (or an hour ahead) gets the configured back-off,
    counted on the operator's clock from when it saw the failure."""
    gw, pod = _connection(kit, "skewed", 3, 6)
    early_in_a_second()
    since = datetime.fromtimestamp(time.time() + skew, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    reported = time.time()
    kit.report(gw, "skewed", "fatal", pod=pod, attempt=10, code="telegram_network_error",
               message="gave up", retryable=True, since=since)
    status = conns.scheduled("skewed", since)
    observed = parse_time(status["failureObservedAt"]).timestamp()
    assert abs(observed - reported) < 1.5
    due = parse_time(status["nextRestartTime"]).timestamp()
    assert due - observed == 3
    deleted_at = pods.wait_deleted(pod, 15)
    assert 2.0 <= deleted_at - reported <= 4.5, deleted_at - reported
