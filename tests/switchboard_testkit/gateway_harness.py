"""Harness for gateway tests (shared by the Telegram and QQ suites): a PlatformConnection with
its gateway's least-privilege credentials and a recorded status history, and the gateway as a
subprocess. Fixtures in tests/gateway/conftest.py wrap these.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client, watch
from kubernetes.client.rest import ApiException

from switchboard_testkit.cluster import Cluster
from switchboard_testkit.controlplane import wait_for
from switchboard_testkit.net import free_port

GROUP, VERSION, PLURAL = "switchboard.dev", "v1alpha1", "platformconnections"
AUDIENCE = "https://kubernetes.default.svc.cluster.local"
GATEWAY_BIN = Path(sys.executable).with_name("switchboard-gateway")


def install_crd(cluster: Cluster, path: Path, timeout: float = 60.0) -> None:
    """kubectl apply the CRD (idempotent) and wait until it is Established and served."""
    cluster.kubectl("apply", "-f", str(path))

    def established() -> bool:
        out = cluster.kubectl(
            "get", f"crd/{PLURAL}.{GROUP}", "-o",
            "jsonpath={.status.conditions[?(@.type=='Established')].status}", check=False)
        if out.stdout.strip() != "True":
            return False
        # Discovery lags a little behind the condition: wait until the resource is listable.
        return cluster.kubectl("get", PLURAL, "-A", check=False).returncode == 0

    wait_for(established, timeout, f"CRD {PLURAL}.{GROUP} established")


@dataclass
class StatusEvent:
    at: float  # time.monotonic() when the watch delivered it
    status: dict[str, Any]


@dataclass
class PConn:
    """One PlatformConnection plus the least-privilege credentials of its gateway."""

    name: str
    namespace: str
    platform: str
    kubeconfig: Path
    api: client.ApiClient
    history: list[StatusEvent] = field(default_factory=list)
    _stop_watch: threading.Event = field(default_factory=threading.Event)
    _watching: bool = False

    @property
    def custom(self) -> client.CustomObjectsApi:
        return client.CustomObjectsApi(self.api)

    def get(self) -> dict[str, Any]:
        return self.custom.get_namespaced_custom_object(
            GROUP, VERSION, self.namespace, PLURAL, self.name)

    def status(self) -> dict[str, Any]:
        return self.get().get("status") or {}

    async def wait_status(self, predicate: Callable[[dict[str, Any]], bool],
                          timeout: float = 15.0, what: str = "status") -> dict[str, Any]:  # noqa: ASYNC109
        """Poll the API server (in a thread: the fakes share this event loop) until
        ``predicate(status)`` holds."""
        deadline = time.monotonic() + timeout
        last: dict[str, Any] = {}
        while time.monotonic() < deadline:
            last = await asyncio.to_thread(self.status)
            if predicate(last) and self._recorded(last):
                return last
            await asyncio.sleep(0.05)
        raise TimeoutError(f"{what} not reached within {timeout}s; last status: {last}")

    def _recorded(self, status: dict[str, Any]) -> bool:
        """A GET can be ahead of the watch: callers also read `history`, so only report a
        status once the watch has delivered it too (when a watch runs)."""
        if not self._watching:
            return True
        return any(e.status == status for e in reversed(self.history))

    async def wait_state(self, state: str, timeout: float = 15.0, **fields: Any) -> dict[str, Any]:  # noqa: ASYNC109
        def match(s: dict[str, Any]) -> bool:
            return s.get("state") == state and all(s.get(k) == v for k, v in fields.items())

        return await self.wait_status(match, timeout, f"state {state} {fields}")

    def env(self, *, pod: str = "gw-0", **extra: str) -> dict[str, str]:
        """Environment of a gateway for this connection, as the operator's pod template sets it
        (minus the platform credentials and backend, which the test adds)."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("SWITCHBOARD_")}
        env.pop("KUBERNETES_SERVICE_HOST", None)
        env.update({
            "KUBECONFIG": str(self.kubeconfig),
            "SWITCHBOARD_CONNECTION": self.name,
            "SWITCHBOARD_NAMESPACE": self.namespace,
            "SWITCHBOARD_PLATFORM": self.platform,
            "SWITCHBOARD_POD_NAME": pod,
            "SWITCHBOARD_BIND_ADDRESS": "127.0.0.1",
            "SWITCHBOARD_HEALTH_PORT": str(free_port()),
            "SWITCHBOARD_METRICS_PORT": str(free_port()),
            "PTB_TIMEDELTA": "true",
        })
        env.update(extra)
        return env

    def states(self) -> list[str]:
        return [e.status.get("state", "") for e in self.history]

    # The watch runs in a thread and records every status change with its arrival time.
    def start_watch(self) -> None:
        self._watching = True
        threading.Thread(target=self._watch, daemon=True, name=f"watch-{self.name}").start()

    def stop_watch(self) -> None:
        self._stop_watch.set()

    def _watch(self) -> None:
        rv = None
        last: dict[str, Any] | None = None
        while not self._stop_watch.is_set():
            w = watch.Watch()
            try:
                for event in w.stream(
                        self.custom.list_namespaced_custom_object, GROUP, VERSION,
                        self.namespace, PLURAL, field_selector=f"metadata.name={self.name}",
                        resource_version=rv, timeout_seconds=5):
                    obj = event["object"]
                    rv = obj["metadata"]["resourceVersion"]
                    status = obj.get("status") or {}
                    if status != last:
                        last = status
                        self.history.append(StatusEvent(time.monotonic(), status))
                    if self._stop_watch.is_set():
                        break
            except ApiException as exc:
                if exc.status == 410:
                    rv = None
                else:
                    time.sleep(0.2)
            except Exception:
                time.sleep(0.2)
            finally:
                w.stop()


