"""Gateway pods carry resource requests and a memory limit by default, so a namespace with a
ResourceQuota admits them; spec.gateway.resources replaces the default."""

from __future__ import annotations

from kubernetes import client
from opkit import Kit, Operator, secret, telegram_conn

from switchboard_operator.children import DEFAULT_GATEWAY_RESOURCES
from switchboard_testkit.controlplane import wait_for


def test_a_resource_quota_admits_gateway_pods_with_the_default_resources(
        kit: Kit, operator: Operator) -> None:
    # A quota on requests and limits: the API server refuses any pod that does not set them.
    kit.core.create_namespaced_resource_quota(kit.ns, client.V1ResourceQuota(
        metadata=client.V1ObjectMeta(name="compute"),
        spec=client.V1ResourceQuotaSpec(hard={"requests.cpu": "1", "requests.memory": "1Gi",
                                              "limits.memory": "2Gi"})))
    wait_for(lambda: (kit.core.read_namespaced_resource_quota("compute", kit.ns).status
                      or client.V1ResourceQuotaStatus()).hard, 30, "the quota to be in force")
    kit.core.create_namespaced_secret(kit.ns, secret("tg"))
    kit.create(telegram_conn("bot"))
    pod = kit.one_pod("bot", timeout=60)
    (c,) = pod.spec.containers
    assert c.resources.requests == DEFAULT_GATEWAY_RESOURCES["requests"]
    assert c.resources.limits == DEFAULT_GATEWAY_RESOURCES["limits"]
    ready = kit.ready("bot") or {}
    assert ready.get("reason") != "ReplicaFailure", ready


def test_spec_gateway_resources_replace_the_default(kit: Kit, operator: Operator) -> None:
    kit.core.create_namespaced_secret(kit.ns, secret("tg"))
    mine = {"requests": {"cpu": "200m", "memory": "512Mi"}, "limits": {"memory": "1Gi"}}
    kit.create(telegram_conn("bot", gateway={"nodeSelector": {
        "switchboard.dev/test-no-such-node": "true"}, "resources": mine}))
    dep = wait_for(lambda: kit.deployment("bot"), 30, "the gateway Deployment")
    (c,) = dep.spec.template.spec.containers  # type: ignore[attr-defined]
    assert (c.resources.requests, c.resources.limits) == (mine["requests"], mine["limits"])
