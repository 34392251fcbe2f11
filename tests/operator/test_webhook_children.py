"""A webhook connection's children on the real control plane, under the chart's RBAC: the
Service, the optional Ingress, the secret-token Secret (created once), what happens to each
when edited or deleted by hand, and when the connection goes back to polling."""

from __future__ import annotations

import base64
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException
from opkit import Kit, Operator, secret, telegram_conn

from switchboard_operator import children
from switchboard_testkit.controlplane import wait_for

URL = "https://bots.example.com/telegram/hooked"


def webhook(**extra: Any) -> dict[str, Any]:
    return {"mode": "webhook", "webhook": {"url": URL, **extra}}


def read(fn: Any, *args: Any) -> Any:
    try:
        return fn(*args)
    except ApiException as exc:
        if exc.status == 404:
            return None
        raise


def token(kit: Kit, name: str) -> str | None:
    found = read(kit.core.read_namespaced_secret, f"{name}-gateway-webhook", kit.ns)
    return None if found is None else base64.b64decode(found.data["secretToken"]).decode()


def net(kit: Kit) -> client.NetworkingV1Api:
    return client.NetworkingV1Api(kit.api)


def template(kit: Kit, name: str) -> Any:
    return kit.deployment(name).spec.template


def test_a_webhook_connection_gets_a_service_an_ingress_and_a_token_made_once(
        kit: Kit, operator: Operator) -> None:
    kit.core.create_namespaced_secret(kit.ns, secret("tg"))
    kit.create(telegram_conn("hooked", delivery=webhook(ingress={
        "className": "nginx", "tlsSecretName": "bots-tls",
        "annotations": {"cert-manager.io/cluster-issuer": "letsencrypt"}})))
    wait_for(lambda: kit.status("hooked").get("observedGeneration") == 1, 30, "reconciled")
    service = kit.core.read_namespaced_service("hooked-gateway", kit.ns)
    assert service.spec.selector == children.pod_selector("hooked")
    assert [(p.name, p.port, p.target_port) for p in service.spec.ports] == \
        [("webhook", 80, "webhook")]
    ingress = net(kit).read_namespaced_ingress("hooked-gateway", kit.ns)
    assert ingress.spec.ingress_class_name == "nginx"
    assert ingress.metadata.annotations == {"cert-manager.io/cluster-issuer": "letsencrypt"}
    assert ingress.spec.tls[0].hosts == ["bots.example.com"]
    assert ingress.spec.tls[0].secret_name == "bots-tls"
    path = ingress.spec.rules[0].http.paths[0]
    assert (ingress.spec.rules[0].host, path.path, path.path_type) == \
        ("bots.example.com", "/telegram/hooked", "Exact")
    assert path.backend.service.name == "hooked-gateway"
    first = token(kit, "hooked")
    assert first is not None and len(first) == 43
    for obj in (service, ingress, kit.core.read_namespaced_secret("hooked-gateway-webhook",
                                                                  kit.ns)):
        owner = obj.metadata.owner_references[0]
        assert (owner.kind, owner.name, owner.controller) == ("PlatformConnection", "hooked",
                                                               True)
    container = template(kit, "hooked").spec.containers[0]
    assert any(p.name == "webhook" and p.container_port == 8443 for p in container.ports)
    env = {e.name: e for e in container.env}
    assert env["SWITCHBOARD_WEBHOOK_URL"].value == URL
    ref = env["SWITCHBOARD_WEBHOOK_SECRET_TOKEN"].value_from.secret_key_ref
    assert (ref.name, ref.key) == ("hooked-gateway-webhook", "secretToken")

    # A spec change re-applies the children; the token stays what it was.
    kit.patch("hooked", {"spec": {"delivery": webhook(maxConnections=10)}})
    wait_for(lambda: kit.status("hooked").get("observedGeneration") == 2, 30, "reconciled")
    assert token(kit, "hooked") == first
    assert first not in str(kit.get("hooked"))
    events = kit.core.list_namespaced_event(kit.ns).items
    assert all(first not in (e.message or "") for e in events)
    assert first not in operator.tail(10_000)


