"""Running the operator by hand (`make run`): a taken port is one clear line, and next to
another operator on the same Lease it says it waits."""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Callable

from opkit import Kit, Operator
from test_leader import _leader

from switchboard_testkit.cluster import Cluster
from switchboard_testkit.controlplane import wait_for


def test_a_taken_health_port_ends_the_operator_with_one_line(
        kit: Kit, cluster: Cluster, operator_env: dict[str, str]) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run(
            [sys.executable, "-m", "switchboard_operator.main", "--namespace", kit.ns,
             "--health-address", "127.0.0.1", "--health-port", str(port),
             "--metrics-address", "127.0.0.1", "--metrics-port", "0"],
            env=operator_env, capture_output=True, text=True, timeout=60)
    assert done.returncode != 0
    lines = [line for line in (done.stdout + done.stderr).splitlines() if line.strip()]
    assert len(lines) == 1, lines
    assert f"127.0.0.1:{port}" in lines[0] and "--health-port" in lines[0]
    assert "Traceback" not in done.stderr


def test_a_second_operator_on_the_same_lease_says_it_waits(
        kit: Kit, start_operator: Callable[..., Operator]) -> None:
    a, b = start_operator("a"), start_operator("b")
    leader = _leader(a, b)
    follower = b if leader is a else a
    def said() -> list[str]:
        return [line for line in follower.tail(400).splitlines() if "is held by" in line]

    wait_for(said, 15, "the follower to say it waits")
    wait_for(lambda: leader.metric("switchboard_reconciles_total") >= 0 and
             follower.metric("switchboard_operator_api_requests_total", verb="GET") >= 4,
             20, "a few more Lease reads by the follower")
    lines = said()
    assert len(lines) == 1 and leader.identity in lines[0]  # once, not every retry
