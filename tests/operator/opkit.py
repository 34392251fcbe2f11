"""Helpers for operator tests: run the operator as a process, act as the gateway, read state."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client, watch

from switchboard_operator.secrets import CREDENTIALS_LABEL, CREDENTIALS_VALUE
from switchboard_testkit.cluster import Cluster
from switchboard_testkit.controlplane import pid_alive, wait_for
from switchboard_testkit.net import free_port

REPO = Path(__file__).resolve().parents[2]
CRD = REPO / "crds" / "platformconnections.switchboard.dev.yaml"
CHART = REPO / "helm" / "switchboard"
GROUP, VERSION, PLURAL = "switchboard.dev", "v1alpha1", "platformconnections"
# Gateway pods that never run: no node carries this label. The Deployment and its pods exist
# (Pending) and are deleted and replaced as in production, but no real gateway process starts
# and competes with the test, which writes the gateway's status itself.
NO_NODE = {"switchboard.dev/test-no-such-node": "true"}
# The policy test operators run with: the fakes on 127.0.0.1 (plain http), and nodeSelector
# (NO_NODE above). Tests of the policy itself pass another --policy (the last one counts).
TEST_POLICY = json.dumps({"apiHosts": [], "insecureAPIHosts": ["127.0.0.1"],
                          "allowNodeSelector": True})


def now_rfc3339() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def early_in_a_second(window: float = 0.2) -> None:
    """Wait until the wall clock has just passed a whole second.

    Status times have second precision, so a report written at x.97 carries stateSince x and a
    1 s back-off is due at x+1, only 30 ms later: an operator that reacts after the due time
    restarts at once and never shows a nextRestartTime. Reporting early in a second leaves the
    operator most of a second to schedule, as a real 1 s back-off would."""
    wait_for(lambda: time.time() % 1 < window, 2, "the start of a second", interval=0.005)


def parse_time(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


class Operator:
    """`python -m switchboard_operator.main` as a child process, stopped by its PID."""

    def __init__(self, cluster: Cluster, namespace: str, name: str = "op",
                 extra: tuple[str, ...] = (), *, addresses: tuple[str, ...] = ("127.0.0.1",),
                 env: Mapping[str, str] | None = None, prefix: tuple[str, ...] = (),
                 identity: str | None = "") -> None:
        """``addresses``: where /healthz and /metrics bind; ``env``: the process environment
        (default: the cluster's); ``prefix``: a command that runs the operator (e.g. in a
        user namespace); ``identity``: --identity ("": a unique test one, None: none, so the
        operator picks its own)."""
        self.cluster, self.namespace, self.name = cluster, namespace, name
        self.metrics_port, self.health_port = free_port(), free_port()
        self.log_path = cluster.workdir / f"operator-{namespace}-{name}.log"
        self.extra = extra
        self.addresses = addresses
        self.env = dict(env) if env is not None else cluster.env()
        self.prefix = prefix
        self.identity = f"{name}-{os.getpid()}" if identity == "" else identity
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Operator:
        argv = [*self.prefix, sys.executable, "-m", "switchboard_operator.main",
                "--namespace", self.namespace, "--lease-namespace", self.namespace,
                "--metrics-port", str(self.metrics_port), "--health-port", str(self.health_port),
                *(f"--health-address={a}" for a in self.addresses),
                *(f"--metrics-address={a}" for a in self.addresses),
                *(["--identity", self.identity] if self.identity else []),
                "--policy", TEST_POLICY,
                # Gateway pods of NO_NODE never run, so their Deployment never has a pod
                # available: tests that write the gateway's reports themselves would see them
                # distrusted after 30 s. The cross-check's own tests pass a short grace.
                "--unavailable-grace=3600", *self.extra]
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, env=self.env,
                                     start_new_session=True)
        log.close()
        wait_for(self.healthy, 60, f"operator {self.name} /healthz")
        return self

    def healthy(self, address: str | None = None) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise RuntimeError(f"operator exited with {self.proc.returncode}:\n{self.tail()}")
        try:
            with urllib.request.urlopen(
                    f"http://{address or self.addresses[0]}:{self.health_port}/healthz",
                    timeout=2) as resp:
                return resp.status == 200
        except OSError:
            return False

    def health(self) -> dict[str, Any]:
        """The /healthz report (leader, connections cached)."""
        with urllib.request.urlopen(
                f"http://{self.addresses[0]}:{self.health_port}/healthz", timeout=5) as resp:
            return json.loads(resp.read())

    def pause(self) -> None:
        """SIGSTOP: the process holds its connections but reads and sends nothing."""
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGSTOP)

    def resume(self) -> None:
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGCONT)

    def metrics_text(self, address: str | None = None) -> str:
        with urllib.request.urlopen(
                f"http://{address or self.addresses[0]}:{self.metrics_port}/metrics",
                timeout=5) as resp:
            return resp.read().decode()  # type: ignore[no-any-return]

    def metrics(self, address: str | None = None) -> dict[str, float]:
        out: dict[str, float] = {}
        for line in self.metrics_text(address).splitlines():
            if line and not line.startswith("#"):
                key, _, value = line.rpartition(" ")
                out[key] = float(value)
        return out

    def metric(self, name: str, **labels: str) -> float:
        """The sum of a metric's samples, of those with all of ``labels`` if given."""
        wanted = [f'{k}="{v}"' for k, v in labels.items()]
        return sum(v for k, v in self.metrics().items() if k.split("{")[0] == name
                   and all(w in k for w in wanted))

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, sig)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(5)

    def kill(self) -> None:
        self.stop(signal.SIGKILL)
        assert self.proc is not None
        wait_for(lambda: not pid_alive(self.proc.pid), 10, "operator to die")

    def tail(self, lines: int = 60) -> str:
        if not self.log_path.exists():
            return "(no log)"
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])


