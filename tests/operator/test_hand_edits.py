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


def test_a_status_field_added_by_hand_is_removed_once_not_fought_forever(
        kit: Kit, operator: Operator) -> None:
    """Before: `kubectl edit --subresource=status` adding nextRestartTime made kubectl-edit
    its owner; the operator's apply could never remove it and re-applied on every echo
    (195 PATCH/s, the API server at 93 % CPU), and a time of 2099 would be obeyed."""
    kit.core.create_namespaced_secret(kit.ns, secret("tg"))
    kit.create(telegram_conn("edited"))
    wait_for(lambda: kit.status("edited").get("observedGeneration") == 1, 30, "reconciled")
    client.CustomObjectsApi(kit.api).patch_namespaced_custom_object_status(
        "switchboard.dev", "v1alpha1", kit.ns, "platformconnections", "edited",
        {"status": {"nextRestartTime": "2099-01-01T00:00:00Z"}}, field_manager="kubectl-edit")
    wait_for(lambda: "nextRestartTime" not in kit.status("edited"), 15, "the field removed")
    (event,) = kit.events("edited", "StatusFieldRemoved")
    assert "nextRestartTime (by kubectl-edit)" in event.message
    patches = operator.metric("switchboard_operator_api_requests_total", verb="PATCH")
    try:  # settled: no more writes
        wait_for(lambda: operator.metric("switchboard_operator_api_requests_total",
                                         verb="PATCH") > patches + 2, 5, "more patches")
    except TimeoutError:
        pass
    assert operator.metric("switchboard_operator_api_requests_total",
                           verb="PATCH") <= patches + 2
    assert "nextRestartTime" not in kit.status("edited")


def test_a_service_account_deleted_by_hand_rolls_the_gateway(
        kit: Kit, operator: Operator) -> None:
    """Before: the operator recreated it, but the running gateway kept the old (now invalid)
    token: every status write got 401 while the connection still read connected."""
    kit.core.create_namespaced_secret(kit.ns, secret("tg"))
    kit.create(telegram_conn("sa"))
    wait_for(lambda: kit.status("sa").get("observedGeneration") == 1, 30, "reconciled")

    def template_uid() -> str | None:
        annotations = kit.deployment("sa").spec.template.metadata.annotations or {}
        return annotations.get("switchboard.dev/serviceaccount-uid")

    old = kit.core.read_namespaced_service_account("sa-gateway", kit.ns).metadata.uid
    assert template_uid() == old
    kit.core.delete_namespaced_service_account("sa-gateway", kit.ns)
    new = wait_for(lambda: (u := template_uid()) not in (None, old) and u, 20,
                   "the pod template to name the new ServiceAccount")
    assert new == kit.core.read_namespaced_service_account("sa-gateway", kit.ns).metadata.uid
