"""Ready says whether messages flow: the operator, a real gateway pod on the local node, the
fake Bot API and a backend that is down, then up (the fault is the backend's absence, not a
gateway knob)."""

from __future__ import annotations

import subprocess
from typing import Any

from opkit import Kit, Operator, fake_control, secret, spawn_fake, telegram_conn

from switchboard_testkit.cluster import Cluster
from switchboard_testkit.controlplane import wait_for
from switchboard_testkit.net import free_port

TOKEN = "555000111:AAdeliveringTOKENforTHEoperatorTEST_z"


def _condition(kit: Kit, name: str, kind: str) -> dict[str, Any]:
    return next(c for c in kit.status(name).get("conditions") or [] if c["type"] == kind)


def test_a_backend_that_is_down_makes_ready_false_until_it_takes_messages(
        kit: Kit, cluster: Cluster, operator: Operator,
        processes: list[subprocess.Popen[str]]) -> None:
    api, control, backend = free_port(), free_port(), free_port()
    processes.append(spawn_fake(cluster, "switchboard_testkit.fake_telegram", f"--port={api}",
                            f"--control-port={control}", f"--token={TOKEN}"))
    kit.core.create_namespaced_secret(kit.ns, secret("tg", token=TOKEN))
    kit.create(telegram_conn(
        "deliver", apiBaseURL=f"http://127.0.0.1:{api}/bot",
        backend={"url": f"http://127.0.0.1:{backend}/relay", "timeoutSeconds": 2},
        telegram={"tokenSecretRef": {"name": "tg"},
                  "reconnect": {"initialDelaySeconds": 1, "maxDelaySeconds": 2}},
        gateway={}))  # on the local node: a real gateway process
    kit.wait_ready("deliver", "True", "Connected", timeout=90)
    assert _condition(kit, "deliver", "Delivering")["status"] == "True"

    fake_control(control, "inject_message", {"chat_id": 4242, "text": "anyone there?"})
    ready = kit.wait_ready("deliver", "False", "BackendUnavailable", timeout=30)
    assert "held" in ready["message"]
    delivering = _condition(kit, "deliver", "Delivering")
    assert (delivering["status"], delivering["reason"]) == ("False", "BackendUnavailable")
    assert kit.status("deliver")["state"] == "connected"  # the platform link itself is fine
    row = cluster.kubectl("-n", kit.ns, "get", "platformconnection", "deliver",
                          "--no-headers").stdout.split()
    assert "False" in row

    processes.append(spawn_fake(cluster, "switchboard_gateway.backend", f"--port={backend}"))
    wait_for(lambda: [m for m in fake_control(control, "sent") if m["chat_id"] == 4242], 30,
             "the held message answered")
    kit.wait_ready("deliver", "True", "Connected", timeout=30)
    assert _condition(kit, "deliver", "Delivering")["status"] == "True"
