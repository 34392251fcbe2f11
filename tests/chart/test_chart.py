"""The Helm chart on the real control plane: lint, schema, server-side dry run, install/upgrade."""

from __future__ import annotations

import subprocess
from typing import Any

import yaml

from switchboard_testkit.binaries import REPO
from switchboard_testkit.cluster import Cluster

CHART = REPO / "helm" / "switchboard"


def helm(cluster: Cluster, *args: str, check: bool = True,
         timeout: float = 240) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(cluster.binaries.helm), *args], env=cluster.env(), text=True,
                          capture_output=True, check=check, timeout=timeout)


def rendered(cluster: Cluster, *values: str) -> list[dict[str, Any]]:
    out = helm(cluster, "template", "sb", str(CHART), "--namespace", "switchboard-system",
               *values).stdout
    return [d for d in yaml.safe_load_all(out) if d]


def test_helm_lint_is_clean(cluster: Cluster) -> None:
    result = helm(cluster, "lint", "--strict", str(CHART))
    assert "0 chart(s) failed" in result.stdout
    assert "[ERROR]" not in result.stdout and "[WARNING]" not in result.stdout


def test_values_schema_rejects_bad_values(cluster: Cluster) -> None:
    for bad in ("replicaCount=-1", "logLevel=loud", "metrics.port=80", "nonsense=1"):
        result = helm(cluster, "template", "sb", str(CHART), "--set", bad, check=False)
        assert result.returncode != 0, bad
        assert "values don't meet the specifications of the schema" in result.stderr, bad


def test_rendered_chart_passes_server_side_dry_run(cluster: Cluster) -> None:
    cluster.kubectl("create", "namespace", "switchboard-system", check=False)
    for values in ((), ("--set", "watchNamespaces={default,kube-public}", "--set",
                        "replicaCount=2")):
        docs = rendered(cluster, *values)
        kinds = {d["kind"] for d in docs}
        assert {"CustomResourceDefinition", "Deployment", "ServiceAccount", "ClusterRole",
                "Service"} <= kinds
        # The CRD is kept on uninstall; everything else belongs to the release.
        crd = next(d for d in docs if d["kind"] == "CustomResourceDefinition")
        assert crd["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
        stream = yaml.safe_dump_all(docs)
        result = cluster.kubectl("apply", "--dry-run=server", "--server-side", "-f", "-",
                                 input=stream, check=False)
        assert result.returncode == 0, result.stderr


def test_namespaced_mode_binds_only_listed_namespaces(cluster: Cluster) -> None:
    docs = rendered(cluster, "--set", "watchNamespaces={team-a,team-b}")
    bindings = [d for d in docs if d["kind"] == "RoleBinding"
                and d["roleRef"]["kind"] == "ClusterRole"]
    assert sorted(b["metadata"]["namespace"] for b in bindings) == ["team-a", "team-b"]
    # Only kopf's cluster-scoped discovery (CRDs, namespaces) is bound cluster-wide.
    cluster_bound = [d["roleRef"]["name"] for d in docs if d["kind"] == "ClusterRoleBinding"]
    assert cluster_bound == ["sb-switchboard-discovery"]
    deploy = next(d for d in docs if d["kind"] == "Deployment")
    args = deploy["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--namespace=team-a" in args and "--all-namespaces" not in args


def test_operator_pod_is_restricted(cluster: Cluster) -> None:
    deploy = next(d for d in rendered(cluster) if d["kind"] == "Deployment")
    pod = deploy["spec"]["template"]["spec"]
    ctr = pod["containers"][0]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert ctr["securityContext"]["readOnlyRootFilesystem"] is True
    assert ctr["securityContext"]["allowPrivilegeEscalation"] is False
    assert ctr["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert ctr["livenessProbe"]["httpGet"]["port"] == "health"
    assert "resources" in ctr and ctr["resources"]["limits"]["memory"]



def test_alerts_use_metrics_the_operator_exports(cluster: Cluster) -> None:
    import re

    from prometheus_client import REGISTRY

    import switchboard_operator.metrics  # noqa: F401 - registers the operator's metrics

    # Family names too: a labelled metric has no samples until its first label set.
    exported = {n for m in REGISTRY.collect() for n in (m.name, *(s.name for s in m.samples))}
    rule = next(d for d in rendered(cluster, "--set", "metrics.prometheusRule.enabled=true")
                if d["kind"] == "PrometheusRule")
    exprs = [r["expr"] for g in rule["spec"]["groups"] for r in g["rules"]]
    used = {name for e in exprs for name in re.findall(r"\bswitchboard_[a-z_]+", e)}
    assert used, exprs
    assert used <= exported, used - exported
