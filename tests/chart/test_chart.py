"""The Helm chart on the real control plane: lint, schema, server-side dry run, install/upgrade."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from typing import Any

import pytest
import yaml

from switchboard_testkit.binaries import REPO
from switchboard_testkit.cluster import Cluster
from switchboard_testkit.controlplane import wait_for
from switchboard_testkit.localnode import CHART_VALUES
from switchboard_testkit.net import free_port

CHART = REPO / "helm" / "switchboard"
TOKEN = "4242:chart-test-token"


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


@pytest.mark.parametrize("replicas", ["1", "3"])
def test_the_operator_elects_a_leader_at_every_replica_count(cluster: Cluster,
                                                              replicas: str) -> None:
    deploy = next(d for d in rendered(cluster, "--set", f"replicaCount={replicas}")
                  if d["kind"] == "Deployment")
    args = deploy["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--peering" in args and "--standalone" not in args, args


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



def test_alerts_use_metrics_the_operator_and_gateway_export(cluster: Cluster) -> None:
    import re

    from prometheus_client import REGISTRY

    import switchboard_operator.metrics  # noqa: F401 - registers the operator's metrics
    from switchboard_gateway import metrics as gateway

    gateway.initialise("telegram")  # the gateway's, as the PodMonitor scrapes them

    # Family names too: a labelled metric has no samples until its first label set.
    exported = {n for m in REGISTRY.collect() for n in (m.name, *(s.name for s in m.samples))}
    rule = next(d for d in rendered(cluster, "--set", "metrics.prometheusRule.enabled=true")
                if d["kind"] == "PrometheusRule")
    exprs = [r["expr"] for g in rule["spec"]["groups"] for r in g["rules"]]
    used = {name for e in exprs for name in re.findall(r"\bswitchboard_[a-z_]+", e)}
    assert used, exprs
    assert used <= exported, used - exported


def test_pod_monitor_selects_the_gateway_pods_and_labels_their_connection(
        cluster: Cluster) -> None:
    from switchboard_operator import children

    cases: list[tuple[tuple[str, ...], dict[str, Any]]] = [
        ((), {"any": True}),
        (("--set", "watchNamespaces={team-a}"), {"matchNames": ["team-a"]})]
    for values, namespaces in cases:
        monitor = next(d for d in rendered(cluster, "--set", "metrics.podMonitor.enabled=true",
                                           *values) if d["kind"] == "PodMonitor")
        spec = monitor["spec"]
        assert spec["namespaceSelector"] == namespaces
        gateway_labels = children.labels("bot")
        assert spec["selector"]["matchLabels"].items() <= gateway_labels.items()
        # ... and not the operator's own pod.
        assert spec["selector"]["matchLabels"]["app.kubernetes.io/component"] == "gateway"
        endpoint, = spec["podMetricsEndpoints"]
        assert endpoint["port"] == "metrics"
        # Prometheus' name of the pod label the operator sets, kept as `connection`.
        source = "__meta_kubernetes_pod_label_" + re.sub(r"[^a-zA-Z0-9_]", "_",
                                                         children.LABEL_CONNECTION)
        assert {"sourceLabels": [source], "targetLabel": "connection"} in endpoint["relabelings"]


def test_service_monitor_keeps_the_connections_namespace_label(cluster: Cluster) -> None:
    monitor = next(d for d in rendered(cluster, "--set", "metrics.serviceMonitor.enabled=true")
                   if d["kind"] == "ServiceMonitor")
    assert monitor["spec"]["endpoints"][0]["honorLabels"] is True


RELEASE, RELEASE_NS = "sb-life", "sb-life"
CRD = "customresourcedefinition/platformconnections.switchboard.dev"


def _adopt_existing_crd(cluster: Cluster) -> None:
    """Other tests may have applied the CRD with kubectl; let Helm adopt it, as a user would."""
    if cluster.kubectl("get", CRD, check=False).returncode != 0:
        return
    cluster.kubectl("label", "--overwrite", CRD, "app.kubernetes.io/managed-by=Helm")
    cluster.kubectl("annotate", "--overwrite", CRD, f"meta.helm.sh/release-name={RELEASE}",
                    f"meta.helm.sh/release-namespace={RELEASE_NS}")


def _operator_pods(cluster: Cluster) -> list[dict[str, Any]]:
    out = cluster.kubectl("-n", RELEASE_NS, "get", "pods", "-o", "json", "-l",
                          f"app.kubernetes.io/instance={RELEASE}").stdout
    return [p for p in json.loads(out)["items"] if not p["metadata"].get("deletionTimestamp")]


def test_install_connect_upgrade_uninstall(cluster: Cluster, namespace: str) -> None:
    _adopt_existing_crd(cluster)
    port = free_port()
    fake = subprocess.Popen([sys.executable, "-m", "switchboard_testkit.fake_telegram",
                             f"--port={port}", f"--token={TOKEN}"], env=cluster.env(),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True)
    try:
        helm(cluster, "install", RELEASE, str(CHART), "-n", RELEASE_NS, "--create-namespace",
             *CHART_VALUES, "--wait", "--timeout=3m")
        first = wait_for(lambda: [p for p in _operator_pods(cluster)
                                  if p["status"].get("phase") == "Running"], 60,
                         "the operator pod from the chart to run")[0]

        cluster.kubectl("-n", namespace, "apply", "-f", "-", input=f"""
