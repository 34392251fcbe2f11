"""What a person sees with kubectl: validation messages, printer columns, kubectl wait."""

from __future__ import annotations

import json
import subprocess

import pytest
from opkit import Kit, Operator, kubectl_yaml, secret, telegram_conn

from switchboard_testkit.controlplane import wait_for


@pytest.mark.parametrize(("mutate", "message"), [
    (lambda s: s.update(platform="qqbot"),
     "spec.qqbot (with credentialsSecretRef) is required when platform is qqbot"),
    (lambda s: s.update(restartPolicy={"initialDelaySeconds": 60, "maxDelaySeconds": 10}),
     "maxDelaySeconds must be greater than or equal to initialDelaySeconds"),
    (lambda s: s.update(backend={"url": "ftp://x/relay"}),
     "backend.url must be an absolute http:// or https:// URL with a host"),
    (lambda s: s.update(backend={"echo": True, "url": "http://x/relay"}),
     "spec.backend needs exactly one of url or echo: true"),
    (lambda s: s.update(platform="irc"), 'Unsupported value: "irc"'),
    (lambda s: s.update(circuitBreaker={"failureThreshold": 0}),
     "should be greater than or equal to 1"),
])
def test_bad_connections_are_rejected_with_a_clear_message(kit: Kit, mutate, message) -> None:
    body = telegram_conn("bad")
    mutate(body["spec"])
    result = kubectl_yaml(kit.cluster, body, kit.ns)
    assert result.returncode != 0
    assert message in result.stderr, result.stderr


def test_printer_columns_and_kubectl_wait(kit: Kit, operator: Operator) -> None:
    kit.core.create_namespaced_secret(kit.ns, secret("tg"))
    kit.create(telegram_conn("shown"))
    wait_for(lambda: kit.deployment("shown"), 30, "Deployment")

    # kubectl wait blocks until a write with the gateway's own token says connected.
    waiter = subprocess.Popen(
        [str(kit.cluster.binaries.kubectl), "wait", "-n", kit.ns, "--for=condition=Ready",
         "--timeout=60s", "platformconnection/shown"],
        env=kit.cluster.env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        gw = kit.gateway_client("shown")
        pod = kit.one_pod("shown").metadata.name
        kit.report(gw, "shown", "retrying", pod=pod, attempt=3, max_attempts=10,
                   code="telegram_network_error", message="connection refused",
                   retryable=True)
        kit.wait_ready("shown", "False", "Retrying")
        assert waiter.poll() is None  # still waiting: not Ready yet

        out = kit.cluster.kubectl("get", "platformconnections", "-n", kit.ns).stdout
        header, row = out.splitlines()[:2]
        assert header.split() == ["NAME", "PLATFORM", "STATE", "ATTEMPT", "RESTARTS", "READY",
                                  "AGE"]
        assert row.split()[:6] == ["shown", "telegram", "retrying", "3/10", "0", "False"]
        wide = kit.cluster.kubectl("get", "pconn", "-n", kit.ns, "-o", "wide").stdout
        header, row = wide.splitlines()[:2]
        assert header.split()[-4:] == ["DELIVERY", "CIRCUIT", "REASON", "ERROR"]
        assert "polling" in row and "closed" in row and "Retrying" in row
        assert "connection refused" in row

        kit.report(gw, "shown", "connected", pod=pod)
        out, err = waiter.communicate(timeout=60)
        assert waiter.returncode == 0, err
        assert "condition met" in out
    finally:
        if waiter.poll() is None:
            waiter.kill()
            waiter.wait(5)
    row = kit.cluster.kubectl("get", "pconn", "shown", "-n", kit.ns).stdout.splitlines()[1]
    assert row.split()[:6] == ["shown", "telegram", "connected", "0/10", "0", "True"]


def _kstatus(kit: Kit, name: str) -> dict[str, str]:
    """What Flux's health check (kstatus, the real library: hack/kstatus) says of `name`."""
    obj = kit.get(name)
    out = subprocess.run([str(kit.cluster.binaries.kstatus)], input=json.dumps(obj) + "\n",
                         capture_output=True, text=True, timeout=30, check=True).stdout
    return json.loads(out)


def test_kstatus_current_when_connected_or_suspended_in_progress_while_retrying(
        kit: Kit, operator: Operator) -> None:
    """Flux's `wait: true` must not time out on a suspended connection (at rest as asked)."""
    kit.core.create_namespaced_secret(kit.ns, secret("tg"))
    kit.create(telegram_conn("gitops"))
    wait_for(lambda: kit.deployment("gitops"), 30, "Deployment")
    gw = kit.gateway_client("gitops")
    pod = kit.one_pod("gitops").metadata.name
    kit.report(gw, "gitops", "retrying", pod=pod, attempt=1, code="telegram_network_error",
               message="refused", retryable=True)
    kit.wait_ready("gitops", "False", "Retrying")
    assert _kstatus(kit, "gitops")["status"] == "InProgress"
    kit.report(gw, "gitops", "connected", pod=pod)
    kit.wait_ready("gitops", "True", "Connected")
    assert _kstatus(kit, "gitops")["status"] == "Current"

    kit.patch("gitops", {"spec": {"suspend": True}})
    kit.wait_ready("gitops", "True", "Suspended")
    wait_for(lambda: kit.status("gitops").get("observedGeneration")
             == kit.get("gitops")["metadata"]["generation"], 10, "observedGeneration")
    assert _kstatus(kit, "gitops") == {"status": "Current", "message": "Resource is Ready"}
