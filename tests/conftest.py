"""Session fixtures: one real control plane plus local node per test session, fresh namespaces."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest
from kubernetes import client

from switchboard_testkit.binaries import Binaries
from switchboard_testkit.cluster import Cluster, running


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """etcd + kube-apiserver + kube-controller-manager + local node, on loopback.

    The node's CrashLoopBackOff starts at 1 s (kubelet: 10 s) so restart tests stay short; it is
    a node setting, like a kubelet flag, not a code path of the project under test.
    """
    workdir = tmp_path_factory.mktemp("cluster")
    base = float(os.environ.get("SWITCHBOARD_CRASHLOOP_BASE", "1"))
    with running(Cluster(workdir, crashloop_base=base)) as c:
        yield c


@pytest.fixture(scope="session")
def binaries() -> Binaries:
    """The pinned tools (helm, promtool, prometheus, ...) without starting a cluster."""
    return Binaries.ensure()


@pytest.fixture(scope="session")
def api(cluster: Cluster) -> client.ApiClient:
    return cluster.api_client()


@pytest.fixture
def namespace(cluster: Cluster, api: client.ApiClient) -> Iterator[str]:
    """A fresh namespace per test (with its default ServiceAccount), removed afterwards."""
    name = f"t-{uuid.uuid4().hex[:8]}"
    core = client.CoreV1Api(api)
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    yield name
    core.delete_namespace(name, propagation_policy="Background")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):
    """When a test that used the cluster fails, attach the tail of every component's log."""
    outcome = yield
    report = outcome.get_result()
    if report.failed and "cluster" in getattr(item, "fixturenames", ()):
        c = item.funcargs.get("cluster") if hasattr(item, "funcargs") else None
        if isinstance(c, Cluster):
            report.sections.append(("control-plane logs", c.log_tails(30)))
