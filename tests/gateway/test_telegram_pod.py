"""The gateway as a real Pod on the local node, configured exactly as the operator's pod template
does (env contract of docs/design.md: secretKeyRef token, downward-API pod name and IP, its own
ServiceAccount), with kubelet readiness and liveness probes on the health port."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from kubernetes import client

from switchboard_testkit.cluster import Cluster
from switchboard_testkit.fake_telegram import FakeTelegram
from switchboard_testkit.gateway_harness import GATEWAY_BIN, PConn
from switchboard_testkit.localnode import pod_dir
from switchboard_testkit.net import free_port

pytestmark = pytest.mark.cluster

TOKEN = "888000111:AApodTOKENforTHEswitchboardGATEWAY_xy"


@pytest.fixture
async def fake() -> AsyncIterator[FakeTelegram]:
    async with FakeTelegram(TOKEN) as fake:
        yield fake


def gateway_pod(pconn: PConn, fake: FakeTelegram) -> dict[str, Any]:
    health_port = free_port()

    def field(path: str) -> dict[str, Any]:
        return {"fieldRef": {"fieldPath": path}}

    env = [
        {"name": "SWITCHBOARD_CONNECTION", "value": pconn.name},
        {"name": "SWITCHBOARD_NAMESPACE", "value": pconn.namespace},
        {"name": "SWITCHBOARD_PLATFORM", "value": "telegram"},
        {"name": "SWITCHBOARD_API_BASE_URL", "value": fake.base_url},
        {"name": "SWITCHBOARD_BACKEND_ECHO", "value": "true"},
        {"name": "SWITCHBOARD_RECONNECT", "value": json.dumps(
            {"maxAttempts": 3, "initialDelaySeconds": 1, "maxDelaySeconds": 1})},
        {"name": "SWITCHBOARD_TELEGRAM_TOKEN",
         "valueFrom": {"secretKeyRef": {"name": "bot-token", "key": "token"}}},
        {"name": "SWITCHBOARD_POD_NAME", "valueFrom": field("metadata.name")},
        {"name": "SWITCHBOARD_BIND_ADDRESS", "valueFrom": field("status.podIP")},
        # Production uses 8080/9090 on the pod's own IP. Test sessions running side by side on
        # this machine each have a local node handing out the same 127.1.x.y addresses, so the
        # ports are made unique here (the probes follow them).
        {"name": "SWITCHBOARD_HEALTH_PORT", "value": str(health_port)},
        {"name": "SWITCHBOARD_METRICS_PORT", "value": str(free_port())},
    ]
    probe = {"periodSeconds": 1, "failureThreshold": 1, "timeoutSeconds": 2}
    return {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": f"{pconn.name}-gateway", "labels": {"app": "gateway"}},
        "spec": {
            "serviceAccountName": f"gateway-{pconn.name}",
            "terminationGracePeriodSeconds": 10,
            "containers": [{
                "name": "gateway", "image": "switchboard-gateway:dev",
                "command": [str(GATEWAY_BIN)], "env": env,
                "readinessProbe": {"httpGet": {"path": "/readyz", "port": health_port}, **probe},
                "livenessProbe": {"httpGet": {"path": "/healthz", "port": health_port},
                                  **probe, "failureThreshold": 3},
            }],
        },
    }


async def pod_status(core: client.CoreV1Api, namespace: str, name: str) -> client.V1PodStatus:
    return (await asyncio.to_thread(core.read_namespaced_pod, name, namespace)).status


async def wait_ready(core: client.CoreV1Api, namespace: str, name: str, ready: bool,
                     timeout: float = 20.0) -> client.V1PodStatus:  # noqa: ASYNC109
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = await pod_status(core, namespace, name)
        statuses = status.container_statuses or []
        if status.phase == "Running" and statuses and statuses[0].ready is ready:
            return status
        await asyncio.sleep(0.2)
    raise TimeoutError(f"pod {name} not ready={ready} within {timeout}s")


async def test_gateway_pod_reports_serves_probes_and_stays_up_when_fatal(
        pconn: PConn, fake: FakeTelegram, api: client.ApiClient, cluster: Cluster) -> None:
    core = client.CoreV1Api(api)
    core.create_namespaced_secret(pconn.namespace, {"metadata": {"name": "bot-token"},
                                                    "stringData": {"token": TOKEN}})
    pod = gateway_pod(pconn, fake)
    name = pod["metadata"]["name"]
    core.create_namespaced_pod(pconn.namespace, pod)

    try:
        status = await pconn.wait_state("connected", timeout=30, gatewayPod=name)
    except TimeoutError:
        log = pod_dir(cluster.workdir, pconn.namespace, name) / "gateway.log"
        phase = (await pod_status(core, pconn.namespace, name)).to_dict()
        raise AssertionError(f"pod status: {phase}\nlog:\n"
                             f"{log.read_text() if log.exists() else '(none)'}") from None
    assert status["attempts"] == "0/3"
    await wait_ready(core, pconn.namespace, name, True)
    fake.inject_message(77, "from a pod")
    sent = await fake.wait_for_sent(lambda m: m.chat_id == 77, 10)
    assert sent.text == "echo: from a pod"

    # A revoked token: fatal, not ready, but alive: the kubelet does not restart it.
    fake.revoke_token()
    status = await pconn.wait_state("fatal", timeout=10)
    assert status["lastError"] == {
        "code": "telegram_invalid_token", "retryable": False,
        "message": status["lastError"]["message"]}
    pod_state = await wait_ready(core, pconn.namespace, name, False)
    await asyncio.sleep(4)  # three liveness periods
    pod_state = await pod_status(core, pconn.namespace, name)
    assert pod_state.phase == "Running" and pod_state.container_statuses[0].restart_count == 0

    # Deleting the pod (SIGTERM) keeps the fatal error for the operator.
    await asyncio.to_thread(core.delete_namespaced_pod, name, pconn.namespace)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        pods = await asyncio.to_thread(core.list_namespaced_pod, pconn.namespace)
        if not pods.items:
            break
        await asyncio.sleep(0.2)
    assert pconn.status()["state"] == "fatal"
    assert TOKEN.split(":", 1)[1] not in json.dumps(pconn.status())
