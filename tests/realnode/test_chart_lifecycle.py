"""The chart's life on the real node: upgrade rolls the operator's container, uninstall stops
it and removes what the release made, and the user's connection (and its gateway) survive."""

from __future__ import annotations

import json
import subprocess
from typing import Any

from realkit import SYSTEM, TOKEN, telegram_connection, wait_status

from switchboard_testkit import realnode
from switchboard_testkit.binaries import REPO
from switchboard_testkit.controlplane import wait_for
from switchboard_testkit.realnode import RealNodeCluster

RELEASE = "switchboard"
CRD = "customresourcedefinition/platformconnections.switchboard.dev"


def helm(real: RealNodeCluster, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(real.binaries.helm), *args], env=real.env(), text=True,
                          capture_output=True, check=True, timeout=240)


def operator_pods(real: RealNodeCluster) -> list[dict[str, Any]]:
    out = real.kubectl("-n", SYSTEM, "get", "pods", "-o", "json", "-l",
                       f"app.kubernetes.io/instance={RELEASE}").stdout
    return [p for p in json.loads(out)["items"] if not p["metadata"].get("deletionTimestamp")]


def test_upgrade_rolls_the_operator_and_uninstall_keeps_the_connection(
        real: RealNodeCluster, chart: str, ns: str, fake_telegram: Any) -> None:
    fake = fake_telegram(TOKEN)
    telegram_connection(real, ns, fake, {"echo": True})
    wait_status(real, ns, "bot", lambda s: s.get("state") == "connected", 120, "connected")
    (first,) = operator_pods(real)
    try:
        helm(real, "upgrade", RELEASE, str(REPO / "helm/switchboard"), "-n", SYSTEM,
             "--reuse-values", "--set", "logLevel=debug", "--wait", "--timeout=3m")
        second = wait_for(lambda: [p for p in operator_pods(real)
                                   if p["metadata"]["uid"] != first["metadata"]["uid"]
                                   and p["status"].get("phase") == "Running"], 90,
                          "a new operator container after helm upgrade")
        assert isinstance(second, list)
        assert "--verbose" in second[0]["spec"]["containers"][0]["args"]
        real.kubectl("-n", ns, "wait", "--for=condition=Ready", "--timeout=90s",
                     "platformconnection/bot", timeout=100)

        helm(real, "uninstall", RELEASE, "-n", SYSTEM, "--wait", "--timeout=2m")
        left = real.kubectl("get", "deployments,serviceaccounts,services,roles,rolebindings,"
                            "clusterroles,clusterrolebindings", "-A", "-l",
                            f"app.kubernetes.io/instance={RELEASE}", "-o", "name").stdout.split()
        assert left == []
        wait_for(lambda: not operator_pods(real), 60, "the operator's pod to go away")
        # The CRD and the connection stay (crds.keep); the gateway needs no operator to answer.
        real.kubectl("get", CRD)
        real.kubectl("-n", ns, "get", "platformconnection/bot")
        fake.call("inject_message", {"chat_id": 9, "text": "after uninstall"})
        sent = fake.call("wait_for_sent", {"timeout": 30, "contains": "after uninstall"})
        assert "echo: after uninstall" in json.dumps(sent)
    finally:
        # The session's other tests expect the chart as the fixture installed it.
        helm(real, "upgrade", "--install", RELEASE, str(REPO / "helm/switchboard"), "-n",
             SYSTEM, *realnode.CHART_VALUES, "--reset-values", "--wait", "--timeout=3m")
