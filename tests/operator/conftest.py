"""Operator fixtures: the CRD installed once, an operator process per test (namespaced)."""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from kubernetes import client
from opkit import Kit, Operator, install_crd, operator_rbac_kubeconfig

from switchboard_testkit.cluster import Cluster
from switchboard_testkit.controlplane import stop_pid

_STARTED: dict[str, list[Operator]] = {}


@pytest.fixture(scope="session")
def crd(cluster: Cluster) -> None:
    install_crd(cluster)


@pytest.fixture
def kit(cluster: Cluster, api: client.ApiClient, namespace: str, crd: None) -> Kit:
    return Kit(cluster, api, namespace)


@pytest.fixture
def operator_env(cluster: Cluster, api: client.ApiClient, namespace: str) -> dict[str, str]:
    """The environment of the test's operators: the cluster's, with a kubeconfig that holds
    only the chart's RBAC for this namespace."""
    return {**cluster.env(),
            "KUBECONFIG": str(operator_rbac_kubeconfig(cluster, api, namespace))}


@pytest.fixture
def start_operator(request: pytest.FixtureRequest, cluster: Cluster, namespace: str,
                   crd: None, operator_env: dict[str, str]
                   ) -> Iterator[Callable[..., Operator]]:
    """Start operators for the test's namespace, under the chart's RBAC; all are stopped (by
    PID) afterwards."""
    started = _STARTED.setdefault(request.node.nodeid, [])

    def start(name: str = "op", *extra: str, **options: Any) -> Operator:
        options.setdefault("env", operator_env)
        op = Operator(cluster, namespace, name, extra, **options)
        started.append(op)
        return op.start()

    yield start
    for op in started:
        op.stop()


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[str]]]:
    """Helper processes a test starts (fake platforms, backends); stopped by PID after it."""
    started: list[subprocess.Popen[str]] = []
    yield started
    for proc in started:
        stop_pid(proc.pid)


@pytest.fixture
def operator(start_operator: Callable[..., Operator]) -> Operator:
    return start_operator()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):
    """On failure, show the tail of each operator's log of that test."""
    outcome = yield
    report = outcome.get_result()
    ops = _STARTED.get(item.nodeid, [])
    if report.failed:
        for op in ops:
            report.sections.append((f"operator {op.name} log", op.tail(80)))
    if report.when == "teardown":
        _STARTED.pop(item.nodeid, None)
