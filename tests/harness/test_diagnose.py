"""A chart install whose operator crash-loops fails within seconds and says why, with the
pod's own last log lines (the demo used to report only a Helm timeout after minutes)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid

import pytest
from kubernetes import client

from switchboard_testkit import diagnose, localnode
from switchboard_testkit.binaries import REPO
from switchboard_testkit.cluster import Cluster


def test_a_crash_looping_operator_stops_the_wait_with_its_last_log_lines(
        cluster: Cluster, api: client.ApiClient) -> None:
    ns = f"t-{uuid.uuid4().hex[:8]}"
    release = f"crash-{ns[2:]}"
    crash = ("import sys; print('switchboard-operator: cannot bind 0.0.0.0:8080: "
             "Address already in use'); sys.exit(3)")
    cmd = [str(cluster.binaries.helm), "upgrade", "--install", release,
           str(REPO / "helm/switchboard"), "--namespace", ns, "--create-namespace",
           *localnode.CHART_VALUES, "--set", "crds.enabled=false",
           "--set-json", f"command={json.dumps([sys.executable, '-c', crash])}",
           "--wait", "--timeout", "3m"]
    started = time.monotonic()
    try:
        with pytest.raises(diagnose.PodCrashed) as failed:
            diagnose.run_watching(cmd, env=cluster.env(), core=client.CoreV1Api(api),
                                  namespaces=[ns], workdir=cluster.workdir, timeout=200)
    finally:
        subprocess.run([str(cluster.binaries.helm), "uninstall", release, "-n", ns],
                       env=cluster.env(), capture_output=True, timeout=60)
        client.CoreV1Api(api).delete_namespace(ns, propagation_policy="Background")
    elapsed = time.monotonic() - started
    text = str(failed.value)
    assert "Address already in use" in text, text
    assert "last exit code 3" in text, text
    assert elapsed < 60, f"took {elapsed:.0f}s"
