"""The operator does not trust a "connected" report it cannot have received: when the gateway
Deployment has no available pod, Ready says so (GatewayUnavailable) instead of repeating the
last report. Real pods: a gateway connected to the fake Bot API is frozen (SIGSTOP), so it can
neither report nor pass its readiness probe, exactly like a gateway whose token died with its
ServiceAccount."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from collections.abc import Callable

from opkit import Kit, Operator, gateway_pid, secret, spawn_fake, telegram_conn

from switchboard_contract import Field
from switchboard_testkit.cluster import Cluster
from switchboard_testkit.net import free_port

TOKEN = "555000333:AAstaleREPORTcrossCHECKtest_abcdefgh"


def test_a_frozen_gateway_is_not_reported_connected(
        kit: Kit, cluster: Cluster, start_operator: Callable[..., Operator],
        processes: list[subprocess.Popen[str]]) -> None:
    start_operator("op", "--unavailable-grace=3")
    api, control = free_port(), free_port()
    processes.append(spawn_fake(cluster, "switchboard_testkit.fake_telegram", f"--port={api}",
                            f"--control-port={control}", f"--token={TOKEN}"))
    kit.core.create_namespaced_secret(kit.ns, secret("tg", token=TOKEN))
    kit.create(telegram_conn("stale", apiBaseURL=f"http://127.0.0.1:{api}/bot",
                             gateway={}))  # on the local node: a real gateway process
    kit.wait_ready("stale", "True", "Connected", timeout=90)
    pod = kit.one_pod("stale")
    pid = gateway_pid(pod)
    os.killpg(pid, signal.SIGSTOP)
    try:
        ready = kit.wait_ready("stale", "False", "GatewayUnavailable", timeout=45)
        # What the gateway last wrote still says connected: only the cross-check knows better.
        assert kit.status("stale")[Field.STATE] == "connected"
        assert pod.metadata.name in ready["message"], ready
        delivering = next(c for c in kit.status("stale")["conditions"]
                          if c["type"] == "Delivering")
        assert delivering["status"] == "Unknown"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGCONT)
    kit.wait_ready("stale", "True", "Connected", timeout=90)
