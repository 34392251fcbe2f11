"""Helpers of the real-node suites: fake platforms served inside the node, status waits."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from typing import Any

from switchboard_testkit import netns
from switchboard_testkit.controlplane import stop_pid, wait_for
from switchboard_testkit.net import free_port
from switchboard_testkit.realnode import RealNodeCluster

SYSTEM = "switchboard-system"
TOKEN = "424242:real-node-test-token"


class Fake:
    """A fake platform process: platform port inside the node, control port on host loopback."""

    def __init__(self, real: RealNodeCluster, module: str, *args: str) -> None:
        self.port, control = free_port(), free_port()
        self.control = f"http://127.0.0.1:{control}/_fake"
        log = open(real.workdir / "logs" / f"{module}-{self.port}.log", "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", f"switchboard_testkit.{module}", f"--port={self.port}",
             f"--control-port={control}", f"--node-holder={real.holder}", *args],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        wait_for(lambda: self.call("state", method="GET") is not None, 30, f"{module} up")

    @property
    def base(self) -> str:
        return f"http://{netns.NODE_IP}:{self.port}"

    def call(self, action: str, body: dict[str, Any] | None = None, method: str = "POST",
             timeout: float = 60) -> Any:
        data = json.dumps(body or {}).encode() if method == "POST" else None
        req = urllib.request.Request(f"{self.control}/{action}", data=data, method=method,
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return json.loads(resp.read() or b"null")

    def stop(self) -> None:
        stop_pid(self.proc.pid)


def wait_status(real: RealNodeCluster, ns: str, name: str, done: Callable[[dict[str, Any]], bool],
                timeout: float, what: str) -> dict[str, Any]:
    """Poll the connection's status until `done` holds (kubectl, as a user would see it)."""
    seen: dict[str, Any] = {}

    def check() -> bool:
        nonlocal seen
        out = real.kubectl("-n", ns, "get", "platformconnection", name, "-o", "json").stdout
        seen = json.loads(out).get("status", {})
        return done(seen)

    deadline = time.monotonic() + timeout
    try:
        wait_for(check, timeout, what, interval=0.5)
    except TimeoutError as exc:
        raise TimeoutError(f"{exc}; last status after {time.monotonic() - deadline + timeout:.0f}"
                           f"s: {json.dumps(seen)}") from None
    return seen


def telegram_connection(real: RealNodeCluster, ns: str, fake: Fake, backend_spec: dict[str, Any],
                        **spec: Any) -> None:
    real.kubectl("-n", ns, "create", "secret", "generic", "bot", f"--from-literal=token={TOKEN}")
    real.kubectl("-n", ns, "label", "secret", "bot", "switchboard.dev/credentials=true")
    pc = {"apiVersion": "switchboard.dev/v1alpha1", "kind": "PlatformConnection",
          "metadata": {"name": "bot", "namespace": ns},
          "spec": {"platform": "telegram", "apiBaseURL": f"{fake.base}/bot",
                   "telegram": {"tokenSecretRef": {"name": "bot"}, **spec.pop("telegram", {})},
                   "backend": backend_spec, **spec}}
    real.kubectl("apply", "-f", "-", input=json.dumps(pc))


def image_ref(real: RealNodeCluster) -> str:
    return real.images["switchboard"][0]


def echo_backend(real: RealNodeCluster, ns: str) -> str:
    """The project's echo backend as a Deployment behind a Service; its cluster DNS URL."""
    manifests = [
        {"apiVersion": "apps/v1", "kind": "Deployment",
         "metadata": {"name": "echo-backend", "namespace": ns},
         "spec": {"selector": {"matchLabels": {"app": "echo-backend"}},
                  "template": {"metadata": {"labels": {"app": "echo-backend"}}, "spec": {
                      "containers": [{
                          "name": "backend", "image": image_ref(real),
                          "imagePullPolicy": "IfNotPresent",
                          "command": ["python3", "-m", "switchboard_gateway.backend",
                                      "--host", "0.0.0.0", "--port", "8090"],
                          "ports": [{"name": "http", "containerPort": 8090}],
                          "readinessProbe": {"httpGet": {"path": "/healthz", "port": "http"},
                                             "periodSeconds": 1}}]}}}},
        {"apiVersion": "v1", "kind": "Service",
         "metadata": {"name": "echo-backend", "namespace": ns},
         "spec": {"selector": {"app": "echo-backend"},
                  "ports": [{"port": 80, "targetPort": "http"}]}},
    ]
    for m in manifests:
        real.kubectl("apply", "-f", "-", input=json.dumps(m))
    real.kubectl("-n", ns, "rollout", "status", "deployment/echo-backend", "--timeout=120s",
                 timeout=130)
    return f"http://echo-backend.{ns}.svc.cluster.local/relay"