def operator_rbac_kubeconfig(cluster: Cluster, api: client.ApiClient, namespace: str) -> Path:
    """A kubeconfig with exactly the rights the chart grants an operator that serves
    ``namespace`` (watchNamespaces mode: its ClusterRole bound in that namespace, discovery,
    the leader-election Role), so every operator test runs under the chart's RBAC rather than
    as cluster-admin. The chart's templates are applied as rendered."""
    rendered = subprocess.run(
        [str(cluster.binaries.helm), "template", "sb", str(CHART), "--namespace", namespace,
         "--set", f"watchNamespaces={{{namespace}}}", "--show-only",
         "templates/serviceaccount.yaml", "--show-only", "templates/rbac.yaml"],
        env=cluster.env(), capture_output=True, text=True, check=True).stdout
    cluster.kubectl("apply", "-f", "-", input=rendered)
    request = client.AuthenticationV1TokenRequest(spec=client.V1TokenRequestSpec(
        audiences=["https://kubernetes.default.svc.cluster.local"], expiration_seconds=3600))
    token = client.CoreV1Api(api).create_namespaced_service_account_token(
        "sb-switchboard", namespace, request).status.token
    admin = yaml.safe_load(cluster.kubeconfig.read_text())
    path = cluster.workdir / f"operator-{namespace}.kubeconfig"
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "operator",
        "clusters": admin["clusters"],
        "users": [{"name": "operator", "user": {"token": token}}],
        "contexts": [{"name": "operator", "context": {
            "cluster": admin["clusters"][0]["name"], "user": "operator",
            "namespace": namespace}}]}))
    path.chmod(0o600)
    return path


def spawn_fake(cluster: Cluster, *argv: str) -> subprocess.Popen[str]:
    """``python -m argv...`` (a fake platform or backend) in its own session, once it printed
    READY; the test's ``processes`` fixture stops it by PID."""
    proc = subprocess.Popen([sys.executable, "-m", *argv], env=cluster.env(), text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line.startswith("READY "), line
    return proc


def fake_control(port: int, action: str, body: dict[str, Any] | None = None) -> Any:
    """Call a fake's remote-control API (``/_fake/<action>``) and return its result."""
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(f"http://127.0.0.1:{port}/_fake/{action}", data=data,
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        return json.loads(resp.read())["result"]


def gateway_pid(pod: client.V1Pod) -> int:
    """The process of a pod's gateway container on the local node (containerID local://PID)."""
    statuses = pod.status.container_statuses or []
    container_id = next(s.container_id for s in statuses if s.name == "gateway")
    assert container_id.startswith("local://"), container_id
    return int(container_id.removeprefix("local://"))


def install_crd(cluster: Cluster) -> None:
    cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(CRD))
    cluster.kubectl("wait", "--for=condition=Established", "--timeout=60s",
                    "crd/platformconnections.switchboard.dev")


def telegram_conn(name: str, secret: str = "tg", **spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "apiVersion": f"{GROUP}/{VERSION}", "kind": "PlatformConnection",
        "metadata": {"name": name},
        "spec": {"platform": "telegram",
                 "telegram": {"tokenSecretRef": {"name": secret}},
                 "backend": {"echo": True},
                 "gateway": {"nodeSelector": NO_NODE},
                 "restartPolicy": {"initialDelaySeconds": 1, "maxDelaySeconds": 4}},
    }
    for key, value in spec.items():
        body["spec"][key] = value
    return body


def secret(name: str, **data: str) -> dict[str, Any]:
    """A credentials Secret, labelled so that the operator reads it."""
    return {"apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": name, "labels": {CREDENTIALS_LABEL: CREDENTIALS_VALUE}},
            "stringData": data or {"token": "123:abc"}}


