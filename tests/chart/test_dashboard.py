"""The chart's Grafana dashboard: a ConfigMap the sidecar picks up, valid dashboard JSON, and
queries that the real PromQL parser accepts and that use only metrics the project exports."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import yaml

from switchboard_testkit.binaries import REPO, Binaries

CHART = REPO / "helm" / "switchboard"
# Grafana's own variables, replaced by what they expand to so promtool can parse the query.
GRAFANA_VARIABLES = {"$__rate_interval": "5m", "$namespace": ".*"}


def dashboard_configmap(binaries: Binaries) -> dict[str, Any]:
    out = subprocess.run(
        [str(binaries.helm), "template", "sb", str(CHART), "--namespace", "switchboard-system",
         "--set", "dashboard.enabled=true", "--show-only", "templates/dashboard.yaml"],
        check=True, text=True, capture_output=True).stdout
    return yaml.safe_load(out)  # type: ignore[no-any-return]


def exported_metric_names() -> set[str]:
    from prometheus_client import REGISTRY

    import switchboard_operator.metrics  # noqa: F401 - registers the operator's metrics
    from switchboard_gateway import metrics as gateway

    gateway.initialise("telegram")
    return {n for m in REGISTRY.collect() for n in (m.name, *(s.name for s in m.samples))}


def queries(dashboard: dict[str, Any]) -> list[str]:
    return [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]


def test_dashboard_is_a_sidecar_configmap_of_valid_dashboard_json(binaries: Binaries) -> None:
    cm = dashboard_configmap(binaries)
    assert cm["kind"] == "ConfigMap"
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    (name, text), = cm["data"].items()
    assert name.endswith(".json")
    dashboard = json.loads(text)
    assert dashboard["uid"] and dashboard["title"] and dashboard["schemaVersion"] >= 36
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for panel in dashboard["panels"]:
        assert {"x", "y", "w", "h"} <= panel["gridPos"].keys(), panel["title"]
        assert panel["targets"], panel["title"]
        assert all(t["datasource"]["uid"] == "${datasource}" for t in panel["targets"])
    variables = {v["name"] for v in dashboard["templating"]["list"]}
    assert {"datasource", "namespace"} <= variables


def test_every_query_parses_and_uses_only_exported_metrics(binaries: Binaries,
                                                           tmp_path: Path) -> None:
    dashboard = json.loads(next(iter(dashboard_configmap(binaries)["data"].values())))
    exprs = queries(dashboard)
    used = {n for e in exprs for n in re.findall(r"\bswitchboard_[a-z_]+", e)}
    assert used <= exported_metric_names(), used - exported_metric_names()
    # What the issue asks to see: states, who is not Ready, restarts and circuit, retries,
    # messages in and out, backend latency.
    assert {"switchboard_connections", "switchboard_connection_ready",
            "switchboard_connection_restarts", "switchboard_circuit_state",
            "switchboard_gateway_reconnect_attempts_total",
            "switchboard_gateway_messages_received_total",
            "switchboard_gateway_messages_sent_total",
            "switchboard_gateway_backend_latency_seconds_bucket"} <= used
    # The real PromQL parser: each query as a recording rule, through promtool.
    def expand(expr: str) -> str:
        for variable, value in GRAFANA_VARIABLES.items():
            expr = expr.replace(variable, value)
        return expr
    rules = {"groups": [{"name": "dashboard", "rules": [
        {"record": f"dashboard:query{i}", "expr": expand(e)} for i, e in enumerate(exprs)]}]}
    path = tmp_path / "dashboard-queries.yaml"
    path.write_text(yaml.safe_dump(rules))
    result = subprocess.run([str(binaries.promtool), "check", "rules", str(path)],
                            text=True, capture_output=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
