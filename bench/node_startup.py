"""Start-up of the two nodes the project runs pods on, measured in one run.

    .venv/bin/python bench/node_startup.py [--pods 5]

Starts the local node's cluster (control plane + localnode.py, pods as host processes) and the
real node's (control plane + containerd, kubelet, kube-proxy, CoreDNS in their own namespaces),
then creates the same pod N times on each, one after the other (the project's image running
`sleep`, with a readiness probe the kubelet or the local node runs), and prints: cluster
start-up, median and worst time from create to Ready per node, the real node's ratio to the
local node's, and the RSS of the real node's kubelet, containerd and kube-proxy.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

from switchboard_testkit.cluster import Cluster
from switchboard_testkit.controlplane import wait_for
from switchboard_testkit.realnode import RealNodeCluster


def pod(name: str, image: str) -> str:
    return json.dumps({
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": "default"},
        "spec": {"terminationGracePeriodSeconds": 0, "containers": [{
            "name": "main", "image": image, "imagePullPolicy": "IfNotPresent",
            "command": ["sleep", "3600"],
            "readinessProbe": {"exec": {"command": ["true"]}, "periodSeconds": 1}}]}})


def ready(c: Cluster | RealNodeCluster, name: str) -> bool:
    out = json.loads(c.kubectl("get", "pod", name, "-o", "json").stdout)
    return any(x["type"] == "Ready" and x["status"] == "True"
               for x in out.get("status", {}).get("conditions", []))


def measure(c: Cluster | RealNodeCluster, image: str, n: int) -> list[float]:
    times = []
    for i in range(n):
        name = f"bench-{i}"
        t0 = time.monotonic()
        c.kubectl("apply", "-f", "-", input=pod(name, image))
        wait_for(lambda name=name: ready(c, name), 120, f"{name} Ready", interval=0.05)
        times.append(time.monotonic() - t0)
        c.kubectl("delete", "pod", name, "--wait=false")
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pods", type=int, default=5)
    args = parser.parse_args()
    results: dict[str, tuple[float, list[float]]] = {}
    memory: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for label, make in (("local", lambda: Cluster(Path(tmp) / "local")),
                            ("real", lambda: RealNodeCluster(Path(tmp) / "real"))):
            c = make()
            t0 = time.monotonic()
            try:
                c.start()
                started = time.monotonic() - t0
                image = (c.images["switchboard"][0] if isinstance(c, RealNodeCluster)
                         else "ignored-by-the-local-node:1")
                results[label] = (started, measure(c, image, args.pods))
                if isinstance(c, RealNodeCluster):
                    memory = {k: v for k, v in c.memory_mib().items()
                              if k in ("kubelet", "containerd", "kube-proxy", "kube-scheduler")}
            finally:
                c.stop()
    for label, (started, times) in results.items():
        print(f"{label:5} node: cluster up {started:5.1f} s; pod create -> Ready: median "
              f"{statistics.median(times):.2f} s, worst {max(times):.2f} s ({len(times)} pods)")
    ratio = statistics.median(results["real"][1]) / statistics.median(results["local"][1])
    print(f"real/local pod start (median): {ratio:.1f}x")
    print("real node RSS: " + ", ".join(f"{k} {v:.0f} MiB" for k, v in memory.items()))


if __name__ == "__main__":
    main()