class Kit:
    """API access for one test namespace."""

    def __init__(self, cluster: Cluster, api: client.ApiClient, namespace: str) -> None:
        self.cluster, self.api, self.ns = cluster, api, namespace
        self.core = client.CoreV1Api(api)
        self.apps = client.AppsV1Api(api)
        self.rbac = client.RbacAuthorizationV1Api(api)
        self.custom = client.CustomObjectsApi(api)

    def create(self, body: Mapping[str, Any]) -> dict[str, Any]:
        return self.custom.create_namespaced_custom_object(GROUP, VERSION, self.ns, PLURAL,
                                                           dict(body))

    def get(self, name: str) -> dict[str, Any]:
        return self.custom.get_namespaced_custom_object(GROUP, VERSION, self.ns, PLURAL, name)

    def patch(self, name: str, patch: Mapping[str, Any]) -> dict[str, Any]:
        return self.custom.patch_namespaced_custom_object(
            GROUP, VERSION, self.ns, PLURAL, name, dict(patch))

    def status(self, name: str) -> dict[str, Any]:
        return self.get(name).get("status") or {}

    def ready(self, name: str) -> dict[str, Any] | None:
        for c in self.status(name).get("conditions") or []:
            if c["type"] == "Ready":
                return c
        return None

    def wait_ready(self, name: str, status: str, reason: str | None = None,
                   timeout: float = 30) -> dict[str, Any]:
        def check() -> dict[str, Any] | None:
            c = self.ready(name)
            if c and c["status"] == status and (reason is None or c["reason"] == reason):
                return c
            return None
        return wait_for(check, timeout, f"{name} Ready={status} {reason or ''}")  # type: ignore

    def deployment(self, name: str) -> client.V1Deployment:
        return self.apps.read_namespaced_deployment(f"{name}-gateway", self.ns)

    def pods(self, name: str) -> list[client.V1Pod]:
        return [p for p in self.core.list_namespaced_pod(
            self.ns, label_selector=f"switchboard.dev/connection={name}").items
            if p.metadata.deletion_timestamp is None]

    def one_pod(self, name: str, exclude: set[str] = frozenset(),  # type: ignore[assignment]
                timeout: float = 30) -> client.V1Pod:
        def find() -> client.V1Pod | None:
            pods = [p for p in self.pods(name) if p.metadata.name not in exclude]
            return pods[0] if len(pods) == 1 else None
        return wait_for(find, timeout, f"one gateway pod of {name}")  # type: ignore

    def events(self, name: str, reason: str | None = None, at_least: int = 1,
               timeout: float = 10) -> list[client.CoreV1Event]:
        """Events of `name` (with `reason`), waiting until there are `at_least` of them:
        kopf posts Events from a background queue, a moment after the action they record."""
        def listed() -> list[client.CoreV1Event] | None:
            items = self.core.list_namespaced_event(
                self.ns, field_selector=f"involvedObject.name={name}").items
            found = [e for e in items if reason is None or e.reason == reason]
            return found if len(found) >= at_least else None
        return wait_for(listed, timeout, f"{at_least} {reason or ''} Event(s) of {name}")  # type: ignore[return-value]

    # -- acting as the gateway ---------------------------------------------------------------

    def gateway_token(self, name: str) -> str:
        req = client.AuthenticationV1TokenRequest(
            spec=client.V1TokenRequestSpec(
                audiences=["https://kubernetes.default.svc.cluster.local"],
                expiration_seconds=3600))
        resp = wait_for(lambda: self.core.create_namespaced_service_account_token(
            f"{name}-gateway", self.ns, req), 30, f"a token of ServiceAccount {name}-gateway")
        return resp.status.token  # type: ignore[attr-defined]

    def gateway_client(self, name: str) -> client.ApiClient:
        cfg = client.Configuration()
        cfg.host = self.api.configuration.host
        cfg.ssl_ca_cert = self.api.configuration.ssl_ca_cert
        token = self.gateway_token(name)
        # kubernetes>=36 reads BearerToken; older versions read authorization.
        cfg.api_key = {"BearerToken": token, "authorization": token}
        cfg.api_key_prefix = {"BearerToken": "Bearer", "authorization": "Bearer"}
        return client.ApiClient(cfg)

    def report(self, gw: client.ApiClient, name: str, state: str, *, pod: str,
               attempt: int = 0, max_attempts: int = 10, code: str | None = None,
               message: str = "", retryable: bool | None = None,
               since: str | None = None) -> dict[str, Any]:
        """Write the gateway-owned status fields exactly like the gateway: SSA on /status,
        field manager switchboard-gateway, with the gateway ServiceAccount's token."""
        status: dict[str, Any] = {
            "state": state, "attempt": attempt, "maxAttempts": max_attempts,
            "attempts": f"{attempt}/{max_attempts}", "stateSince": since or now_rfc3339(),
            "gatewayPod": pod,
        }
        if code is not None:
            status["lastError"] = {"code": code, "message": message,
                                   "retryable": bool(retryable)}
        body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "PlatformConnection",
                "metadata": {"name": name, "namespace": self.ns}, "status": status}
        return client.CustomObjectsApi(gw).patch_namespaced_custom_object_status(
            GROUP, VERSION, self.ns, PLURAL, name, body, field_manager="switchboard-gateway",
            force=True, _content_type="application/apply-patch+yaml")

    def fatal(self, gw: client.ApiClient, name: str, pod: str, retryable: bool = True,
              code: str = "telegram_network_error") -> dict[str, Any]:
        return self.report(gw, name, "fatal", pod=pod, attempt=10, code=code,
                           message="gave up after 10 attempts", retryable=retryable)


