"""A real single-node cluster: kubelet, containerd, runc, CNI, kube-proxy and CoreDNS.

Laid out as kind lays out a one-node cluster: the control plane and the node share one network
and mount namespace of their own (netns.py), the API server is published on host loopback
(relay.py), CoreDNS runs as a Deployment behind the `kube-dns` Service at 10.96.0.10, pods get
10.244.0.0/24 on the `cni0` bridge, kube-proxy programs nftables inside the namespace. Two such
clusters on one machine never collide: each has its own namespace, cgroup root and host port.

Everything this starts is recorded in <workdir>/state.json; `stop()` (and `make cluster-down`)
stops every recorded process, then every process left in the node's namespace or cgroups (the
containerd shims, the containers), then removes the cgroups. Mounts, interfaces and nftables
rules live in the node's namespaces and go with them.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml
from kubernetes import client

from switchboard_testkit import certs, netns
from switchboard_testkit.binaries import REPO, Binaries, NodeBinaries
from switchboard_testkit.cluster import ClusterClients, node_ready
from switchboard_testkit.controlplane import (
    ControlPlane,
    NodePlacement,
    State,
    pid_alive,
    stop_pids,
    wait_for,
)
from switchboard_testkit.net import free_port

NODE_NAME = "switchboard-node"
POD_CIDR = "10.244.0.0/16"
DNS_IP = "10.96.0.10"
CGROUP_FS = Path("/sys/fs/cgroup")
CONTAINERD_SOCK = "/run/containerd/containerd.sock"  # in the node's private /run
BUILD_IMAGE = REPO / "hack" / "build-image.sh"
# The chart on this node: the operator reaches fake platforms at the node address over http.
# The fakes serve plain http inside the node; the webhook tests' public host has no TLS.
WEBHOOK_TEST_HOST = "bots.switchboard.test"
CHART_VALUES = ("--set", f"policy.insecureAPIHosts={{{netns.NODE_IP}}}",
                "--set", f"policy.insecureWebhookHosts={{{WEBHOOK_TEST_HOST}}}")


def build_images() -> dict[str, tuple[str, Path]]:
    """hack/build-image.sh (cached): {name: (image reference, OCI archive)}."""
    out = subprocess.run(["bash", str(BUILD_IMAGE)], check=True, text=True,
                         stdout=subprocess.PIPE).stdout
    images = {}
    for line in out.splitlines():
        name, ref, archive = line.split()
        images[name] = (ref, Path(archive))
    return images


class RealNodeCluster(ClusterClients):
    """The same surface as cluster.Cluster (kubeconfig, env, kubectl, api_client, stop)."""

    def __init__(self, workdir: Path, binaries: Binaries | None = None) -> None:
        self.workdir = workdir.resolve()
        self.binaries = binaries or Binaries.ensure()
        if self.binaries.node is None:
            raise RuntimeError("the real node's binaries were not built (SWITCHBOARD_NODE=0)")
        self.node: NodeBinaries = self.binaries.node
        self.plane = ControlPlane(self.workdir, self.binaries)
        self.timings: dict[str, float] = {}
        self.images: dict[str, tuple[str, Path]] = {}
        # One cgroup root per cluster, named after its work directory.
        digest = hashlib.sha256(str(self.workdir).encode()).hexdigest()
        self.cgroup_root = f"switchboard-{digest[:10]}"

    @property
    def kubeconfig(self) -> Path:
        return self.plane.kubeconfig

    @property
    def holder(self) -> int:
        assert self.plane.node is not None
        return self.plane.node.holder

    def env(self) -> dict[str, str]:
        path = os.pathsep.join([*self.binaries.path_dirs, os.environ.get("PATH", "")])
        return {**os.environ, "KUBECONFIG": str(self.kubeconfig), "PATH": path}

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self, timeout: float = 180.0) -> State:
        t0 = time.monotonic()
        logs = self.workdir / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        self.images = build_images()
        self.timings["images"] = time.monotonic() - t0

        t1 = time.monotonic()
        holder = netns.start_holder(self.workdir, logs / "node-namespaces.log")
        port = free_port()
        self.plane.node = NodePlacement(holder=holder, published_port=port, kcm_flags=(
            "--allocate-node-cidrs", f"--cluster-cidr={POD_CIDR}", "--node-cidr-mask-size=24",
            "--service-cluster-ip-range=10.96.0.0/16"))
        self.plane.state = State(workdir=str(self.workdir), kubeconfig=str(self.kubeconfig),
                                 server="", pids={"node-namespaces": holder}, extra={
                                     "netns": os.readlink(f"/proc/{holder}/ns/net"),
                                     "cgroup_root": self.cgroup_root})
        self.plane.state.save()
        self._make_cgroups()
        self.plane._spawn("relay", [sys.executable, "-m", "switchboard_testkit.relay",
                                    f"--holder={holder}",
                                    f"127.0.0.1:{port}={netns.NODE_IP}:6443"], host=True)
        self.timings["namespaces"] = time.monotonic() - t1

        state = self.plane.start(timeout)
        t2 = time.monotonic()
        self._start_node(timeout)
        core = client.CoreV1Api(self.api_client())
        wait_for(lambda: node_ready(core, NODE_NAME), timeout, f"node {NODE_NAME} Ready")
        self.timings["node"] = time.monotonic() - t2
        t3 = time.monotonic()
        self._start_coredns(timeout)
        self.timings["coredns"] = time.monotonic() - t3
        self.timings["total"] = time.monotonic() - t0
        return state

    def stop(self) -> None:
        # From disk: another process (the demo) may have recorded more of its own there.
        state_file = self.workdir / "state.json"
        stop(State.load(self.workdir) if state_file.exists() else self.plane.state)

    def attach(self, state: State) -> None:
        """Use a cluster an earlier process started (the demo run twice)."""
        port = int(state.server.rsplit(":", 1)[1])
        self.plane.node = NodePlacement(holder=state.pids["node-namespaces"], published_port=port)
        self.plane.internal_server = f"https://{netns.NODE_IP}:6443"
        self.plane.state = state

    # -- the node ----------------------------------------------------------------------------

    def _make_cgroups(self) -> None:
        """The kubelet's cgroupRoot must exist in every v1 hierarchy (cpuset: with cpus and
        mems copied from its parent, or no task can join it)."""
        for hierarchy in _hierarchies():
            path = hierarchy / self.cgroup_root
            path.mkdir(exist_ok=True)
            for name in ("cpuset.cpus", "cpuset.mems"):
                if (path / name).exists() and not (path / name).read_text().strip():
                    (path / name).write_text((hierarchy / name).read_text())

    def _issue(self, name: str, cn: str, org: str | None = None,
               server: bool = False) -> certs.KeyPair:
        assert self.plane.ca is not None
        kwargs: dict[str, object] = {"organization": org} if org else {}
        if server:
            kwargs.update(server_names=(NODE_NAME,), server_ips=(netns.NODE_IP,))
        return self.plane.ca.issue(name, cn, **kwargs)  # type: ignore[arg-type]

    def _kubeconfig(self, name: str, pair: certs.KeyPair) -> Path:
        assert self.plane.ca is not None
        path = self.workdir / f"{name}.kubeconfig"
        self.plane._write_kubeconfig(path, self.plane.internal_server, self.plane.ca.cert_path,
                                     pair, name)
        return path

    def _spawn_node(self, name: str, argv: list[str]) -> None:
        path = f"{self.node.containerd.parent}:{os.environ.get('PATH', '/usr/sbin:/usr/bin')}"
        self.plane._spawn(name, argv, env={**os.environ, "PATH": path})

    def _in_node(self, *argv: str, check: bool = True,
                 timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*netns.nsenter(self.holder), *argv], capture_output=True,
                              text=True, check=check, timeout=timeout)

    def _start_node(self, timeout: float) -> None:
        work = self.workdir
        assert self.plane.ca is not None
        ca = self.plane.ca.cert_path
        scheduler = self._kubeconfig("kube-scheduler",
                                     self._issue("kube-scheduler", "system:kube-scheduler"))
        self._spawn_node("kube-scheduler", [
            str(self.node.kube_scheduler), f"--kubeconfig={scheduler}",
            f"--authentication-kubeconfig={scheduler}", f"--authorization-kubeconfig={scheduler}",
            f"--bind-address={netns.NODE_IP}", f"--secure-port={free_port()}",
            "--leader-elect=false", "--profiling=false"])

        t0 = time.monotonic()
        cni_conf = work / "cni" / "net.d"
        cni_conf.mkdir(parents=True, exist_ok=True)
        (cni_conf / "10-switchboard.conflist").write_text(json.dumps(_cni_config(work)))
        ctd_config = work / "containerd.toml"
        ctd_config.write_text(_containerd_config(work, self.node, cni_conf,
                                                 self.images["pause"][0]))
        self._spawn_node("containerd", [str(self.node.containerd), f"--config={ctd_config}"])
        wait_for(lambda: self._ctr("version", check=False).returncode == 0, timeout,
                 "containerd's socket")
        for ref, archive in self.images.values():
            base = ref.rsplit(":", 1)[0]
            self._ctr("images", "import", "--base-name", base, "--local", str(archive),
                      timeout=300)
        self.timings["containerd+images"] = time.monotonic() - t0

        kubelet_client = self._kubeconfig("kubelet", self._issue(
            "kubelet-client", f"system:node:{NODE_NAME}", org="system:nodes"))
        serving = self._issue("kubelet-serving", NODE_NAME, server=True)
        (work / "resolv.conf").write_text("# no upstream: nothing outside the node is asked\n")
        kubelet_config = work / "kubelet.yaml"
        kubelet_config.write_text(yaml.safe_dump(_kubelet_config(
            work, ca, serving, self.cgroup_root)))
        self._spawn_node("kubelet", [
            str(self.node.kubelet), f"--config={kubelet_config}",
            f"--kubeconfig={kubelet_client}", f"--hostname-override={NODE_NAME}",
            f"--node-ip={netns.NODE_IP}", "--v=0"])

        proxy = self._kubeconfig("kube-proxy", self._issue("kube-proxy", "system:kube-proxy"))
        proxy_config = work / "kube-proxy.yaml"
        proxy_config.write_text(yaml.safe_dump({
            "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
            "kind": "KubeProxyConfiguration",
            "mode": "nftables", "clusterCIDR": POD_CIDR, "hostnameOverride": NODE_NAME,
            "bindAddress": netns.NODE_IP,
            "clientConnection": {"kubeconfig": str(proxy)},
            "conntrack": {"maxPerCore": 0},
            "nodePortAddresses": [f"{netns.NODE_IP}/32"],
            "healthzBindAddress": f"{netns.NODE_IP}:10256",
            "metricsBindAddress": f"{netns.NODE_IP}:10249",
        }))
        self._spawn_node("kube-proxy", [str(self.node.kube_proxy), f"--config={proxy_config}"])

    def _ctr(self, *args: str, check: bool = True,
             timeout: float = 30) -> subprocess.CompletedProcess[str]:
        return self._in_node(str(self.node.ctr), f"--address={CONTAINERD_SOCK}",
                             "--namespace=k8s.io", *args, check=check, timeout=timeout)

    def _start_coredns(self, timeout: float) -> None:
        manifests = (REPO / "tests" / "switchboard_testkit" / "coredns.yaml").read_text()
        manifests = manifests.replace("COREDNS_IMAGE", self.images["coredns"][0])
        self.kubectl("apply", "--server-side", "-f", "-", input=manifests)
        self.kubectl("-n", "kube-system", "rollout", "status", "deployment/coredns",
                     f"--timeout={int(timeout)}s", timeout=timeout + 10)

    def memory_mib(self) -> dict[str, float]:
        return self.plane.memory_mib()


def _hierarchies() -> list[Path]:
    """Every cgroup hierarchy, the v2 `unified` one included: the kubelet makes its cgroupRoot
    there as well, and stop() must remove it there too."""
    return [p for p in sorted(CGROUP_FS.iterdir()) if p.is_dir() and not p.is_symlink()]


def _cni_config(work: Path) -> dict[str, object]:
    return {
        "cniVersion": "1.0.0", "name": "switchboard",
        "plugins": [
            {"type": "bridge", "bridge": "cni0", "isGateway": True, "ipMasq": False,
             "hairpinMode": True,
             "ipam": {"type": "host-local", "dataDir": "/run/cni-ipam",
                      "ranges": [[{"subnet": "10.244.0.0/24"}]],
                      "routes": [{"dst": "0.0.0.0/0"}]}},
            {"type": "portmap", "capabilities": {"portMappings": True}},
        ],
    }


def _containerd_config(work: Path, node: NodeBinaries, cni_conf: Path, pause: str) -> str:
    return f"""version = 3
