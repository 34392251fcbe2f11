"""`switchboard-devcluster up|down|status`: the development cluster for people and `make`.

`--node real` (the default): the control plane with a real kubelet, containerd, CNI, kube-proxy
and CoreDNS in a network namespace of their own (realnode.py); `--node local`: the control plane
on host loopback with the test kit's local node, which runs pods as host processes
(localnode.py).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from switchboard_testkit.controlplane import State, pid_alive, rss_mib, stop_all


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="switchboard-devcluster")
    parser.add_argument("command", choices=["up", "down", "status"])
    parser.add_argument("--workdir", type=Path, default=Path(".cluster"))
    parser.add_argument("--crashloop-base", type=float, default=10.0,
                        help="the local node's first CrashLoopBackOff delay")
    parser.add_argument("--node", choices=["real", "local"], default="real")
    args = parser.parse_args(argv)
    workdir: Path = args.workdir.resolve()
    state_file = workdir / "state.json"

    if args.command == "up":
        if state_file.exists() and any(pid_alive(p) for p in State.load(workdir).pids.values()):
            print(f"already running; kubeconfig: {State.load(workdir).kubeconfig}")
            return 0
        # Imported here: both import the kubernetes client, which `down` does not need.
        from switchboard_testkit.cluster import Cluster
        from switchboard_testkit.realnode import RealNodeCluster

        cluster: Cluster | RealNodeCluster = (
            RealNodeCluster(workdir) if args.node == "real"
            else Cluster(workdir, crashloop_base=args.crashloop_base))
        try:
            cluster.start()
        except Exception:
            print(cluster.log_tails(), file=sys.stderr)
            cluster.stop()
            raise
        timings = ", ".join(f"{k} {v:.1f}s" for k, v in cluster.timings.items())
        print(f"control plane up ({timings})")
        print(f"kubeconfig: {cluster.kubeconfig}")
        print(f"try: KUBECONFIG={cluster.kubeconfig} kubectl get --raw /readyz")
        return 0

    if not state_file.exists():
        print("no cluster recorded in", workdir)
        return 0
    state = State.load(workdir)
    if args.command == "status":
        for name, pid in state.pids.items():
            alive = pid_alive(pid)
            mem = f"{rss_mib(pid):.0f} MiB" if alive else "-"
            print(f"{name:26} pid {pid:<8} {'running' if alive else 'gone':8} {mem}")
        print(f"kubeconfig: {state.kubeconfig}")
        return 0
    names = ", ".join(state.pids) or "nothing was running"
    if "netns" in state.extra:
        from switchboard_testkit import realnode

        realnode.stop(state)
    else:
        stop_all(state)
    print("stopped:", names)
    return 0


if __name__ == "__main__":
    sys.exit(main())