apiVersion: v1
kind: Secret
metadata: {{name: bot, labels: {{switchboard.dev/credentials: "true"}}}}
stringData: {{token: "{TOKEN}"}}
---
apiVersion: switchboard.dev/v1alpha1
kind: PlatformConnection
metadata: {{name: chart-bot}}
spec:
  platform: telegram
  apiBaseURL: http://127.0.0.1:{port}/bot
  telegram: {{tokenSecretRef: {{name: bot}}}}
  backend: {{echo: true}}
""")
        cluster.kubectl("-n", namespace, "wait", "--for=condition=Ready", "--timeout=120s",
                        "platformconnection/chart-bot", timeout=150)

        # A changed value rolls the operator (one replica: Recreate, never two acting).
        helm(cluster, "upgrade", RELEASE, str(CHART), "-n", RELEASE_NS, "--reuse-values",
             "--set", "logLevel=debug", "--wait", "--timeout=3m")
        second = wait_for(lambda: [p for p in _operator_pods(cluster)
                                   if p["metadata"]["uid"] != first["metadata"]["uid"]
                                   and p["status"].get("phase") == "Running"], 60,
                          "a new operator pod after helm upgrade")[0]
        args = second["spec"]["containers"][0]["args"]
        assert "--verbose" in args
        cluster.kubectl("-n", namespace, "wait", "--for=condition=Ready", "--timeout=60s",
                        "platformconnection/chart-bot", timeout=90)
    finally:
        helm(cluster, "uninstall", RELEASE, "-n", RELEASE_NS, "--wait", "--timeout=2m",
             check=False)
        fake.terminate()
        fake.wait(10)

    selector = f"app.kubernetes.io/instance={RELEASE}"
    left = cluster.kubectl("get", "deployments,serviceaccounts,services,roles,rolebindings,"
                           "clusterroles,clusterrolebindings", "-A", "-l", selector,
                           "-o", "name").stdout.split()
    assert left == []
    wait_for(lambda: not _operator_pods(cluster), 60, "the operator pod to go away")
    # The CRD, and with it the user's connection, survive the uninstall (crds.keep).
    cluster.kubectl("get", CRD)
    cluster.kubectl("-n", namespace, "get", "platformconnection/chart-bot")


def test_the_readme_names_the_metrics_service_the_chart_makes(cluster: Cluster) -> None:
    """Followed literally, the README's install command and its metrics paragraph agree."""
    readme = (REPO / "README.md").read_text()
    install = re.search(r"helm upgrade --install (\S+) (\S+) -n (\S+)", readme)
    named = re.search(r"Service `([^`<>]+)` in\s+`([^`]+)`", readme)
    assert install and named, "the README's install command and metrics Service"
    release, chart, namespace = install.groups()
    out = helm(cluster, "template", release, str(REPO / chart), "--namespace", namespace).stdout
    services = {(d["metadata"]["name"], d["metadata"].get("namespace", namespace))
                for d in yaml.safe_load_all(out) if d and d["kind"] == "Service"}
    assert named.groups() in services, services
