"""What a cluster's operators do by hand to the gateway's objects, and how the operator
answers: on the real control plane."""

from __future__ import annotations

import pytest
from kubernetes import client
from opkit import Kit, Operator, secret, telegram_conn

from switchboard_testkit.controlplane import wait_for


@pytest.mark.parametrize("replicas", [3, 0])
def test_a_deployment_scaled_by_hand_is_set_back(kit: Kit, operator: Operator,
                                                 replicas: int) -> None:
    """Before: never corrected; three gateways fought over the token, or none ran with
    Reconciling=True forever."""
    kit.core.create_namespaced_secret(kit.ns, secret("tg"))
    kit.create(telegram_conn("scaled"))
    wait_for(lambda: kit.status("scaled").get("observedGeneration") == 1, 30, "reconciled")
    name = kit.deployment("scaled").metadata.name
    client.AppsV1Api(kit.api).patch_namespaced_deployment_scale(
        name, kit.ns, {"spec": {"replicas": replicas}})
    wait_for(lambda: kit.deployment("scaled").spec.replicas == 1, 15,
             f"replicas back to 1 after a scale to {replicas}")
    managers = {m.manager for m in kit.deployment("scaled").metadata.managed_fields
                if "f:replicas" in ((m.fields_v1 or {}).get("f:spec") or {})}
    assert managers == {"switchboard-operator"}
