"""A real Kubernetes control plane on loopback: etcd, kube-apiserver and kube-controller-manager.

On host loopback beside the local node, or inside the real node's namespaces (`NodePlacement`,
as kind runs its control plane inside the node container), published on host loopback.

The same code backs `make cluster-up`/`make cluster-down` and the pytest session fixture. Every
process is started here, recorded in `<workdir>/state.json` by PID and stopped only by that PID.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import secrets
import shutil
import signal
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from switchboard_testkit import certs, netns
from switchboard_testkit.binaries import Binaries
from switchboard_testkit.net import free_port

SERVICE_ACCOUNT_ISSUER = "https://kubernetes.default.svc.cluster.local"


@dataclass
class State:
    """What `cluster-down` and log collection need to know about a running plane."""

    workdir: str
    kubeconfig: str
    server: str
    pids: dict[str, int] = field(default_factory=dict)
    # What else cluster-down must undo (the real node: its namespace and cgroups).
    extra: dict[str, str] = field(default_factory=dict)

    @classmethod
    def load(cls, workdir: Path) -> State:
        return cls(**json.loads((workdir / "state.json").read_text()))

    def save(self) -> None:
        path = Path(self.workdir) / "state.json"
        path.write_text(json.dumps(asdict(self), indent=2))


@dataclass(frozen=True)
class NodePlacement:
    """The plane inside the real node's namespaces: bound to the node address, the API server
    published on host loopback at `published_port` (a relay), authorizing kubelets (Node)."""

    holder: int
    published_port: int
    node_ip: str = netns.NODE_IP
    api_port: int = 6443  # inside the node's own network namespace: no other user of it
    kcm_flags: tuple[str, ...] = ()


def wait_for(predicate: Callable[[], object], timeout: float, what: str,
              interval: float = 0.1) -> object:
    """Poll `predicate` until it returns something truthy; raise TimeoutError naming `what`."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            result = predicate()
            if result:
                return result
        except Exception as exc:  # the thing we wait for may fail until it is up
            last_error = exc
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}"
                       + (f" (last error: {last_error})" if last_error else ""))


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child still answers kill(0); reap it if it is ours.
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
        return done == 0
    except ChildProcessError:
        return _not_zombie(pid)


