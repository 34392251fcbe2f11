"""Control plane plus local node: one object the fixture, the CLI and the demo start and stop."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol, TypeVar

from kubernetes import client, config

from switchboard_testkit.binaries import Binaries
from switchboard_testkit.controlplane import ControlPlane, State, log_tails, stop_all, wait_for
from switchboard_testkit.localnode import NODE_NAME


class ClusterClients:
    """kubectl, the Python client and log tails of a cluster: the local and the real node's."""

    workdir: Path
    binaries: Binaries

    @property
    def kubeconfig(self) -> Path:
        raise NotImplementedError

    def env(self) -> dict[str, str]:
        raise NotImplementedError

    def api_client(self) -> client.ApiClient:
        cfg = client.Configuration()
        config.load_kube_config(config_file=str(self.kubeconfig), client_configuration=cfg)
        return client.ApiClient(cfg)

    def kubectl(self, *args: str, check: bool = True, input: str | None = None,
                timeout: float = 60) -> subprocess.CompletedProcess[str]:
        done = subprocess.run([str(self.binaries.kubectl), *args], env=self.env(), text=True,
                              capture_output=True, input=input, timeout=timeout)
        if check and done.returncode:
            error = subprocess.CalledProcessError(done.returncode, done.args, done.stdout,
                                                  done.stderr)
            error.add_note(f"kubectl said: {done.stderr.strip()}")  # shown by pytest
            raise error
        return done

    def log_tails(self, lines: int = 40) -> str:
        return log_tails(self.workdir, lines)


class Startable(Protocol):
    def start(self) -> object: ...
    def stop(self) -> None: ...
    def log_tails(self, lines: int = 40) -> str: ...


C = TypeVar("C", bound=Startable)


@contextlib.contextmanager
def running(cluster: C) -> Iterator[C]:
    """Start, yield, stop; on a failed start print every component's last log lines."""
    try:
        cluster.start()
    except Exception:
        print(cluster.log_tails())
        cluster.stop()
        raise
    try:
        yield cluster
    finally:
        cluster.stop()


class Cluster(ClusterClients):
    def __init__(self, workdir: Path, binaries: Binaries | None = None,
                 crashloop_base: float = 10.0) -> None:
        self.workdir = workdir.resolve()
        self.binaries = binaries or Binaries.ensure()
        self.plane = ControlPlane(self.workdir, self.binaries)
        self.crashloop_base = crashloop_base
        self.timings: dict[str, float] = {}

    @property
    def kubeconfig(self) -> Path:
        return self.plane.kubeconfig

    def env(self) -> dict[str, str]:
        """Environment for subprocesses: this cluster's kubeconfig, pinned kubectl/helm first."""
        # The venv's bin first: pods on the local node run `switchboard-gateway` and
        # `switchboard-operator` from it, even when this venv was never activated.
        venv_bin = str(Path(sys.executable).parent)
        path = os.pathsep.join([venv_bin, *self.binaries.path_dirs, os.environ.get("PATH", "")])
        return {**os.environ, "KUBECONFIG": str(self.kubeconfig), "PATH": path}

    def start(self, timeout: float = 120.0) -> State:
        state = self.plane.start(timeout)
        t0 = time.monotonic()
        self.plane._spawn("local-node", [
            sys.executable, "-m", "switchboard_testkit.localnode",
            f"--kubeconfig={self.kubeconfig}", f"--workdir={self.workdir}",
            f"--crashloop-base={self.crashloop_base}",
        ], env=self.env())
        core = client.CoreV1Api(self.api_client())
        wait_for(lambda: node_ready(core, NODE_NAME), timeout, f"node {NODE_NAME} Ready")
        self.timings = {**self.plane.timings, "local-node": time.monotonic() - t0}
        return state

    def stop(self) -> None:
        stop_all(self.plane.state or State.load(self.workdir))

    def attach(self, state: State) -> None:
        """Use a cluster an earlier process started (the demo run twice)."""
        self.plane.state = state

def node_ready(core: client.CoreV1Api, name: str) -> bool:
    node = core.read_node(name)
    return any(c.type == "Ready" and c.status == "True" for c in node.status.conditions or [])
