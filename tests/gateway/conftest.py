"""Shared gateway fixtures (Telegram and QQ tests): the CRD, PlatformConnections with a
least-privilege ServiceAccount kubeconfig, and gateway processes.

The gateway writes with exactly the rights it has in production: `get` on its own
PlatformConnection, `get`/`patch` on that object's status, nothing else (resourceNames).
Helpers (PConn, GatewayProcess) live in switchboard_testkit.gateway_harness.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from switchboard_gateway.backend import EchoBackend
from switchboard_testkit.cluster import Cluster
from switchboard_testkit.fake_telegram import GATEWAY_TEST_TOKEN, FakeTelegram
from switchboard_testkit.gateway_harness import (
    GROUP,
    PLURAL,
    VERSION,
    GatewayProcess,
    PConn,
    install_crd,
    least_privilege_kubeconfig,
    pconn_spec,
)

REPO = Path(__file__).resolve().parents[2]
CRD = REPO / "crds" / "platformconnections.switchboard.dev.yaml"


@pytest.fixture(scope="session")
def crd(cluster: Cluster) -> None:
    """The PlatformConnection CRD, installed once per session and Established."""
    install_crd(cluster, CRD)


@pytest.fixture
def make_pconn(crd: None, cluster: Cluster, api: client.ApiClient, namespace: str,
               tmp_path: Path) -> Iterator[Callable[..., PConn]]:
    """Factory: ``make_pconn("telegram", **spec_overrides)`` creates a PlatformConnection and
    its gateway's least-privilege kubeconfig, and starts recording its status history."""
    made: list[PConn] = []

    def make(platform: str = "telegram", name: str | None = None, **overrides: Any) -> PConn:
        name = name or f"{platform}-{uuid.uuid4().hex[:6]}"
        client.CustomObjectsApi(api).create_namespaced_custom_object(
            GROUP, VERSION, namespace, PLURAL, {
                "apiVersion": f"{GROUP}/{VERSION}", "kind": "PlatformConnection",
                "metadata": {"name": name}, "spec": pconn_spec(platform, **overrides)})
        kubeconfig = least_privilege_kubeconfig(cluster, api, namespace, name, tmp_path)
        pconn = PConn(name, namespace, platform, kubeconfig, api)
        pconn.start_watch()
        made.append(pconn)
        return pconn

    yield make
    for pconn in made:
        pconn.stop_watch()


@pytest.fixture
def pconn(make_pconn: Callable[..., PConn]) -> PConn:
    """A Telegram PlatformConnection (echo backend) with its gateway credentials."""
    return make_pconn("telegram")


@pytest.fixture
async def gateway(tmp_path: Path) -> AsyncIterator[Callable[[dict[str, str]], GatewayProcess]]:
    """Factory starting gateway processes; whatever is still running at the end is killed."""
    started: list[GatewayProcess] = []

    def start(env: dict[str, str]) -> GatewayProcess:
        process = GatewayProcess(env, tmp_path / f"gateway-{len(started)}.log")
        started.append(process)
        return process

    yield start
    for process in started:
        if process.alive():
            process.proc.kill()
            process.proc.wait(5)


# The Telegram tests' fake Bot API (its one valid token) and echo backend; the QQ tests and the
# pod test define their own ``fake``.

@pytest.fixture
async def fake() -> AsyncIterator[FakeTelegram]:
    async with FakeTelegram(GATEWAY_TEST_TOKEN) as fake:
        yield fake


@pytest.fixture
async def backend() -> AsyncIterator[EchoBackend]:
    async with EchoBackend() as backend:
        yield backend
