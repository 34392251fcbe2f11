"""A real Prometheus scrapes a real operator the way the chart's ServiceMonitor tells the
Prometheus Operator to, and evaluates the chart's own alert rules.

The scrape job carries the target labels the Prometheus Operator gives a ServiceMonitor
endpoint (namespace, service, pod, container, endpoint, job: all the operator's), and
honor_labels exactly as the rendered ServiceMonitor sets it. Two connections of one name in
two namespaces must come out as two alerts naming each connection's own namespace.
"""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client
from opkit import CHART, Kit, Operator, telegram_conn

from switchboard_testkit.cluster import Cluster
from switchboard_testkit.controlplane import wait_for
from switchboard_testkit.prometheus import Prometheus

RELEASE_NS = "switchboard-system"


def chart_monitoring(cluster: Cluster) -> tuple[dict[str, Any], dict[str, Any]]:
    """The rendered ServiceMonitor's endpoint and the PrometheusRule's spec."""
    out = subprocess.run(
        [str(cluster.binaries.helm), "template", "sb", str(CHART), "--namespace", RELEASE_NS,
         "--set", "metrics.serviceMonitor.enabled=true",
         "--set", "metrics.prometheusRule.enabled=true"],
        check=True, text=True, capture_output=True).stdout
    docs = {d["kind"]: d for d in yaml.safe_load_all(out) if d}
    return docs["ServiceMonitor"]["spec"]["endpoints"][0], docs["PrometheusRule"]["spec"]


@pytest.fixture
def second_namespace(api: client.ApiClient) -> Iterator[str]:
    name = f"t-{uuid.uuid4().hex[:8]}"
    core = client.CoreV1Api(api)
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    yield name
    core.delete_namespace(name, propagation_policy="Background")


def test_prometheus_alerts_per_connection_namespace_through_the_service_monitor(
        cluster: Cluster, api: client.ApiClient, kit: Kit, second_namespace: str,
        start_operator: Callable[..., Operator], tmp_path: Path) -> None:
    other = Kit(cluster, api, second_namespace)
    for k in (kit, other):  # same name, no Secret: Ready False, SecretMissing (needs a person)
        k.create(telegram_conn("bot", secret="not-there"))
    op = start_operator("op", "--namespace", second_namespace, env=cluster.env())
    for k in (kit, other):
        k.wait_ready("bot", "False", "SecretMissing")

    endpoint, rule_spec = chart_monitoring(cluster)
    service = "sb-switchboard-metrics"
    prom = Prometheus(cluster.binaries.prometheus, tmp_path / "prometheus", {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "scrape_configs": [{
            "job_name": f"serviceMonitor/{RELEASE_NS}/sb-switchboard/0",
            "honor_labels": bool(endpoint.get("honorLabels", False)),
            "static_configs": [{
                "targets": [f"127.0.0.1:{op.metrics_port}"],
                # What the Prometheus Operator's relabelling gives an endpoint of the Service.
                "labels": {"namespace": RELEASE_NS, "service": service, "job": service,
                           "pod": "sb-switchboard-7d9f8-abcde", "container": "operator",
                           "endpoint": endpoint["port"]}}]}]},
        rules={"groups": rule_spec["groups"]})
    try:
        prom.start()

        def pending() -> list[dict[str, Any]] | None:
            found = prom.alerts("SwitchboardConnectionNeedsPerson")
            return found if len(found) >= 2 else None
        alerts = wait_for(pending, 30, "two NeedsPerson alerts", interval=0.5)
        assert isinstance(alerts, list)
        by_ns = {a["labels"]["namespace"]: a for a in alerts}
        assert set(by_ns) == {kit.ns, other.ns}, [a["labels"] for a in alerts]
        for ns, alert in by_ns.items():
            assert alert["labels"]["connection"] == "bot"
            assert alert["labels"]["reason"] == "SecretMissing"
            assert alert["annotations"]["summary"] == f"{ns}/bot needs a person: SecretMissing"
        # The operator's own series still name the operator's scrape target.
        up = prom.query(f'up{{job="{service}"}}')
        assert [s["value"][1] for s in up] == ["1"], up
    finally:
        prom.stop()

    # promtool's linter has nothing to say about what the operator exposes.
    exposition = op.metrics_text()
    lint = subprocess.run([str(cluster.binaries.promtool), "check", "metrics"],
                          input=exposition, text=True, capture_output=True, timeout=30)
    assert lint.returncode == 0 and not lint.stdout.strip(), lint.stdout + lint.stderr