def kubectl_yaml(cluster: Cluster, obj: Mapping[str, Any], namespace: str,
                 check: bool = False) -> subprocess.CompletedProcess[str]:
    return cluster.kubectl("apply", "-n", namespace, "-f", "-", input=yaml.safe_dump(dict(obj)),
                           check=check)


def wait_gone(predicate: Any, timeout: float, what: str) -> None:
    wait_for(lambda: not predicate(), timeout, what)


def monotonic() -> float:
    return time.monotonic()


def _to_dict(obj: Any) -> Any:
    """Models (from the client) and plain dicts (custom objects) alike, as API JSON."""
    return _SERIALIZER.sanitize_for_serialization(obj)


_SERIALIZER = client.ApiClient()


class _RecordingWatch:
    """A watch in a daemon thread that hands every event to `on_event`; stopped with stop().

    The constructor lists first and the watch starts from that resourceVersion, so nothing
    that happens after construction is missed (a watch opened later in the thread could miss
    a short-lived state written before it connected)."""

    def __init__(self, list_fn: Any, *args: Any) -> None:
        self._watch = watch.Watch()
        listed = _to_dict(list_fn(*args))
        for item in listed.get("items", []):
            self.on_event({"type": "ADDED", "object": item, "listed": True})
        version = listed["metadata"]["resourceVersion"]

        def run() -> None:
            try:
                for ev in self._watch.stream(list_fn, *args, resource_version=version,
                                             timeout_seconds=600):
                    self.on_event(ev)
            except Exception:  # the namespace or the connection goes away at teardown
                pass

        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()

    def on_event(self, event: dict[str, Any]) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        self._watch.stop()


class PodWatch(_RecordingWatch):
    """Records when each gateway pod of a namespace started terminating or disappeared
    (wall clock), from a watch in a thread, so deletion times are measured, not polled."""

    def __init__(self, api: client.ApiClient, namespace: str) -> None:
        self.deleted: dict[str, float] = {}
        super().__init__(client.CoreV1Api(api).list_namespaced_pod, namespace)

    def on_event(self, event: dict[str, Any]) -> None:
        meta = _to_dict(event["object"])["metadata"]
        name = meta["name"]
        if name not in self.deleted and (event["type"] == "DELETED"
                                         or meta.get("deletionTimestamp")):
            self.deleted[name] = time.time()

    def wait_deleted(self, pod: str, timeout: float) -> float:
        return wait_for(lambda: self.deleted.get(pod), timeout,  # type: ignore[return-value]
                        f"pod {pod} deleted", interval=0.02)


class ConnWatch(_RecordingWatch):
    """Records every status a namespace's PlatformConnections went through (a watch in a
    thread), so a short-lived field such as nextRestartTime is never missed."""

    def __init__(self, api: client.ApiClient, namespace: str) -> None:
        self.history: list[tuple[str, dict[str, Any]]] = []
        super().__init__(client.CustomObjectsApi(api).list_namespaced_custom_object, GROUP,
                         VERSION, namespace, PLURAL)

    def on_event(self, event: dict[str, Any]) -> None:
        obj = event["object"]
        self.history.append((obj["metadata"]["name"], obj.get("status") or {}))

    def scheduled(self, name: str, since: str, timeout: float = 15) -> dict[str, Any]:
        """The first status of ``name`` with a nextRestartTime for the report at ``since``."""
        def find() -> dict[str, Any] | None:
            for n, s in list(self.history):
                if n == name and s.get("stateSince") == since and s.get("nextRestartTime"):
                    return s
            return None
        return wait_for(find, timeout, f"{name}: nextRestartTime for {since}")  # type: ignore
