"""One poller per token, with real pods: the operator, gateway pods on the local node, the fake
Bot API (which records every getUpdates span). A gateway pod is frozen (SIGSTOP: a node under
memory pressure, a stopped container) and deleted by hand; its replacement starts at once, while
the frozen pod's long poll is still open. Without the poller fence the two polls overlap (a 409
Conflict on the real Bot API); with it the replacement waits for the Lease."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from typing import Any

from kubernetes import client
from opkit import Kit, Operator, fake_control, gateway_pid, secret, spawn_fake, telegram_conn

from switchboard_contract import Field
from switchboard_testkit.cluster import Cluster
from switchboard_testkit.controlplane import wait_for
from switchboard_testkit.net import free_port

TOKEN = "555000222:AAfenceTOKENforTHEpollerLEASEtest_zz"


def test_a_frozen_pod_deleted_by_hand_never_polls_beside_its_replacement(
        kit: Kit, cluster: Cluster, operator: Operator,
        processes: list[subprocess.Popen[str]]) -> None:
    api, control = free_port(), free_port()
    processes.append(spawn_fake(cluster, "switchboard_testkit.fake_telegram", f"--port={api}",
                            f"--control-port={control}", f"--token={TOKEN}"))
    kit.core.create_namespaced_secret(kit.ns, secret("tg", token=TOKEN))
    kit.create(telegram_conn(
        "fence", apiBaseURL=f"http://127.0.0.1:{api}/bot",
        telegram={"tokenSecretRef": {"name": "tg"},
                  "reconnect": {"initialDelaySeconds": 1, "maxDelaySeconds": 2}},
        gateway={}))  # on the local node: real gateway processes
    kit.wait_ready("fence", "True", "Connected", timeout=90)
    old = kit.one_pod("fence")
    wait_for(lambda: fake_control(control, "calls")["counts"].get("getUpdates", 0) >= 2, 30,
             "the first pod long-polling")

    pid = gateway_pid(old)
    os.killpg(pid, signal.SIGSTOP)  # its long poll stays open
    try:
        kit.core.delete_namespaced_pod(old.metadata.name, kit.ns, grace_period_seconds=5)
        new = kit.one_pod("fence", exclude={old.metadata.name}, timeout=30)
        wait_for(lambda: (kit.status("fence").get(Field.GATEWAY_POD) == new.metadata.name
                          and kit.status("fence").get(Field.STATE) == "connected") or None,
                 120, "the replacement connected")
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGCONT)

    calls: dict[str, Any] = fake_control(control, "calls")
    assert calls["overlapping_polls"] == []
    conflicts = [c for c in calls["log"] if c["method"] == "getUpdates" and c["status"] == 409]
    assert conflicts == []
    lease = client.CoordinationV1Api(kit.api).read_namespaced_lease("fence-gateway", kit.ns)
    assert lease.spec.holder_identity == new.metadata.name
    assert (lease.spec.lease_transitions or 0) >= 1
