"""A local node: a kubelet stand-in that runs pods as local processes on this machine.

There is no container runtime here, so the node:
- registers a Ready Node and keeps its Lease fresh (the node lifecycle controller then leaves it
  alone), and binds pending pods whose nodeSelector it matches (there is no kube-scheduler);
- runs each container's command+args with the pod's env resolved (secretKeyRef, configMapKeyRef,
  fieldRef, envFrom) and KUBECONFIG pointing at a kubeconfig holding a token minted for the
  pod's ServiceAccount through the TokenRequest API, so RBAC applies as in a real pod;
- gives every pod its own loopback address (127.1.x.y) as its pod IP, so two pods can listen on
  the same port; each node holds its own 127.1.x.0/24 (IPAllocator), so two local clusters on
  one machine never hand out the same address;
- runs httpGet/tcpSocket/exec readiness and liveness probes, honours restartPolicy with the
  kubelet's CrashLoopBackOff, reports Running/Ready, restartCount and lastState.terminated;
- on pod deletion sends SIGTERM, then SIGKILL after the grace period, then removes the pod.
Container images are ignored: the command must exist on this machine (e.g. the project venv).
Logs go to <workdir>/pods/<namespace>_<pod>/<container>.log.
"""

from __future__ import annotations

import argparse
import datetime as dt
import fcntl
import ipaddress
import logging
import os
import shlex
import signal
import socket
import subprocess
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client, config, watch
from kubernetes.client.rest import ApiException

from switchboard_testkit.podenv import ConfigError, EnvResolver, expand

log = logging.getLogger("localnode")

NODE_NAME = "switchboard-local"
# Chart values for this node: its pods share the host's network namespace, so two of them (or a
# second local cluster) would both hold 127.0.0.1:<port>; pods here bind only their pod IP. The
# fake platforms the tests and the demo start listen on http://127.0.0.1.
CHART_VALUES = ("--set", "portForward=false", "--set", "policy.insecureAPIHosts={127.0.0.1}")
AUDIENCE = "https://kubernetes.default.svc.cluster.local"
POD_NET = ipaddress.ip_network("127.1.0.0/16")


def now_iso() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def pod_dir(workdir: Path, namespace: str, name: str) -> Path:
    return workdir / "pods" / f"{namespace}_{name}"


class IPAllocator:
    """Pod IPs from a /24 of POD_NET that this process holds alone, each checked free.

    Two local clusters on one machine (a demo beside a test run) used to hand out the same
    127.1.0.x and their pods failed with EADDRINUSE. Each node now claims a block with an
    exclusive flock on a file named after it (held while the process lives, released by the
    kernel when it dies, even by SIGKILL), and still skips an address whose declared ports
    another process holds (a cluster of an older checkout takes no lock).
    """

    def __init__(self, lock_dir: Path | None = None) -> None:
        self._lock = threading.Lock()
        self._used: set[str] = set()
        self.block, self._claim = self._claim_block(
            lock_dir or Path(tempfile.gettempdir()) / "switchboard-podnet")

    @staticmethod
    def _claim_block(lock_dir: Path) -> tuple[ipaddress.IPv4Network, Any]:
        lock_dir.mkdir(parents=True, exist_ok=True)
        for block in POD_NET.subnets(new_prefix=24):
            handle = open(lock_dir / f"{block.network_address}.lock", "a")
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.close()
                continue
            return block, handle  # type: ignore[return-value]
        raise RuntimeError(f"every /24 of {POD_NET} is held by another local node")

    def take(self, ports: Iterable[int] = ()) -> str:
        ports = list(ports)
        with self._lock:
            for ip in self.block.hosts():
                address = str(ip)
                if address not in self._used and _ports_free(address, ports):
                    self._used.add(address)
                    return address
        raise RuntimeError(f"pod address pool {self.block} exhausted")

    def release(self, ip: str) -> None:
        with self._lock:
            self._used.discard(ip)

    def close(self) -> None:
        self._claim.close()


