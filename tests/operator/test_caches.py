"""The operator's caches converge with the API after faults the watches do not report."""

from __future__ import annotations

import ssl
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

import yaml
from kubernetes import client
from opkit import Kit, Operator, secret, telegram_conn

from switchboard_testkit.controlplane import wait_for


def test_a_connection_deleted_while_the_watches_were_cut_is_forgotten(
        kit: Kit, operator: Operator) -> None:
    """The operator is frozen, the API server restarts (every watch ends, and resuming from
    the old resourceVersion gets 410 Gone), the connection is deleted, the operator thaws: its
    re-list must report the deletion. Before, the connection stayed cached forever and its
    children were re-applied with an owner reference to a dead uid, in a loop with the
    garbage collector."""
    kit.core.create_namespaced_secret(kit.ns, secret("tg"))
    kit.create(telegram_conn("vanish"))
    kit.create(telegram_conn("stays"))
    wait_for(lambda: kit.deployment("vanish") and kit.deployment("stays"), 30, "Deployments")
    wait_for(lambda: operator.health()["connections"] == 2, 10, "both cached")

    operator.pause()
    try:
        kit.cluster.plane.restart_apiserver()
        kit.core.create_namespaced_config_map(kit.ns, client.V1ConfigMap(
            metadata=client.V1ObjectMeta(name="newer-revision")))
        kit.custom.delete_namespaced_custom_object("switchboard.dev", "v1alpha1", kit.ns,
                                                   "platformconnections", "vanish")
    finally:
        operator.resume()

    wait_for(lambda: operator.health()["connections"] == 1, 30, "the deletion seen")
    # The other connection is still served after the re-list (its status is written).
    kit.patch("stays", {"spec": {"suspend": True}})
    kit.wait_ready("stays", "True", "Suspended", timeout=30)


def _bound_token(kit: Kit, holder: str) -> str:
    """A token of the operator's ServiceAccount, valid only while Secret ``holder`` exists."""
    made = kit.core.create_namespaced_secret(kit.ns, client.V1Secret(
        metadata=client.V1ObjectMeta(name=holder)))
    request = client.AuthenticationV1TokenRequest(spec=client.V1TokenRequestSpec(
        audiences=["https://kubernetes.default.svc.cluster.local"], expiration_seconds=3600,
        bound_object_ref=client.V1BoundObjectReference(
            api_version="v1", kind="Secret", name=holder, uid=made.metadata.uid)))
    return kit.core.create_namespaced_service_account_token(
        "sb-switchboard", kit.ns, request).status.token


def _refused(kit: Kit, token: str) -> bool:
    """Whether the API server answers 401 to ``token`` (it caches a good answer ~10 s)."""
    ctx = ssl.create_default_context(cafile=kit.api.configuration.ssl_ca_cert)
    request = urllib.request.Request(f"{kit.api.configuration.host}/api",
                                     headers={"Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(request, context=ctx, timeout=5):
            return False
    except urllib.error.HTTPError as exc:
        return exc.code == 401


def test_a_revoked_token_is_replaced_by_reading_the_credentials_again(
        kit: Kit, start_operator: Callable[..., Operator],
        operator_env: dict[str, str]) -> None:
    """Projected tokens rotate and exec plugins give short-lived ones: after a 401 the operator
    reads its kubeconfig again instead of failing with the token it started with."""
    path = Path(operator_env["KUBECONFIG"])
    config = yaml.safe_load(path.read_text())
    config["users"][0]["user"]["token"] = _bound_token(kit, "holder-a")
    path.write_text(yaml.safe_dump(config))
    op = start_operator("rotating")
    kit.core.create_namespaced_secret(kit.ns, secret("tg"))
    kit.create(telegram_conn("before"))
    wait_for(lambda: kit.deployment("before"), 30, "a Deployment with the first token")

    first = config["users"][0]["user"]["token"]
    config["users"][0]["user"]["token"] = _bound_token(kit, "holder-b")
    path.write_text(yaml.safe_dump(config))  # what the kubelet does to a projected token
    kit.core.delete_namespaced_secret("holder-a", kit.ns)  # the first token is now invalid
    wait_for(lambda: _refused(kit, first), 30, "the first token refused (401)")
    kit.create(telegram_conn("after"))
    wait_for(lambda: kit.deployment("after"), 30, "a Deployment after the token was revoked")
    kit.wait_ready("after", "False", "Connecting")
    assert op.metric("switchboard_operator_api_requests_total", code="401") >= 1
