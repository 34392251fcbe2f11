"""What only a real kubelet shows: the project's image in containers, with the pods'
securityContext, memory limits, probes, Services and cluster DNS enforced by the kubelet,
containerd, runc, kube-proxy and CoreDNS (realnode.py). The local node runs pods as host
processes and can show none of it."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import urllib.request
from typing import Any

from realkit import SYSTEM, TOKEN, echo_backend, image_ref, telegram_connection, wait_status

from switchboard_testkit import netns
from switchboard_testkit.controlplane import wait_for
from switchboard_testkit.realnode import RealNodeCluster


def pods(real: RealNodeCluster, ns: str, selector: str) -> list[dict[str, Any]]:
    out = real.kubectl("-n", ns, "get", "pods", "-l", selector, "-o", "json").stdout
    return list(json.loads(out)["items"])


def operator_pod(real: RealNodeCluster) -> dict[str, Any]:
    found = pods(real, SYSTEM, "app.kubernetes.io/name=switchboard")
    assert found, "no operator pod"
    return found[0]


def test_operator_runs_in_its_container_read_only_as_65532(real: RealNodeCluster,
                                                            chart: str) -> None:
    pod = operator_pod(real)
    status = pod["status"]["containerStatuses"][0]
    assert status["ready"] and status["image"].endswith(image_ref(real).split("/", 1)[1])
    assert status["containerID"].startswith("containerd://")
    done = real.kubectl("-n", SYSTEM, "exec", pod["metadata"]["name"], "--", "sh", "-c",
                        "id -u; id -g; touch /written 2>&1; echo rc=$?; "
                        "grep -E '^(CapEff|NoNewPrivs|Seccomp):' /proc/self/status")
    lines = done.stdout.splitlines()
    assert lines[0] == "65532" and lines[1] == "65532", done.stdout
    assert "Read-only file system" in done.stdout and "rc=1" in done.stdout
    fields = dict(line.split(":\t") for line in lines if ":\t" in line)
    assert int(fields["CapEff"], 16) == 0  # every capability dropped
    assert fields["NoNewPrivs"] == "1" and fields["Seccomp"] == "2"  # RuntimeDefault filter


def test_a_container_over_its_memory_limit_is_oom_killed(real: RealNodeCluster,
                                                          ns: str) -> None:
    pod = {
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "hog", "namespace": ns},
        "spec": {"restartPolicy": "Never", "containers": [{
            "name": "hog", "image": image_ref(real), "imagePullPolicy": "IfNotPresent",
            # Written bytes (not a zeroed calloc, which touches no page).
            "command": ["python3", "-c", "b = b'x' * (256 * 2**20); print(len(b))"],
            "resources": {"limits": {"memory": "64Mi"}, "requests": {"memory": "64Mi"}},
            "securityContext": {"runAsNonRoot": True, "allowPrivilegeEscalation": False,
                                "capabilities": {"drop": ["ALL"]}}}]}}
    real.kubectl("apply", "-f", "-", input=json.dumps(pod))

    def terminated() -> dict[str, Any] | None:
        got = json.loads(real.kubectl("-n", ns, "get", "pod", "hog", "-o", "json").stdout)
        for s in got["status"].get("containerStatuses", []):
            if s["state"].get("terminated"):
                return dict(s["state"]["terminated"])
        return None

    state = wait_for(terminated, 120, "the memory hog to end")
    assert isinstance(state, dict)
    assert state["reason"] == "OOMKilled" and state["exitCode"] == 137, state


def test_operator_metrics_through_its_service_cluster_ip(real: RealNodeCluster,
                                                         chart: str) -> None:
    svc = json.loads(real.kubectl("-n", SYSTEM, "get", "service", "switchboard-metrics",
                                  "-o", "json").stdout)
    ip, port = svc["spec"]["clusterIP"], svc["spec"]["ports"][0]["port"]
    assert ip.startswith("10.96.")

    def scrape() -> str:
        with netns.enter(real.holder):  # from the node, as Prometheus on it would
            with urllib.request.urlopen(f"http://{ip}:{port}/metrics", timeout=5) as resp:
                return str(resp.read().decode())

    body = wait_for(scrape, 60, f"the operator's metrics at {ip}:{port}")
    assert isinstance(body, str) and "switchboard_connections" in body


def test_gateway_reaches_its_backend_by_service_dns_name(real: RealNodeCluster, chart: str,
                                                        ns: str, fake_telegram: Any) -> None:
    url = echo_backend(real, ns)
    fake = fake_telegram(TOKEN)
    telegram_connection(real, ns, fake, {"url": url})
    wait_status(real, ns, "bot", lambda s: s.get("state") == "connected", 120, "connected")
    fake.call("inject_message", {"chat_id": 7, "text": "through cluster DNS"})
    sent = fake.call("wait_for_sent", {"timeout": 30, "contains": "through cluster DNS"})
    assert "echo: through cluster DNS" in json.dumps(sent)


def test_the_kubelets_liveness_probe_restarts_a_frozen_gateway(real: RealNodeCluster,
                                                               chart: str, ns: str,
                                                               fake_telegram: Any) -> None:
    fake = fake_telegram(TOKEN)
    telegram_connection(real, ns, fake, {"echo": True})
    wait_status(real, ns, "bot", lambda s: s.get("state") == "connected", 120, "connected")
    pod = pods(real, ns, "switchboard.dev/connection=bot")[0]
    container_id = pod["status"]["containerStatuses"][0]["containerID"].split("//", 1)[1]
    pid = int(real._ctr("task", "ls").stdout.split(container_id, 1)[1].split()[0])
    os.kill(pid, signal.SIGSTOP)  # alive to the kernel, silent to every probe
    try:
        def restarted() -> bool:
            got = pods(real, ns, "switchboard.dev/connection=bot")
            return bool(got) and got[0]["status"]["containerStatuses"][0]["restartCount"] >= 1
        wait_for(restarted, 120, "the kubelet to restart the frozen gateway")
    finally:
        with contextlib.suppress(ProcessLookupError):  # the kubelet may have killed it
            os.kill(pid, signal.SIGCONT)
    events = real.kubectl("-n", ns, "get", "events", "-o", "json").stdout
    unhealthy = [e for e in json.loads(events)["items"] if e["reason"] == "Unhealthy"]
    assert any("Liveness probe failed" in e["message"]
               and "kubelet" in (e.get("source", {}).get("component"),
                                 e.get("reportingComponent"))
               for e in unhealthy), unhealthy
    wait_status(real, ns, "bot", lambda s: s.get("state") == "connected", 120,
                "connected again")


def test_outage_restart_and_recovery_on_the_real_node(real: RealNodeCluster, chart: str,
                                                      ns: str, fake_telegram: Any) -> None:
    """The operator's restart path with real pods: an exhausted ladder ends in fatal, the
    operator restarts the gateway, and it connects again once the platform answers."""
    fake = fake_telegram(TOKEN)
    telegram_connection(real, ns, fake, {"echo": True},
                        telegram={"reconnect": {"maxAttempts": 2, "initialDelaySeconds": 1,
                                                "maxDelaySeconds": 1}},
                        restartPolicy={"initialDelaySeconds": 1, "maxDelaySeconds": 2})
    wait_status(real, ns, "bot", lambda s: s.get("state") == "connected", 120, "connected")
    fake.call("fail_next", {"n": 100000, "status": 502, "method": None})
    wait_status(real, ns, "bot", lambda s: s.get("restarts", 0) >= 1, 180,
                "a restart by the operator")
    fake.call("clear_faults")
    status = wait_status(real, ns, "bot", lambda s: s.get("state") == "connected", 180,
                         "connected again")
    assert status["restarts"] >= 1


def test_circuit_opens_scales_the_real_pod_away_and_closes_after_recovery(
        real: RealNodeCluster, chart: str, ns: str, fake_telegram: Any) -> None:
    """The breaker with real pods: open takes the gateway pod away (the kubelet stops it),
    half-open brings a probe pod, a failed probe reopens, a connected probe closes it."""
    fake = fake_telegram(TOKEN)
    fake.call("fail_next", {"n": 100000, "status": 502, "method": None})
    telegram_connection(real, ns, fake, {"echo": True},
                        telegram={"reconnect": {"maxAttempts": 2, "initialDelaySeconds": 1,
                                                "maxDelaySeconds": 1}},
                        restartPolicy={"initialDelaySeconds": 1, "maxDelaySeconds": 1},
                        circuitBreaker={"failureThreshold": 2, "cooldownSeconds": 3,
                                        "maxCooldownSeconds": 6})
    status = wait_status(real, ns, "bot", lambda s: s.get("circuit", {}).get("state") == "open",
                         180, "the circuit open")
    assert status["needsAttention"] is True
    wait_for(lambda: not pods(real, ns, "switchboard.dev/connection=bot"), 60,
             "the gateway pod gone while the circuit is open")
    # The probe pod fails as well: reopened, cooldown doubled.
    status = wait_status(real, ns, "bot", lambda s: s["circuit"].get("opens", 0) >= 2, 120,
                         "the circuit reopened after a failed probe")
    assert status["circuit"]["cooldownSeconds"] == 6
    fake.call("clear_faults")
    status = wait_status(real, ns, "bot", lambda s: s["circuit"]["state"] == "closed"
                         and s.get("state") == "connected", 180, "closed and connected")
    assert status["consecutiveFailures"] == 0
    assert pods(real, ns, "switchboard.dev/connection=bot")


def test_kubectl_port_forward_reaches_the_operators_metrics(real: RealNodeCluster,
                                                            chart: str) -> None:
    """Through the API server, the kubelet and containerd's stream server into the pod's own
    loopback: the chart's portForward default binds the metrics port there too."""
    pod = operator_pod(real)["metadata"]["name"]
    proc = subprocess.Popen(
        [str(real.binaries.kubectl), "-n", SYSTEM, "port-forward", f"pod/{pod}", ":metrics"],
        env=real.env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()  # "Forwarding from 127.0.0.1:NNNNN -> 8080"
        assert line.startswith("Forwarding from 127.0.0.1:"), line
        local = line.split("127.0.0.1:", 1)[1].split()[0]
        with urllib.request.urlopen(f"http://127.0.0.1:{local}/metrics", timeout=10) as resp:
            assert b"switchboard_connections" in resp.read()
    finally:
        proc.terminate()
        proc.wait(timeout=10)