def _ports_free(address: str, ports: Iterable[int]) -> bool:
    for port in ports:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind((address, port))
            except OSError:
                log.warning("pod address %s skipped: port %d is taken", address, port)
                return False
    return True


def container_ports(pod: dict[str, Any]) -> list[int]:
    return [int(p["containerPort"]) for c in (pod.get("spec") or {}).get("containers") or []
            for p in c.get("ports") or [] if p.get("containerPort")]


@dataclass
class Probe:
    """Kubelet probe bookkeeping for one container and one probe kind."""

    spec: dict[str, Any]
    successes: int = 0
    failures: int = 0
    ok: bool = False
    next_at: float = 0.0

    def due(self, started: float, now: float) -> bool:
        if now < started + self.spec.get("initialDelaySeconds", 0):
            return False
        return now >= self.next_at

    def record(self, success: bool, now: float) -> None:
        self.next_at = now + self.spec.get("periodSeconds", 10)
        if success:
            self.successes, self.failures = self.successes + 1, 0
            if self.successes >= self.spec.get("successThreshold", 1):
                self.ok = True
        else:
            self.failures, self.successes = self.failures + 1, 0
            if self.failures >= self.spec.get("failureThreshold", 3):
                self.ok = False


@dataclass
class Container:
    spec: dict[str, Any]
    proc: subprocess.Popen[bytes] | None = None
    started_at: str | None = None
    started_mono: float = 0.0
    restarts: int = 0
    last_terminated: dict[str, Any] | None = None
    waiting: tuple[str, str] | None = ("ContainerCreating", "")
    terminated: dict[str, Any] | None = None
    next_start: float = 0.0
    backoff: float = 0.0
    readiness: Probe | None = None
    liveness: Probe | None = None
    killing_for_liveness: bool = False

    @property
    def name(self) -> str:
        return self.spec["name"]