root = "{work / 'containerd'}"
state = "/run/containerd"
[grpc]
  address = "{CONTAINERD_SOCK}"
[plugins."io.containerd.cri.v1.images"]
  snapshotter = "overlayfs"
  # Images are imported, never pulled: no registry is reachable.
  [plugins."io.containerd.cri.v1.images".pinned_images]
    sandbox = "{pause}"
[plugins."io.containerd.cri.v1.runtime"]
  # root lacks CAP_SYS_RESOURCE here: the pause container's oom_score_adj -998 is refused.
  restrict_oom_score_adj = true
  [plugins."io.containerd.cri.v1.runtime".containerd]
    default_runtime_name = "runc"
    [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc.options]
        BinaryName = "/usr/sbin/runc"
        SystemdCgroup = false
  [plugins."io.containerd.cri.v1.runtime".cni]
    bin_dirs = ["{node.cni_bin_dir}"]
    conf_dir = "{cni_conf}"
"""


def _kubelet_config(work: Path, ca: Path, serving: certs.KeyPair,
                    cgroup_root: str) -> dict[str, object]:
    return {
        "apiVersion": "kubelet.config.k8s.io/v1beta1", "kind": "KubeletConfiguration",
        # These machines have cgroup v1 hierarchies only.
        "failCgroupV1": False, "cgroupDriver": "cgroupfs", "cgroupRoot": f"/{cgroup_root}",
        "containerRuntimeEndpoint": f"unix://{CONTAINERD_SOCK}",
        "address": netns.NODE_IP, "port": 10250, "readOnlyPort": 0,
        "healthzBindAddress": netns.NODE_IP,
        "tlsCertFile": str(serving.cert), "tlsPrivateKeyFile": str(serving.key),
        "authentication": {"anonymous": {"enabled": False}, "webhook": {"enabled": True},
                           "x509": {"clientCAFile": str(ca)}},
        "authorization": {"mode": "Webhook"},
        "clusterDNS": [DNS_IP], "clusterDomain": "cluster.local",
        "resolvConf": str(work / "resolv.conf"),
        "failSwapOn": False,
        # No registry to pull an evicted image back from.
        "imageGCHighThresholdPercent": 100, "imageGCLowThresholdPercent": 99,
        "evictionHard": {"memory.available": "100Mi", "nodefs.available": "1%",
                         "imagefs.available": "1%", "nodefs.inodesFree": "1%"},
        "podLogsDir": str(work / "pod-logs"),
        # Restart tests stay short (the kubelet's default back-off reaches 5 minutes).
        "crashLoopBackOff": {"maxContainerRestartPeriod": "1s"},
        "serializeImagePulls": False,
        "staticPodPath": "",
    }


def stop(state: State | None) -> None:
    """Stop what `RealNodeCluster.start` recorded, then what is left in the node's namespace
    and cgroups (shims and containers are not our children), then remove the cgroups."""
    if state is None:
        return
    netns_id = state.extra.get("netns")
    cgroup_root = state.extra.get("cgroup_root")
    holder = state.pids.get("node-namespaces")
    stop_pids([pid for name, pid in state.pids.items() if name != "node-namespaces"])
    for _ in range(50):
        left = _pids_in(netns_id, cgroup_root)
        if not left:
            break
        for pid in left:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.1)  # the kernel's reaping, between two SIGKILL rounds
    if holder is not None:
        stop_pids([holder])  # last: the namespaces die with it
    if cgroup_root:
        _remove_cgroups(cgroup_root)
    state.pids.clear()
    state.save()


def _pids_in(netns_id: str | None, cgroup_root: str | None) -> list[int]:
    found = set()
    if netns_id:
        for proc in Path("/proc").iterdir():
            if proc.name.isdigit():
                with contextlib.suppress(OSError):
                    if os.readlink(proc / "ns" / "net") == netns_id:
                        found.add(int(proc.name))
    if cgroup_root:
        for hierarchy in _hierarchies():
            root = hierarchy / cgroup_root
            if root.is_dir():
                for tasks in root.rglob("cgroup.procs"):
                    with contextlib.suppress(OSError):
                        found.update(int(p) for p in tasks.read_text().split())
    return sorted(p for p in found if pid_alive(p))


def _remove_cgroups(cgroup_root: str, timeout: float = 15.0) -> None:
    """rmdir the tree, deepest first; a cgroup whose last task is still exiting refuses (EBUSY)
    for a moment, so retry until it is gone."""

    def remove() -> bool:
        left = False
        for hierarchy in _hierarchies():
            root = hierarchy / cgroup_root
            if not root.is_dir():
                continue
            inner = sorted((p for p in root.rglob("*") if p.is_dir()),
                           key=lambda p: len(p.parts), reverse=True)
            for path in [*inner, root]:
                with contextlib.suppress(OSError):
                    path.rmdir()
            left = left or root.is_dir()
        return not left

    wait_for(remove, timeout, f"cgroups {cgroup_root} removed", interval=0.2)
