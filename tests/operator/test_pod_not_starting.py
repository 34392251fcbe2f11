"""A gateway pod that cannot start says why: Ready carries the container's waiting reason and a
Warning Event is posted, instead of "waiting for the first status report" forever. Real pod on
the local node: its env names a ConfigMap that does not exist (CreateContainerConfigError, as
a kubelet reports it); once the ConfigMap exists the pod starts and the reason goes."""

from __future__ import annotations

import json
from collections.abc import Callable

from kubernetes import client
from opkit import Kit, Operator, secret, telegram_conn

from switchboard_testkit.controlplane import wait_for

POLICY = json.dumps({"apiHosts": [], "insecureAPIHosts": ["127.0.0.1"],
                     "allowEnvValueFrom": True})


def test_a_pod_that_cannot_start_shows_its_reason_in_ready_and_an_event(
        kit: Kit, start_operator: Callable[..., Operator]) -> None:
    start_operator("op", "--policy", POLICY)
    kit.core.create_namespaced_secret(kit.ns, secret("tg"))
    kit.create(telegram_conn("stuck", apiBaseURL="http://127.0.0.1:9/bot", gateway={"env": [
        {"name": "EXTRA", "valueFrom": {"configMapKeyRef": {"name": "not-there",
                                                            "key": "k"}}}]}))
    ready = kit.wait_ready("stuck", "False", "GatewayNotStarting", timeout=60)
    assert "CreateContainerConfigError" in ready["message"], ready
    assert "not-there" in ready["message"], ready
    (event,) = kit.events("stuck", "GatewayNotStarting")
    assert event.type == "Warning" and "CreateContainerConfigError" in event.message

    kit.core.create_namespaced_config_map(kit.ns, client.V1ConfigMap(
        metadata=client.V1ObjectMeta(name="not-there"), data={"k": "v"}))
    # The gateway starts and reports (it retries: nothing listens on port 9).
    wait_for(lambda: (kit.ready("stuck") or {}).get("reason") == "Retrying", 90,
             "the gateway started and reporting")