@dataclass
class PodWorker:
    """Owns one pod's processes and its status; one thread per pod."""

    node: LocalNode
    pod: dict[str, Any]
    ip: str
    containers: list[Container] = field(default_factory=list)
    stop_event: threading.Event = field(default_factory=threading.Event)
    grace: float = 30.0
    delete_when_stopped: bool = False
    thread: threading.Thread | None = None
    _last_status: dict[str, Any] | None = None

    @property
    def key(self) -> str:
        return f"{self.pod['metadata']['namespace']}/{self.pod['metadata']['name']}"

    @property
    def dir(self) -> Path:
        m = self.pod["metadata"]
        return pod_dir(self.node.workdir, m["namespace"], m["name"])

    def start(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        # Like the kubelet, the sandbox (here: the address) exists before any container starts,
        # so fieldRef status.podIP resolves.
        self.pod.setdefault("status", {}).update(
            podIP=self.ip, podIPs=[{"ip": self.ip}], hostIP=self.node.host_ip)
        for spec in self.pod["spec"]["containers"]:
            c = Container(spec=spec)
            if spec.get("readinessProbe"):
                c.readiness = Probe(spec["readinessProbe"])
            if spec.get("livenessProbe"):
                c.liveness = Probe(spec["livenessProbe"], ok=True)
            self.containers.append(c)
        self.thread = threading.Thread(target=self._run, name=f"pod {self.key}", daemon=True)
        self.thread.start()

    def terminate(self, grace: float, delete: bool = True) -> None:
        """Stop the containers; `delete` also removes the pod object (it was being deleted)."""
        self.grace = grace
        self.delete_when_stopped = delete
        self.stop_event.set()

    # -- the pod loop --------------------------------------------------------------------------

    def _run(self) -> None:
        try:
            self._loop()
        except Exception:
            log.exception("pod worker %s crashed", self.key)
        finally:
            log.info("%s stopping (grace %.0fs)", self.key, self.grace)
            self._kill_all(self.grace)
            self.node.ips.release(self.ip)
            if self.delete_when_stopped:
                self._finalize_delete()

    def _loop(self) -> None:
        policy = self.pod["spec"].get("restartPolicy", "Always")
        while not self.stop_event.is_set():
            now = time.monotonic()
            for c in self.containers:
                self._tend(c, policy, now)
            self._push_status()
            self.stop_event.wait(0.2)

    def _tend(self, c: Container, policy: str, now: float) -> None:
        if c.proc is None:
            if c.terminated is not None and not self._should_restart(c, policy):
                return
            if now >= c.next_start:
                self._start_container(c)
            return
        code = c.proc.poll()
        if code is None:
            self._probe(c, now)
            return
        # The process exited: record it like the kubelet, then decide on a restart.
        finished = now_iso()
        reason = "Completed" if code == 0 else "Error"
        if c.killing_for_liveness:
            reason, c.killing_for_liveness = "Error", False
        c.terminated = {"exitCode": code, "reason": reason, "startedAt": c.started_at,
                        "finishedAt": finished, "containerID": f"local://{c.proc.pid}"}
        log.info("%s/%s exited with %s", self.key, c.name, code)
        c.proc = None
        if self._should_restart(c, policy):
            ran = now - c.started_mono
            # CrashLoopBackOff: base doubling to max, reset after 10 minutes of running.
            c.backoff = 0.0 if ran > 600 else min(max(c.backoff * 2, self.node.backoff_base),
                                                   self.node.backoff_max)
            c.next_start = now + c.backoff
            c.waiting = ("CrashLoopBackOff",
                         f"back-off {c.backoff:.0f}s restarting failed container={c.name}")

    @staticmethod
    def _should_restart(c: Container, policy: str) -> bool:
        if c.terminated is None:
            return True
        return policy == "Always" or (policy == "OnFailure" and c.terminated["exitCode"] != 0)

    def _start_container(self, c: Container) -> None:
        spec = c.spec
        argv = list(spec.get("command") or []) + list(spec.get("args") or [])
        try:
            env = EnvResolver(self.node.core, self.pod).resolve(spec)
            if not argv:
                raise ConfigError("the local node needs an explicit container command")
            kubeconfig = self._service_account_kubeconfig()
        except ConfigError as exc:
            c.waiting = ("CreateContainerConfigError", str(exc))
            c.next_start = time.monotonic() + 2.0
            return
        except ApiException as exc:
            c.waiting = ("CreateContainerError", f"TokenRequest failed: {exc.status}")
            c.next_start = time.monotonic() + 2.0
            return
        argv = [expand(a, env) for a in argv]
        full_env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(self.dir),
            "PYTHONUNBUFFERED": "1",
            "HOSTNAME": self.pod["metadata"]["name"],
            **({"KUBECONFIG": str(kubeconfig)} if kubeconfig else {}),
            **env,
        }
        if c.terminated is not None:
            c.restarts += 1
            c.last_terminated = c.terminated
        c.terminated = None
        logfile = open(self.dir / f"{c.name}.log", "ab")  # the child owns it
        logfile.write(f"--- {now_iso()} start {shlex.join(argv)}\n".encode())
        logfile.flush()
        try:
            c.proc = subprocess.Popen(argv, env=full_env, cwd=self.dir, stdout=logfile,
                                      stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                      start_new_session=True)
        except OSError as exc:
            c.waiting = ("RunContainerError", str(exc))
            c.terminated = {"exitCode": 128, "reason": "StartError", "message": str(exc),
                            "startedAt": now_iso(), "finishedAt": now_iso()}
            c.next_start = time.monotonic() + max(c.backoff, self.node.backoff_base)
            return
        finally:
            logfile.close()
        c.started_at, c.started_mono, c.waiting = now_iso(), time.monotonic(), None
        for probe in (c.readiness, c.liveness):
            if probe:
                probe.successes = probe.failures = 0
                probe.ok = probe is c.liveness
                probe.next_at = 0.0
        log.info("%s/%s started pid %s", self.key, c.name, c.proc.pid)

    def _service_account_kubeconfig(self) -> Path | None:
        spec = self.pod["spec"]
        if spec.get("automountServiceAccountToken") is False:
            return None
        sa = spec.get("serviceAccountName") or "default"
        meta = self.pod["metadata"]
        req = client.AuthenticationV1TokenRequest(spec=client.V1TokenRequestSpec(
            audiences=[AUDIENCE], expiration_seconds=86400,
            bound_object_ref=client.V1BoundObjectReference(
                api_version="v1", kind="Pod", name=meta["name"], uid=meta["uid"])))
        token = self.node.core.create_namespaced_service_account_token(
            sa, meta["namespace"], req).status.token
        path = self.dir / "kubeconfig"
        path.write_text(yaml.safe_dump({
            "apiVersion": "v1", "kind": "Config", "current-context": "pod",
            "clusters": [{"name": "cluster", "cluster": {
                "server": self.node.server,
                "certificate-authority-data": self.node.ca_data}}],
            "users": [{"name": sa, "user": {"token": token}}],
            "contexts": [{"name": "pod", "context": {
                "cluster": "cluster", "user": sa, "namespace": meta["namespace"]}}],
        }))
        path.chmod(0o600)
        return path

    # -- probes --------------------------------------------------------------------------------

    def _probe(self, c: Container, now: float) -> None:
        for probe in (c.readiness, c.liveness):
            if probe and probe.due(c.started_mono, now):
                probe.record(self._run_probe(probe.spec, c), now)
        if c.liveness and not c.liveness.ok and c.proc and not c.killing_for_liveness:
            log.info("%s/%s failed liveness, killing", self.key, c.name)
            c.killing_for_liveness = True
            grace = self.pod["spec"].get("terminationGracePeriodSeconds", 30)
            threading.Thread(target=_stop_process, args=(c.proc, grace), daemon=True).start()

    def _run_probe(self, spec: dict[str, Any], c: Container) -> bool:
        timeout = spec.get("timeoutSeconds", 1)
        try:
            if "httpGet" in spec:
                h = spec["httpGet"]
                port = _port(h["port"], c.spec)
                host = h.get("host") or self.ip
                url = f"{h.get('scheme', 'HTTP').lower()}://{host}:{port}{h.get('path', '/')}"
                with urllib.request.urlopen(url, timeout=timeout) as resp:
                    return 200 <= resp.status < 400
            if "tcpSocket" in spec:
                t = spec["tcpSocket"]
                with socket.create_connection((t.get("host") or self.ip,
                                               _port(t["port"], c.spec)), timeout=timeout):
                    return True
            if "exec" in spec:
                return subprocess.run(spec["exec"]["command"], timeout=timeout, cwd=self.dir,
                                      capture_output=True).returncode == 0
        except Exception:
            return False
        return False

    # -- status --------------------------------------------------------------------------------

    def _container_status(self, c: Container) -> dict[str, Any]:
        running = c.proc is not None
        ready = running and (c.readiness.ok if c.readiness else True)
        state: dict[str, Any]
        if running:
            state = {"running": {"startedAt": c.started_at}}
        elif c.waiting:
            state = {"waiting": {"reason": c.waiting[0], "message": c.waiting[1]}}
        else:
            state = {"terminated": c.terminated}
        status = {
            "name": c.name, "image": c.spec.get("image", ""), "imageID": "",
            "containerID": f"local://{c.proc.pid}" if c.proc else "",
            "ready": bool(ready), "started": running, "restartCount": c.restarts,
            "state": state, "lastState": {},
        }
        if c.last_terminated:
            status["lastState"] = {"terminated": c.last_terminated}
        return status

    def _push_status(self) -> None:
        statuses = [self._container_status(c) for c in self.containers]
        all_ready = all(s["ready"] for s in statuses)
        policy = self.pod["spec"].get("restartPolicy", "Always")
        done = [c.terminated for c in self.containers if c.proc is None and c.terminated
                and not self._should_restart(c, policy)]
        if len(done) == len(self.containers):
            phase = "Succeeded" if all(t["exitCode"] == 0 for t in done) else "Failed"
        elif any(c.proc for c in self.containers) or any(c.restarts or c.terminated
                                                        for c in self.containers):
            phase = "Running"
        else:
            phase = "Pending"
        body = {
            "phase": phase, "hostIP": self.node.host_ip, "podIP": self.ip,
            "podIPs": [{"ip": self.ip}], "containerStatuses": statuses,
            "readyStatus": all_ready,  # compared below, stripped before sending
        }
        if body == self._last_status:
            return
        self._last_status = body
        t = now_iso()
        conds = [("PodScheduled", True), ("Initialized", True),
                 ("ContainersReady", all_ready), ("Ready", all_ready)]
        send = {k: v for k, v in body.items() if k != "readyStatus"}
        send["startTime"] = self.pod.get("status", {}).get("startTime") or t
        send["conditions"] = [{"type": k, "status": "True" if v else "False",
                               "lastTransitionTime": t} for k, v in conds]
        m = self.pod["metadata"]
        try:
            self.node.core.patch_namespaced_pod_status(
                m["name"], m["namespace"], {"status": send},
                _content_type="application/merge-patch+json")
            self.pod.setdefault("status", {})["startTime"] = send["startTime"]
        except ApiException as exc:
            self._last_status = None
            if exc.status == 404:
                self.stop_event.set()
            else:
                log.warning("status update for %s failed: %s", self.key, exc.status)

    # -- stopping ------------------------------------------------------------------------------

    def _kill_all(self, grace: float) -> None:
        threads = [threading.Thread(target=_stop_process, args=(c.proc, grace), daemon=True)
                   for c in self.containers if c.proc]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        for c in self.containers:
            c.proc = None

    def _finalize_delete(self) -> None:
        m = self.pod["metadata"]
        try:
            # Grace 0 must be in the body: a body's null gracePeriodSeconds overrides the query.
            self.node.core.delete_namespaced_pod(
                m["name"], m["namespace"],
                body=client.V1DeleteOptions(grace_period_seconds=0,
                                            preconditions=client.V1Preconditions(uid=m["uid"])))
            log.info("%s stopped and removed", self.key)
        except ApiException as exc:
            if exc.status not in (404, 409):
                log.warning("final delete of %s failed: %s", self.key, exc.status)
            else:
                log.info("final delete of %s: %s", self.key, exc.status)


