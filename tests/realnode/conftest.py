"""Session fixtures for the suites that need a real kubelet: one RealNodeCluster per session
(realnode.py), the chart installed once with its default image, fresh namespaces."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from realkit import SYSTEM, Fake

from switchboard_testkit import diagnose, realnode
from switchboard_testkit.binaries import REPO
from switchboard_testkit.cluster import running
from switchboard_testkit.realnode import RealNodeCluster


@pytest.fixture(scope="session")
def real(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RealNodeCluster]:
    with running(RealNodeCluster(tmp_path_factory.mktemp("realnode"))) as c:
        print(f"real node up: {', '.join(f'{k} {v:.1f}s' for k, v in c.timings.items())}")
        yield c


@pytest.fixture(scope="session")
def chart(real: RealNodeCluster) -> str:
    """The chart with its defaults (the image `make image` built), as a user installs it."""
    diagnose.run_watching(
        [str(real.binaries.helm), "upgrade", "--install", "switchboard",
         str(REPO / "helm/switchboard"), "--namespace", SYSTEM, "--create-namespace",
         *realnode.CHART_VALUES, "--wait", "--timeout", "3m"],
        env=real.env(), core=core(real), namespaces=[SYSTEM], workdir=real.workdir,
        timeout=240)
    return SYSTEM


def core(real: RealNodeCluster) -> Any:
    from kubernetes import client

    return client.CoreV1Api(real.api_client())


@pytest.fixture
def ns(real: RealNodeCluster) -> Iterator[str]:
    name = f"r-{uuid.uuid4().hex[:8]}"
    real.kubectl("create", "namespace", name)
    yield name
    real.kubectl("delete", "namespace", name, "--wait=false", check=False)


@pytest.fixture
def fake_telegram(real: RealNodeCluster) -> Iterator[Callable[..., Fake]]:
    made: list[Fake] = []

    def make(token: str, *args: str) -> Fake:
        fake = Fake(real, "fake_telegram", f"--token={token}", *args)
        made.append(fake)
        return fake

    yield make
    for fake in made:
        fake.stop()


