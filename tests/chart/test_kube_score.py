"""kube-score on what a user runs: the rendered chart (every optional part on) and a gateway
Deployment as the operator builds it. Every finding left has a one-line reason here; a new
finding, or a listed one that went away, fails the test."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import yaml

from switchboard_operator import children
from switchboard_operator.secrets import reference
from switchboard_testkit.binaries import REPO, Binaries

CHART = REPO / "helm" / "switchboard"

JUSTIFIED = {
    "container-resources":
        "no CPU limit on purpose: throttling delays lease renewals and reconnects; CPU and "
        "memory requests and a memory limit are set",
    "container-ephemeral-storage-request-and-limit":
        "the root filesystem is read-only; the only writable volume is a size-limited emptyDir "
        "(gateway) or none (operator)",
    "container-image-pull-policy":
        "images carry immutable version tags, so IfNotPresent (the Kubernetes default for "
        "them) is right and works without registry access; image.pullPolicy can say Always",
    "pod-networkpolicy":
        "both dial the API server and the platforms, whose addresses no chart can know; "
        "egress policy is the cluster admin's",
    "deployment-strategy":
        "one operator replica runs without leader election, so it must never overlap "
        "(Recreate); replicaCount >= 2 uses RollingUpdate",
    "deployment-replicas":
        "one replica acts at a time (the leader Lease); replicaCount: 2 adds a warm standby",
}
# What each object is expected to be flagged for (check ids of JUSTIFIED).
EXPECTED = {
    "sb-switchboard": set(JUSTIFIED),
    "bot-gateway": {"container-resources", "container-ephemeral-storage-request-and-limit",
                    "container-image-pull-policy", "pod-networkpolicy"},
}


def findings(binaries: Binaries, manifests: Path) -> dict[str, set[str]]:
    out = subprocess.run([str(binaries.kube_score), "score", str(manifests), "-o", "json"],
                         text=True, capture_output=True, timeout=60)
    assert out.stdout.strip(), out.stderr
    found: dict[str, set[str]] = {}
    for obj in json.loads(out.stdout):
        failed = {c["check"]["id"] for c in obj["checks"]
                  if not c.get("skipped") and c["grade"] < 10}
        if failed:
            found[obj["object_name"].rsplit("/", 1)[-1]] = failed
    return found


def test_kube_score_finds_nothing_without_a_reason(binaries: Binaries, tmp_path: Path) -> None:
    chart = subprocess.run(
        [str(binaries.helm), "template", "sb", str(CHART), "--namespace", "switchboard-system",
         *(f"--set={v}.enabled=true" for v in ("metrics.serviceMonitor", "metrics.podMonitor",
                                               "metrics.prometheusRule", "dashboard"))],
        check=True, text=True, capture_output=True).stdout
    body = {"apiVersion": "switchboard.dev/v1alpha1", "kind": "PlatformConnection",
            "metadata": {"name": "bot", "namespace": "team-a", "uid": "u1"},
            "spec": {"platform": "telegram", "telegram": {"tokenSecretRef": {"name": "tg"}},
                     "backend": {"echo": True}}}
    gateway = children.deployment(body, reference(body["spec"]), replicas=1, secret_hash="h")
    manifests = tmp_path / "manifests.yaml"
    manifests.write_text(chart + "\n---\n" + yaml.safe_dump(gateway))
    assert findings(binaries, manifests) == EXPECTED