def _stop_process(proc: subprocess.Popen[bytes], grace: float) -> None:
    """SIGTERM the container's process group, SIGKILL it after the grace period."""
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5)):
        if proc.poll() is not None:
            return
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def _port(port: int | str, container: dict[str, Any]) -> int:
    if isinstance(port, int) or str(port).isdigit():
        return int(port)
    for p in container.get("ports", []) or []:
        if p.get("name") == port:
            return int(p["containerPort"])
    raise ValueError(f"unknown named port {port}")


class LocalNode:
    def __init__(self, kubeconfig: str, workdir: Path, name: str = NODE_NAME,
                 backoff_base: float = 10.0, backoff_max: float = 300.0) -> None:
        self.workdir = workdir.resolve()
        self.name = name
        self.backoff_base, self.backoff_max = backoff_base, backoff_max
        cfg = client.Configuration()
        config.load_kube_config(config_file=kubeconfig, client_configuration=cfg)
        self.api = client.ApiClient(cfg)
        self.core = client.CoreV1Api(self.api)
        self.coord = client.CoordinationV1Api(self.api)
        raw = yaml.safe_load(Path(kubeconfig).read_text())
        cluster = raw["clusters"][0]["cluster"]
        self.server: str = cluster["server"]
        self.ca_data: str = cluster["certificate-authority-data"]
        self.host_ip = "127.0.0.1"
        self.ips = IPAllocator()
        self.workers: dict[str, PodWorker] = {}
        self.stopping = threading.Event()
        self.labels = {"kubernetes.io/hostname": name, "kubernetes.io/os": "linux",
                       "kubernetes.io/arch": "amd64", "switchboard.dev/local-node": "true"}

    # -- node object and lease -----------------------------------------------------------------

    def register(self) -> None:
        body = {"apiVersion": "v1", "kind": "Node",
                "metadata": {"name": self.name, "labels": self.labels}, "spec": {}}
        try:
            self.core.create_node(body)
        except ApiException as exc:
            if exc.status != 409:
                raise
        self._node_status()

    def _node_status(self) -> None:
        t = now_iso()
        cap = {"cpu": str(os.cpu_count() or 2), "memory": "16Gi", "pods": "250"}
        conds = [
            ("Ready", "True", "KubeletReady", "local node is posting ready status"),
            ("MemoryPressure", "False", "KubeletHasSufficientMemory", ""),
            ("DiskPressure", "False", "KubeletHasNoDiskPressure", ""),
            ("PIDPressure", "False", "KubeletHasSufficientPID", ""),
        ]
        status = {
            "capacity": cap, "allocatable": cap,
            "addresses": [{"type": "InternalIP", "address": self.host_ip},
                          {"type": "Hostname", "address": self.name}],
            "conditions": [{"type": c, "status": s, "reason": r, "message": m,
                            "lastHeartbeatTime": t, "lastTransitionTime": t}
                           for c, s, r, m in conds],
            "nodeInfo": {"kubeletVersion": "v0.0.0-switchboard-local", "operatingSystem": "linux",
                         "architecture": "amd64", "containerRuntimeVersion": "local://processes",
                         "kernelVersion": os.uname().release, "osImage": "local",
                         "machineID": "", "systemUUID": "", "bootID": "",
                         "kubeProxyVersion": ""},
        }
        self.core.patch_node_status(self.name, {"status": status})

    def _renew_lease(self) -> None:
        t = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        body = {"metadata": {"name": self.name, "namespace": "kube-node-lease"},
                "spec": {"holderIdentity": self.name, "leaseDurationSeconds": 40,
                         "renewTime": t}}
        try:
            self.coord.patch_namespaced_lease(self.name, "kube-node-lease", body)
        except ApiException as exc:
            if exc.status != 404:
                raise
            self.coord.create_namespaced_lease("kube-node-lease", body)

    def _heartbeat(self) -> None:
        last_status = time.monotonic()
        while not self.stopping.wait(5.0):
            try:
                self._renew_lease()
                if time.monotonic() - last_status > 60:
                    self._node_status()
                    last_status = time.monotonic()
            except Exception as exc:  # the apiserver may be going away during shutdown
                log.warning("heartbeat failed: %s", exc)

    # -- pods ----------------------------------------------------------------------------------

    def _matches(self, pod: dict[str, Any]) -> bool:
        selector = pod["spec"].get("nodeSelector") or {}
        return all(self.labels.get(k) == v for k, v in selector.items())

    def _bind(self, pod: dict[str, Any]) -> None:
        m = pod["metadata"]
        body = client.V1Binding(metadata=client.V1ObjectMeta(name=m["name"], uid=m["uid"]),
                                target=client.V1ObjectReference(kind="Node", name=self.name))
        try:
            # _preload_content=False: the client cannot deserialize the Status it gets back.
            self.core.create_namespaced_pod_binding(m["name"], m["namespace"], body,
                                                    _preload_content=False)
        except ApiException as exc:
            if exc.status not in (404, 409):
                log.warning("binding %s/%s failed: %s", m["namespace"], m["name"], exc.status)

    def handle(self, kind: str, pod: dict[str, Any]) -> None:
        m, spec = pod["metadata"], pod["spec"]
        key = f"{m['namespace']}/{m['name']}/{m['uid']}"
        if not spec.get("nodeName"):
            if kind != "DELETED" and not m.get("deletionTimestamp") and self._matches(pod):
                self._bind(pod)
            return
        if spec["nodeName"] != self.name:
            return
        worker = self.workers.get(key)
        if kind == "DELETED":
            if worker:
                worker.terminate(0, delete=False)
                self.workers.pop(key, None)
            return
        phase = (pod.get("status") or {}).get("phase")
        if worker is None:
            if m.get("deletionTimestamp"):
                self._finalize_unknown(pod)
                return
            if phase in ("Succeeded", "Failed"):
                return
            worker = PodWorker(node=self, pod=pod, ip=self.ips.take(container_ports(pod)))
            self.workers[key] = worker
            worker.start()
        elif m.get("deletionTimestamp") and not worker.stop_event.is_set():
            worker.pod["metadata"]["deletionTimestamp"] = m["deletionTimestamp"]
            worker.terminate(float(m.get("deletionGracePeriodSeconds") or 0))

    def _finalize_unknown(self, pod: dict[str, Any]) -> None:
        m = pod["metadata"]
        try:
            self.core.delete_namespaced_pod(m["name"], m["namespace"], grace_period_seconds=0)
        except ApiException:
            pass

    def _watch_pods(self) -> None:
        resource_version = ""
        while not self.stopping.is_set():
            try:
                if not resource_version:
                    pods = self.core.list_pod_for_all_namespaces()
                    resource_version = pods.metadata.resource_version
                    for pod in pods.items:
                        self.handle("ADDED", self.api.sanitize_for_serialization(pod))
                w = watch.Watch()
                for event in w.stream(self.core.list_pod_for_all_namespaces,
                                      resource_version=resource_version,
                                      timeout_seconds=120, allow_watch_bookmarks=True):
                    if event["type"] == "ERROR":
                        resource_version = ""
                        break
                    # Bookmarks arrive as plain dicts, pods as models: normalise to dicts.
                    obj = self.api.sanitize_for_serialization(event["object"])
                    resource_version = obj["metadata"]["resourceVersion"]
                    if event["type"] == "BOOKMARK":
                        continue
                    self.handle(event["type"], obj)
                    if self.stopping.is_set():
                        break
            except ApiException as exc:
                if exc.status == 410:
                    resource_version = ""
                    continue
                log.warning("pod watch failed: %s", exc)
                time.sleep(1)
            except Exception as exc:
                if self.stopping.is_set():
                    return
                log.warning("pod watch failed: %s", exc)
                time.sleep(1)

    def run(self) -> None:
        self.register()
        self._renew_lease()
        threading.Thread(target=self._heartbeat, name="heartbeat", daemon=True).start()
        threading.Thread(target=self._watch_pods, name="pod-watch", daemon=True).start()
        log.info("node %s ready", self.name)
        self.stopping.wait()
        for worker in list(self.workers.values()):
            worker.terminate(5, delete=False)
        for worker in list(self.workers.values()):
            if worker.thread:
                worker.thread.join(timeout=15)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kubeconfig", required=True)
    parser.add_argument("--workdir", required=True, type=Path)
    parser.add_argument("--name", default=NODE_NAME)
    parser.add_argument("--crashloop-base", type=float, default=10.0,
                        help="first CrashLoopBackOff delay in seconds (kubelet: 10)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(threadName)s %(message)s")
    node = LocalNode(args.kubeconfig, args.workdir, args.name, backoff_base=args.crashloop_base)
    signal.signal(signal.SIGTERM, lambda *_: node.stopping.set())
    signal.signal(signal.SIGINT, lambda *_: node.stopping.set())
    node.run()


if __name__ == "__main__":
    main()