def test_children_deleted_or_edited_by_hand_come_back_and_a_new_token_rolls_the_gateway(
        kit: Kit, operator: Operator) -> None:
    kit.core.create_namespaced_secret(kit.ns, secret("tg"))
    kit.create(telegram_conn("edited", delivery=webhook(ingress={})))
    wait_for(lambda: kit.status("edited").get("observedGeneration") == 1, 30, "reconciled")
    kit.core.delete_namespaced_service("edited-gateway", kit.ns)
    wait_for(lambda: read(kit.core.read_namespaced_service, "edited-gateway", kit.ns), 15,
             "the Service back")
    net(kit).patch_namespaced_ingress("edited-gateway", kit.ns, {"spec": {"rules": [
        {"host": "attacker.example", "http": {"paths": [{"path": "/", "pathType": "Prefix",
         "backend": {"service": {"name": "other", "port": {"number": 80}}}}]}}]}})
    wait_for(lambda: net(kit).read_namespaced_ingress("edited-gateway", kit.ns)
             .spec.rules[0].host == "bots.example.com", 15, "the Ingress set back")

    before = template(kit, "edited").metadata.annotations[children.ANN_SECRET_HASH]
    old = token(kit, "edited")
    kit.core.delete_namespaced_secret("edited-gateway-webhook", kit.ns)
    wait_for(lambda: token(kit, "edited") not in (None, old), 15, "a new token")
    wait_for(lambda: template(kit, "edited").metadata.annotations[children.ANN_SECRET_HASH]
             != before, 15, "the gateway rolled onto the new token")


def test_back_to_polling_removes_the_service_and_ingress_and_keeps_the_token(
        kit: Kit, operator: Operator) -> None:
    kit.core.create_namespaced_secret(kit.ns, secret("tg"))
    kit.create(telegram_conn("back", delivery=webhook(ingress={})))
    wait_for(lambda: kit.status("back").get("observedGeneration") == 1, 30, "reconciled")
    first = token(kit, "back")
    kit.patch("back", {"spec": {"delivery": {"mode": "polling", "webhook": None}}})
    wait_for(lambda: read(kit.core.read_namespaced_service, "back-gateway", kit.ns) is None,
             15, "the Service removed")
    assert read(net(kit).read_namespaced_ingress, "back-gateway", kit.ns) is None
    # The Deployment is applied after the webhook children are removed: wait for it.
    wait_for(lambda: not {e.name for e in template(kit, "back").spec.containers[0].env
                          if e.name.startswith("SWITCHBOARD_WEBHOOK")}, 15,
             "the gateway without its webhook settings")
    assert token(kit, "back") == first  # kept (garbage-collected with the connection)


def test_the_policy_refuses_a_webhook_host_or_an_annotation_it_does_not_allow(
        kit: Kit, operator: Operator) -> None:
    kit.core.create_namespaced_secret(kit.ns, secret("tg"))
    kit.create(telegram_conn("plain", delivery={"mode": "webhook", "webhook": {
        "url": "http://bots.example.com/telegram"}}))
    kit.create(telegram_conn("snippet", delivery=webhook(ingress={"annotations": {
        "nginx.ingress.kubernetes.io/server-snippet": "return 200;"}})))
    plain = kit.wait_ready("plain", "False", "PolicyViolation")
    assert "must use https" in plain["message"]
    snippet = kit.wait_ready("snippet", "False", "PolicyViolation")
    assert "server-snippet" in snippet["message"]
    for name in ("plain", "snippet"):
        assert read(kit.core.read_namespaced_service, f"{name}-gateway", kit.ns) is None


def test_a_qq_callback_connection_gets_its_service_but_no_token_secret(
        kit: Kit, operator: Operator) -> None:
    """QQ signs its callbacks with the bot secret: no secret token to make or mount."""
    kit.core.create_namespaced_secret(kit.ns, secret("qq", appId="1020",
                                                     clientSecret="qq-client-secret"))
    body = telegram_conn("qq-hooked", delivery=webhook())
    body["spec"].pop("telegram")
    body["spec"].update(platform="qqbot", qqbot={"credentialsSecretRef": {"name": "qq"}})
    kit.create(body)
    wait_for(lambda: kit.status("qq-hooked").get("observedGeneration") == 1, 30, "reconciled")
    assert read(kit.core.read_namespaced_service, "qq-hooked-gateway", kit.ns) is not None
    assert token(kit, "qq-hooked") is None
    env = {e.name: e for e in template(kit, "qq-hooked").spec.containers[0].env}
    assert env["SWITCHBOARD_DELIVERY"].value == "webhook"
    assert "SWITCHBOARD_WEBHOOK_SECRET_TOKEN" not in env
    assert kit.ready("qq-hooked") is None or kit.ready("qq-hooked")["reason"] != "SecretMissing"