def pconn_spec(platform: str, **overrides: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {"platform": platform, "backend": {"echo": True}}
    if platform == "telegram":
        spec["telegram"] = {"tokenSecretRef": {"name": "bot-token"}}
    else:
        spec["qqbot"] = {"credentialsSecretRef": {"name": "bot-credentials"}}
    spec.update(overrides)
    return spec


def least_privilege_kubeconfig(cluster: Cluster, api: client.ApiClient, namespace: str,
                                name: str, directory: Path) -> Path:
    core, rbac = client.CoreV1Api(api), client.RbacAuthorizationV1Api(api)
    sa = f"gateway-{name}"[:63]
    core.create_namespaced_service_account(namespace, client.V1ServiceAccount(
        metadata=client.V1ObjectMeta(name=sa)))
    rbac.create_namespaced_role(namespace, client.V1Role(
        metadata=client.V1ObjectMeta(name=sa),
        rules=[
            client.V1PolicyRule(api_groups=[GROUP], resources=[PLURAL],
                                resource_names=[name], verbs=["get"]),
            client.V1PolicyRule(api_groups=[GROUP], resources=[f"{PLURAL}/status"],
                                resource_names=[name], verbs=["patch"]),
        ]))
    rbac.create_namespaced_role_binding(namespace, client.V1RoleBinding(
        metadata=client.V1ObjectMeta(name=sa),
        role_ref=client.V1RoleRef(api_group="rbac.authorization.k8s.io", kind="Role", name=sa),
        subjects=[client.RbacV1Subject(kind="ServiceAccount", name=sa,
                                       namespace=namespace)]))
    token = core.create_namespaced_service_account_token(
        sa, namespace, client.AuthenticationV1TokenRequest(spec=client.V1TokenRequestSpec(
            audiences=[AUDIENCE], expiration_seconds=3600))).status.token
    admin = yaml.safe_load(Path(cluster.kubeconfig).read_text())
    cluster_entry = admin["clusters"][0]["cluster"]
    path = directory / f"kubeconfig-{name}"
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "gateway",
        "clusters": [{"name": "cluster", "cluster": cluster_entry}],
        "users": [{"name": sa, "user": {"token": token}}],
        "contexts": [{"name": "gateway", "context": {
            "cluster": "cluster", "user": sa, "namespace": namespace}}],
    }))
    path.chmod(0o600)
    return path


class GatewayProcess:
    """``switchboard-gateway`` as a subprocess, logs in a file (scanned for secrets)."""

    def __init__(self, env: dict[str, str], log_path: Path) -> None:
        self.env = env
        self.log_path = log_path
        self._log = log_path.open("ab")
        self.proc = subprocess.Popen([str(GATEWAY_BIN)], env=env, stdout=self._log,
                                     stderr=subprocess.STDOUT, start_new_session=True)

    @property
    def health_url(self) -> str:
        return f"http://127.0.0.1:{self.env['SWITCHBOARD_HEALTH_PORT']}"

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.env['SWITCHBOARD_METRICS_PORT']}/metrics"

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace")

    def alive(self) -> bool:
        return self.proc.poll() is None

    async def http_get(self, url: str) -> tuple[int, str]:
        def get() -> tuple[int, str]:
            try:
                with urllib.request.urlopen(url, timeout=3) as r:
                    return r.status, r.read().decode()
            except urllib.error.HTTPError as exc:
                return exc.code, exc.read().decode()
        return await asyncio.to_thread(get)

    async def metrics(self) -> str:
        return (await self.http_get(self.metrics_url))[1]

    async def wait_serving(self, timeout: float = 20.0) -> None:  # noqa: ASYNC109
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.alive():
                raise RuntimeError(f"gateway exited {self.proc.returncode}:\n{self.logs()}")
            try:
                status, _ = await self.http_get(self.health_url + "/healthz")
                if status == 200:
                    return
            except OSError:
                pass
            await asyncio.sleep(0.1)
        raise TimeoutError("gateway health endpoint did not come up")

    async def terminate(self, timeout: float = 15.0) -> int:  # noqa: ASYNC109
        if self.alive():
            self.proc.send_signal(signal.SIGTERM)
        return await self.wait_exit(timeout)

    async def kill(self) -> int:
        if self.alive():
            self.proc.kill()
        return await self.wait_exit(5.0)

    async def wait_exit(self, timeout: float) -> int:  # noqa: ASYNC109
        deadline = time.monotonic() + timeout
        while self.alive():
            if time.monotonic() > deadline:
                raise TimeoutError(f"gateway still running after {timeout}s")
            await asyncio.sleep(0.05)
        self._log.close()
        return self.proc.returncode