def _not_zombie(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def stop_pid(pid: int, grace: float = 10.0) -> None:
    """SIGTERM the process group led by `pid`, SIGKILL it after `grace` seconds."""
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
        if not pid_alive(pid):
            return
        try:
            os.killpg(pid, sig)
        except ProcessLookupError:
            return
        except PermissionError:
            os.kill(pid, sig)
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline and pid_alive(pid):
            time.sleep(0.05)


def log_tails(workdir: Path, lines: int = 40) -> str:
    """The last lines of every component log, for a failing test's report."""
    out = []
    for log in sorted((workdir / "logs").glob("*.log")):
        tail = log.read_text(errors="replace").splitlines()[-lines:]
        out.append(f"----- {log.name} (last {len(tail)} lines) -----")
        out.extend(tail)
    return "\n".join(out)


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


class ControlPlane:
    """Starts and stops etcd, kube-apiserver and kube-controller-manager in `workdir`."""

    def __init__(self, workdir: Path, binaries: Binaries) -> None:
        self.workdir = workdir.resolve()
        self.bin = binaries
        self.pki = self.workdir / "pki"
        self.logs = self.workdir / "logs"
        self.kubeconfig = self.workdir / "kubeconfig"
        self.state: State | None = None
        self.timings: dict[str, float] = {}
        self._apiserver_argv: list[str] = []
        self._ready_ctx: ssl.SSLContext | None = None
        self.node: NodePlacement | None = None
        self.ca: certs.CertificateAuthority | None = None
        self.internal_server = ""

    @contextlib.contextmanager
    def inside(self) -> Iterator[None]:
        """Where the plane's own addresses are reachable: here, or in the node's namespace."""
        if self.node is None:
            yield
        else:
            with netns.enter(self.node.holder):
                yield

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self, timeout: float = 90.0) -> State:
        # A fresh cluster: the data of an earlier one in this workdir (`make cluster-up
        # NODE=local`, then `make demo` on the real node) would bring back its Node, and the
        # scheduler bound CoreDNS to that NotReady node.
        shutil.rmtree(self.workdir / "etcd", ignore_errors=True)
        for d in (self.pki, self.logs, self.workdir / "etcd"):
            d.mkdir(parents=True, exist_ok=True)
        t0 = time.monotonic()
        ca = certs.CertificateAuthority(self.pki, "cluster")
        front_ca = certs.CertificateAuthority(self.pki, "front-proxy")
        self.ca = ca
        node = self.node
        api_port, etcd_port, etcd_peer = free_port(), free_port(), free_port()
        address = node.node_ip if node else "127.0.0.1"
        if node:
            api_port = node.api_port
        self.internal_server = f"https://{address}:{api_port}"
        server = f"https://127.0.0.1:{node.published_port}" if node else self.internal_server
        # A state seeded before (the real node's holder and relay) keeps what it recorded.
        seeded = self.state
        self.state = State(workdir=str(self.workdir), kubeconfig=str(self.kubeconfig),
                           server=server, pids=seeded.pids if seeded else {},
                           extra=seeded.extra if seeded else {})
        self.state.save()

        self._spawn("etcd", [
            str(self.bin.etcd), "--name=switchboard", f"--data-dir={self.workdir / 'etcd'}",
            f"--listen-client-urls=http://127.0.0.1:{etcd_port}",
            f"--advertise-client-urls=http://127.0.0.1:{etcd_port}",
            f"--listen-peer-urls=http://127.0.0.1:{etcd_peer}",
            f"--initial-advertise-peer-urls=http://127.0.0.1:{etcd_peer}",
            f"--initial-cluster=switchboard=http://127.0.0.1:{etcd_peer}",
            # A test cluster loses nothing it needs on a crash; fsync would dominate start-up.
            "--unsafe-no-fsync", "--log-level=warn", "--quota-backend-bytes=4294967296",
        ])
        wait_for(lambda: self._probe(f"http://127.0.0.1:{etcd_port}/health"), timeout,
                 "etcd health")
        self.timings["etcd"] = time.monotonic() - t0

        serving = ca.issue("apiserver", "kube-apiserver",
                           server_names=("localhost", "kubernetes", "kubernetes.default",
                                         "kubernetes.default.svc",
                                         "kubernetes.default.svc.cluster.local"),
                           server_ips=("127.0.0.1", "10.96.0.1", *([address] if node else [])))
        admin = ca.issue("admin", "switchboard-admin", organization="system:masters")
        kcm = ca.issue("controller-manager", "system:kube-controller-manager")
        proxy = front_ca.issue("front-proxy-client", "front-proxy-client")
        sa = certs.service_account_keypair(self.pki)
        token = secrets.token_hex(16)
        tokens = self.pki / "tokens.csv"
        tokens.write_text(f"{token},switchboard-admin,switchboard-admin,system:masters\n")
        tokens.chmod(0o600)

        t1 = time.monotonic()
        self._apiserver_argv = [
            str(self.bin.kube_apiserver),
            f"--etcd-servers=http://127.0.0.1:{etcd_port}",
            f"--bind-address={address}", f"--advertise-address={address}",
            f"--secure-port={api_port}",
            f"--tls-cert-file={serving.cert}", f"--tls-private-key-file={serving.key}",
            f"--client-ca-file={ca.cert_path}", f"--token-auth-file={tokens}",
            *self._node_apiserver_flags(ca),
            f"--service-account-issuer={SERVICE_ACCOUNT_ISSUER}",
            f"--api-audiences={SERVICE_ACCOUNT_ISSUER}",
            f"--service-account-key-file={sa.cert}",
            f"--service-account-signing-key-file={sa.key}",
            "--service-cluster-ip-range=10.96.0.0/16",
            f"--requestheader-client-ca-file={front_ca.cert_path}",
            "--requestheader-allowed-names=front-proxy-client",
            "--requestheader-username-headers=X-Remote-User",
            "--requestheader-group-headers=X-Remote-Group",
            "--requestheader-extra-headers-prefix=X-Remote-Extra-",
            f"--proxy-client-cert-file={proxy.cert}", f"--proxy-client-key-file={proxy.key}",
            "--allow-privileged=true", "--profiling=false", "--event-ttl=1h",
            # Who wrote what, when the API server received it: tests measure, for example,
            # whether two operator replicas ever acted at the same time (audit_writes()).
            f"--audit-policy-file={self._audit_policy()}", f"--audit-log-path={self.audit_log}",
            "--audit-log-format=json", "--audit-log-mode=blocking",
            "--audit-log-maxsize=200", "--audit-log-maxbackup=1",
        ]
        self._spawn("kube-apiserver", self._apiserver_argv)
        self._ready_ctx = _client_ssl(ca.cert_path, admin)
        self._write_kubeconfig(self.kubeconfig, server, ca.cert_path, admin, "admin")
        self._write_kubeconfig(self.workdir / "controller-manager.kubeconfig",
                               self.internal_server, ca.cert_path, kcm, "controller-manager")
        ctx = _client_ssl(ca.cert_path, admin)
        wait_for(lambda: self._probe(f"{self.internal_server}/readyz", ctx), timeout,
                 "kube-apiserver /readyz")
        self.timings["kube-apiserver"] = time.monotonic() - t1

        t2 = time.monotonic()
        kcm_config = self.workdir / "controller-manager.kubeconfig"
        self._spawn("kube-controller-manager", [
            str(self.bin.kube_controller_manager),
            f"--kubeconfig={kcm_config}",
            f"--authentication-kubeconfig={kcm_config}",
            f"--authorization-kubeconfig={kcm_config}",
            f"--bind-address={address}", f"--secure-port={free_port()}",
            f"--cert-dir={self.pki / 'kcm-serving'}",
            f"--service-account-private-key-file={sa.key}",
            f"--root-ca-file={ca.cert_path}",
            f"--cluster-signing-cert-file={ca.cert_path}",
            f"--cluster-signing-key-file={ca.key_path}",
            "--use-service-account-credentials=true",
            "--leader-elect=false", "--profiling=false", *(node.kcm_flags if node else ()),
        ])
        wait_for(lambda: self._probe(
            f"{self.internal_server}/api/v1/namespaces/default/serviceaccounts/default", ctx),
            timeout, "the default ServiceAccount (kube-controller-manager)")
        self.timings["kube-controller-manager"] = time.monotonic() - t2
        self.timings["total"] = time.monotonic() - t0
        return self.state

    def _node_apiserver_flags(self, ca: certs.CertificateAuthority) -> list[str]:
        if self.node is None:
            # There is no Service network on loopback: the default endpoint reconciler would
            # fight over the kubernetes Service's endpoints and never settle.
            return ["--authorization-mode=RBAC", "--endpoint-reconciler-type=none"]
        # A real kubelet: Node authorization and NodeRestriction, and the API server's own
        # client certificate for logs, exec and port-forward through the kubelet.
        kubelet_client = ca.issue("apiserver-kubelet-client", "kube-apiserver-kubelet-client",
                                  organization="system:masters")
        return ["--authorization-mode=Node,RBAC", "--enable-admission-plugins=NodeRestriction",
                f"--kubelet-client-certificate={kubelet_client.cert}",
                f"--kubelet-client-key={kubelet_client.key}",
                f"--kubelet-certificate-authority={ca.cert_path}",
                "--kubelet-preferred-address-types=InternalIP,Hostname"]

    def _probe(self, url: str, ctx: ssl.SSLContext | None = None) -> bool:
        with self.inside():
            return _http_ok(url, ctx)

    @property
    def audit_log(self) -> Path:
        return self.logs / "audit.log"

    def _audit_policy(self) -> Path:
        """Metadata of every write; nothing of reads, nor of the controller-manager's own
        (kube-system) service accounts."""
        path = self.pki / "audit-policy.yaml"
        path.write_text(json.dumps({
            "apiVersion": "audit.k8s.io/v1", "kind": "Policy",
            "omitStages": ["RequestReceived"],
            "rules": [
                {"level": "None", "userGroups": ["system:serviceaccounts:kube-system"]},
                {"level": "None", "users": ["system:kube-controller-manager"]},
                {"level": "Metadata",
                 "verbs": ["create", "update", "patch", "delete", "deletecollection"]},
                {"level": "None"},
            ]}))
        return path

    def audit_writes(self) -> list[dict[str, Any]]:
        """The writes the API server has recorded so far, oldest first."""
        events = []
        if self.audit_log.exists():
            for line in self.audit_log.read_text().splitlines():
                with contextlib.suppress(ValueError):
                    events.append(json.loads(line))
        return events

    def stop(self) -> None:
        state = self.state or State.load(self.workdir)
        stop_all(state)

    def restart_apiserver(self, timeout: float = 60.0) -> None:
        """Stop kube-apiserver (by PID) and start it again with the same flags, on the same
        port: every watch ends, and the new watch cache starts from the current revision (a
        watch resumed from an older resourceVersion gets 410 Gone)."""
        assert self.state is not None
        stop_pid(self.state.pids["kube-apiserver"], grace=1.0)  # a crash, nearly
        self._spawn("kube-apiserver", self._apiserver_argv)
        wait_for(lambda: self._probe(f"{self.internal_server}/readyz", self._ready_ctx), timeout,
                 "kube-apiserver /readyz after a restart")

    def memory_mib(self) -> dict[str, float]:
        assert self.state
        return {name: rss_mib(pid) for name, pid in self.state.pids.items() if pid_alive(pid)}

    # -- helpers -----------------------------------------------------------------------------

    def _spawn(self, name: str, argv: list[str], env: dict[str, str] | None = None,
               host: bool = False) -> int:
        """Start and record a component; in the node's namespaces unless `host`."""
        assert self.state
        log = open(self.logs / f"{name}.log", "ab")  # handed to the child
        prefix = netns.nsenter(self.node.holder) if self.node and not host else []
        proc = subprocess.Popen([*prefix, *argv], stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True,
                                cwd=self.workdir, env=env)
        log.close()
        self.state.pids[name] = proc.pid
        self.state.save()
        return proc.pid

    @staticmethod
    def _write_kubeconfig(path: Path, server: str, ca: Path, client: certs.KeyPair,
                          user: str) -> None:
        def b64(p: Path) -> str:
            return base64.b64encode(p.read_bytes()).decode()

        config = {
            "apiVersion": "v1", "kind": "Config", "current-context": "switchboard",
            "clusters": [{"name": "switchboard", "cluster": {
                "server": server, "certificate-authority-data": b64(ca)}}],
            "users": [{"name": user, "user": {
                "client-certificate-data": b64(client.cert),
                "client-key-data": b64(client.key)}}],
            "contexts": [{"name": "switchboard", "context": {
                "cluster": "switchboard", "user": user, "namespace": "default"}}],
        }
        path.write_text(yaml.safe_dump(config))
        path.chmod(0o600)


def stop_pids(pids: list[int]) -> None:
    """Stop these processes, the last one first (they were started in this order)."""
    for pid in reversed(pids):
        stop_pid(pid)


def stop_all(state: State) -> None:
    """Stop every recorded process, newest first, and forget them."""
    stop_pids(list(state.pids.values()))
    state.pids.clear()
    state.save()


def _client_ssl(ca: Path, client: certs.KeyPair) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(ca))
    ctx.load_cert_chain(str(client.cert), str(client.key))
    return ctx


def _http_ok(url: str, ctx: ssl.SSLContext | None = None) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2, context=ctx) as resp:
            return resp.status == 200
    except (urllib.error.URLError, OSError):
        return False
