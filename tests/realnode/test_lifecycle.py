"""The real node's own life: two clusters side by side on one machine, the demo on it, and
nothing left behind by `stop()` (what `make cluster-down` runs)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from switchboard_testkit import realnode
from switchboard_testkit.realnode import RealNodeCluster


def host_links() -> set[str]:
    return set(os.listdir("/sys/class/net"))


def host_mounts() -> list[str]:
    return [line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines()]


def coredns_ip(c: RealNodeCluster) -> str:
    out = c.kubectl("-n", "kube-system", "get", "pods", "-l", "k8s-app=kube-dns", "-o",
                    "json").stdout
    return str(json.loads(out)["items"][0]["status"]["podIP"])


def test_a_second_cluster_runs_beside_the_first_and_stop_leaves_nothing(
        real: RealNodeCluster, tmp_path: Path) -> None:
    links, mounts = host_links(), host_mounts()
    second = RealNodeCluster(tmp_path / "second", real.binaries)
    try:
        second.start()
        # The same pod addresses in both, each in its own namespace: no collision.
        assert coredns_ip(second) == coredns_ip(real)
        assert second.plane.state and real.plane.state
        assert second.plane.state.server != real.plane.state.server
        state = second.plane.state
        netns_id, cgroup_root = state.extra["netns"], state.extra["cgroup_root"]
        assert netns_id != real.plane.state.extra["netns"]
        assert cgroup_root != real.plane.state.extra["cgroup_root"]
        assert host_links() == links  # nothing of the node shows on the host
    finally:
        second.stop()
    assert realnode._pids_in(netns_id, cgroup_root) == []
    # Every hierarchy, the v2 one the kubelet also writes to included.
    assert not list(Path("/sys/fs/cgroup").glob(f"*/{cgroup_root}"))
    assert host_links() == links and host_mounts() == mounts
    # The first cluster did not notice.
    assert real.kubectl("get", "node", realnode.NODE_NAME).returncode == 0
    assert coredns_ip(real)


def test_make_demo_runs_on_the_real_node(real: RealNodeCluster, chart: str) -> None:
    """`make demo`'s own program, on this session's cluster (it reuses a running one)."""
    done = subprocess.run(
        [sys.executable, "-m", "switchboard_testkit.demo", "--workdir", str(real.workdir),
         "--node", "real"], env=real.env(), capture_output=True, text=True, timeout=480)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    out = done.stdout
    assert "operator running (in its container on the real node)" in out
    assert "telegram reply: 'echo: hello switchboard'" in out
    assert "qq reply: 'echo: hello switchboard'" in out
    assert "telegram webhook reply: 'echo: hello by webhook'" in out
    assert "GatewayRestarted" in out
