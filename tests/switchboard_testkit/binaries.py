"""Locate (building on first use) the pinned control-plane binaries: see hack/build-binaries.sh."""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
BUILD_SCRIPT = REPO / "hack" / "build-binaries.sh"


@dataclass(frozen=True)
class NodeBinaries:
    """The real node's components (hack/build-binaries.sh with SWITCHBOARD_NODE=1)."""

    kubelet: Path
    kube_proxy: Path
    kube_scheduler: Path
    containerd: Path  # its directory also holds containerd-shim-runc-v2 and ctr
    ctr: Path
    cni_bin_dir: Path  # bridge, host-local, loopback, portmap
    coredns: Path
    pause: Path


@dataclass(frozen=True)
class Binaries:
    etcd: Path
    kube_apiserver: Path
    kube_controller_manager: Path
    kubectl: Path
    helm: Path
    kstatus: Path  # sigs.k8s.io/cli-utils' status library (hack/kstatus)
    promtool: Path  # the alert rules' checks and unit tests
    prometheus: Path  # a real scrape of the operator (static targets only)
    kube_score: Path  # best-practice checks of the rendered chart
    node: NodeBinaries | None = None  # None when built with SWITCHBOARD_NODE=0

    @property
    def path_dirs(self) -> list[str]:
        """Directories to put first on PATH so `kubectl` and `helm` are the pinned ones."""
        return sorted({str(p.parent) for p in (self.kubectl, self.helm, self.etcd)})

    @classmethod
    def ensure(cls) -> Binaries:
        """Run the idempotent build script (a no-op with a warm cache) and return the paths."""
        out = subprocess.run(["bash", str(BUILD_SCRIPT)], check=True, text=True,
                             stdout=subprocess.PIPE, env=os.environ.copy()).stdout
        dirs = [Path(line) for line in out.splitlines() if line.strip()]

        def find(name: str) -> Path:
            for d in dirs:
                if (d / name).is_file():
                    return d / name
            raise FileNotFoundError(f"{name} not in {dirs}")

        def checker(name: str, cache_dir: str) -> Path:
            """A test checker; with SWITCHBOARD_TOOLS=cluster (the demo) it is not built and
            only its path is known (running it then fails naming that path)."""
            return next(d / name for d in dirs if d.parent.name.startswith(cache_dir))

        node = None
        if any((d / "containerd").is_file() for d in dirs):  # SWITCHBOARD_NODE=1
            node = NodeBinaries(
                kubelet=find("kubelet"), kube_proxy=find("kube-proxy"),
                kube_scheduler=find("kube-scheduler"), containerd=find("containerd"),
                ctr=find("ctr"), cni_bin_dir=find("bridge").parent, coredns=find("coredns"),
                pause=find("pause"))
        return cls(etcd=find("etcd"), kube_apiserver=find("kube-apiserver"),
                   kube_controller_manager=find("kube-controller-manager"),
                   kubectl=find("kubectl"), helm=find("helm"),
                   kstatus=find("kstatus"), promtool=checker("promtool", "prometheus-"),
                   prometheus=checker("prometheus", "prometheus-"),
                   kube_score=checker("kube-score", "kube-score-"), node=node)
