"""Operator memory against unrelated Secrets, on the real control plane.

    .venv/bin/python bench/secret_memory.py [--secrets 300] [--size-kib 64]

Starts the operator (serving all namespaces, as the chart does by default) with 10 connections
and their labelled Secret, and records its peak RSS (VmHWM) once every connection's status is
written. Then it creates N unrelated Secrets of the given size in another namespace (what Helm
release Secrets look like to the operator), restarts the operator and records the peak again.
Prints both and the growth: the operator lists only labelled Secrets, so the growth should stay
within noise (target: under 5 MiB), where a client-side filter grew by the data's size.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from kubernetes import client

from switchboard_operator.secrets import CREDENTIALS_LABEL, CREDENTIALS_VALUE
from switchboard_testkit.cluster import Cluster
from switchboard_testkit.controlplane import wait_for
from switchboard_testkit.net import free_port

REPO = Path(__file__).resolve().parents[1]
GROUP, VERSION, PLURAL = "switchboard.dev", "v1alpha1", "platformconnections"
NS, OTHER = "bench", "unrelated"
CONNECTIONS = 10


def connection(i: int) -> dict[str, Any]:
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": "PlatformConnection",
            "metadata": {"name": f"bot-{i:03d}"},
            "spec": {"platform": "telegram", "telegram": {"tokenSecretRef": {"name": "tg"}},
                     "backend": {"echo": True},
                     "gateway": {"nodeSelector": {"switchboard.dev/bench-no-node": "true"}}}}


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM")


def run_operator(cluster: Cluster, workdir: Path, custom: client.CustomObjectsApi) -> float:
    """Start the operator, wait until every connection is reconciled, return its peak RSS."""
    log = open(workdir / "operator.log", "ab")
    metrics_port = free_port()
    op = subprocess.Popen(
        [sys.executable, "-m", "switchboard_operator.main", "--all-namespaces", "--standalone",
         "--metrics-port", str(metrics_port), "--metrics-address", "127.0.0.1",
         "--health-port", str(free_port()),
         "--health-address", "127.0.0.1", "--policy", '{"allowNodeSelector": true}'],
        env=cluster.env(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    log.close()
    try:
        def reconciled() -> bool:
            if op.poll() is not None:
                raise RuntimeError(f"operator exited with {op.returncode}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics",
                                            timeout=2) as resp:
                    text = resp.read().decode()
            except OSError:
                return False
            done = [float(line.split()[-1]) for line in text.splitlines()
                    if line.startswith("switchboard_reconciles_total ")]
            return bool(done) and done[0] >= CONNECTIONS
        # Every connection is reconciled once at start, after the Secrets were listed.
        wait_for(reconciled, 120, "every connection reconciled", interval=0.2)
        return peak_rss_mib(op.pid)
    finally:
        os.killpg(op.pid, signal.SIGTERM)
        op.wait(15)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--secrets", type=int, default=300)
    ap.add_argument("--size-kib", type=int, default=64)
    args = ap.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="switchboard-bench-secrets-"))
    cluster = Cluster(workdir)
    cluster.start()
    try:
        cluster.kubectl("apply", "--server-side", "-f",
                        str(REPO / "crds" / "platformconnections.switchboard.dev.yaml"))
        cluster.kubectl("wait", "--for=condition=Established", "--timeout=60s",
                        "crd/platformconnections.switchboard.dev")
        api = cluster.api_client()
        core, custom = client.CoreV1Api(api), client.CustomObjectsApi(api)
        for ns in (NS, OTHER):
            core.create_namespace({"metadata": {"name": ns}})
        core.create_namespaced_secret(NS, {"metadata": {"name": "tg", "labels": {
            CREDENTIALS_LABEL: CREDENTIALS_VALUE}}, "stringData": {"token": "1:bench"}})
        for i in range(CONNECTIONS):
            custom.create_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, connection(i))

        baseline = run_operator(cluster, workdir, custom)
        blob = "x" * (args.size_kib * 1024)
        t0 = time.monotonic()
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(lambda i: core.create_namespaced_secret(OTHER, {
                "metadata": {"name": f"unrelated-{i:04d}"}, "stringData": {"blob": blob}}),
                range(args.secrets)))
        print(f"created {args.secrets} unrelated Secrets of {args.size_kib} KiB in "
              f"{time.monotonic() - t0:.1f}s", flush=True)
        loaded = run_operator(cluster, workdir, custom)
        print(f"operator peak RSS, {CONNECTIONS} connections, no unrelated Secrets: "
              f"{baseline:.1f} MiB")
        print(f"operator peak RSS, same, plus {args.secrets} unrelated "
              f"{args.size_kib} KiB Secrets: {loaded:.1f} MiB")
        print(f"growth: {loaded - baseline:+.1f} MiB (ratio {loaded / baseline:.3f}; "
              "target: under 5 MiB)")
    finally:
        cluster.stop()


if __name__ == "__main__":
    main()
