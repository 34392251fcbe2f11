"""Every failure reaches status: an apply the API server refuses, pods a quota refuses."""

from __future__ import annotations

from kubernetes import client
from opkit import Kit, Operator, secret, telegram_conn

from switchboard_testkit.controlplane import wait_for


def _stalled(kit: Kit, name: str) -> dict | None:
    return next((c for c in kit.status(name).get("conditions") or []
                 if c["type"] == "Stalled"), None)


def test_a_deployment_the_api_server_refuses_is_reported_with_its_message(
        kit: Kit, operator: Operator) -> None:
    """requests above limits passes the CRD's schema but not the Deployment's validation:
    Ready says ApplyFailed with the API server's own message, a Warning Event says it once,
    and nothing is applied again until the spec changes."""
    kit.core.create_namespaced_secret(kit.ns, secret("tg"))
    bad = {"resources": {"requests": {"cpu": "2"}, "limits": {"cpu": "1"}}}
    kit.create(telegram_conn("greedy", gateway=bad))
    ready = kit.wait_ready("greedy", "False", "ApplyFailed")
    assert "must be less than or equal to cpu limit" in ready["message"], ready["message"]
    stalled = _stalled(kit, "greedy")
    assert stalled is not None and stalled["status"] == "True"
    assert kit.status("greedy")["needsAttention"] is True
    (event,) = kit.events("greedy", "ApplyFailed")
    assert event.type == "Warning" and "cpu limit" in event.message
    assert not kit.apps.list_namespaced_deployment(kit.ns).items
    # Not retried in a loop: one refused apply of the Deployment for this generation.
    refused = operator.metric("switchboard_operator_api_requests_total",
                              component="operator", verb="PATCH", code="422")
    assert refused == 1, refused

    kit.patch("greedy", {"spec": {"gateway": {"resources": {"limits": {"cpu": "2"}}}}})
    wait_for(lambda: kit.deployment("greedy"), 30, "the Deployment once the spec is fixed")
    kit.wait_ready("greedy", "False", "Connecting")


def test_pods_refused_by_a_quota_show_as_replica_failure_not_a_rollout(
        kit: Kit, operator: Operator) -> None:
    kit.core.create_namespaced_resource_quota(kit.ns, client.V1ResourceQuota(
        metadata=client.V1ObjectMeta(name="no-pods"),
        spec=client.V1ResourceQuotaSpec(hard={"pods": "0"})))
    kit.core.create_namespaced_secret(kit.ns, secret("tg"))
    kit.create(telegram_conn("squeezed"))
    ready = kit.wait_ready("squeezed", "False", "ReplicaFailure", timeout=60)
    assert "exceeded quota" in ready["message"] and "FailedCreate" in ready["message"], ready
    stalled = _stalled(kit, "squeezed")
    assert stalled is not None and stalled["status"] == "True"

    kit.core.delete_namespaced_resource_quota("no-pods", kit.ns)
    kit.wait_ready("squeezed", "False", "Connecting", timeout=60)
