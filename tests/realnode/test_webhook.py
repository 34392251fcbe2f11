"""Telegram webhook delivery end to end on the real node: the operator's Service (kube-proxy)
and Ingress object, the secret-token Secret it creates, the gateway's setWebhook, the fake Bot
API pushing through the Service, forged requests refused, a backend outage redelivered, and
switching modes both ways."""

from __future__ import annotations

import base64
import json
from typing import Any

from realkit import SYSTEM, TOKEN, Fake, echo_backend, telegram_connection, wait_status

from switchboard_testkit.controlplane import wait_for
from switchboard_testkit.realnode import WEBHOOK_TEST_HOST, RealNodeCluster

URL = f"http://{WEBHOOK_TEST_HOST}/telegram/bot"
FAST = {"maxAttempts": 20, "initialDelaySeconds": 1, "maxDelaySeconds": 2}


def get(real: RealNodeCluster, ns: str, kind: str, name: str) -> dict[str, Any] | None:
    done = real.kubectl("-n", ns, "get", kind, name, "-o", "json", check=False)
    return json.loads(done.stdout) if done.returncode == 0 else None


def webhook_delivery(**extra: Any) -> dict[str, Any]:
    return {"mode": "webhook", "webhook": {"url": URL, **extra}}


def route_to_service(real: RealNodeCluster, ns: str, fake: Fake,
                     action: str = "route_webhook") -> dict[str, Any]:
    """The public host resolves to the gateway's Service (as a load balancer would)."""
    service = wait_for(lambda: get(real, ns, "service", "bot-gateway"), 60,
                       "the webhook Service")
    assert isinstance(service, dict)
    fake.call(action, {"host": WEBHOOK_TEST_HOST,
                       "address": f"{service['spec']['clusterIP']}:80"})
    return service


def fake_calls(fake: Fake) -> list[dict[str, Any]]:
    return list(fake.call("calls", method="GET")["result"]["log"])


def test_a_webhook_connection_through_its_service_end_to_end(
        real: RealNodeCluster, chart: str, ns: str, fake_telegram: Any) -> None:
    fake = fake_telegram(TOKEN, "--allow-http-webhooks")
    telegram_connection(real, ns, fake, {"echo": True},
                        telegram={"reconnect": FAST},
                        delivery=webhook_delivery(maxConnections=5, ingress={
                            "className": "nginx",
                            "annotations": {"cert-manager.io/cluster-issuer": "letsencrypt"}}))
    service = route_to_service(real, ns, fake)
    # The children: Service (selects the gateway pod's webhook port), Ingress, token Secret.
    assert service["spec"]["ports"][0]["port"] == 80
    assert service["spec"]["ports"][0]["targetPort"] == "webhook"
    ingress = get(real, ns, "ingress", "bot-gateway")
    assert ingress is not None
    rule = ingress["spec"]["rules"][0]
    assert rule["host"] == WEBHOOK_TEST_HOST
    assert rule["http"]["paths"][0]["path"] == "/telegram/bot"
    assert ingress["spec"]["ingressClassName"] == "nginx"
    secret = get(real, ns, "secret", "bot-gateway-webhook")
    assert secret is not None
    token = base64.b64decode(secret["data"]["secretToken"]).decode()
    assert len(token) >= 40
    assert secret["metadata"]["ownerReferences"][0]["kind"] == "PlatformConnection"

    status = wait_status(real, ns, "bot", lambda s: s.get("state") == "connected" and (
        s.get("webhook") or {}).get("url") == URL, 120, "connected over the webhook")
    assert status["webhook"]["pendingUpdateCount"] == 0
    fake.call("inject_message", {"chat_id": 7, "text": "through the Service"})
    sent = fake.call("wait_for_sent", {"timeout": 30, "contains": "through the Service"})
    assert "echo: through the Service" in json.dumps(sent)

    # A request without the token, straight at the Service, is refused and counted.
    forged = {"update_id": 5, "message": {"message_id": 5, "date": 0, "text": "forged",
                                          "chat": {"id": 66, "type": "private"}}}
    answer = fake.call("post_to_webhook", {"body": forged, "secret_token": "guess"})
    assert answer["result"] == 403
    wait_status(real, ns, "bot", lambda s: (s.get("webhook") or {}).get("refusedRequests") == 1,
                30, "the refusal in status")

    # The token appears nowhere but in its Secret and the pod's secretKeyRef.
    pconn = real.kubectl("-n", ns, "get", "platformconnection", "bot", "-o", "json").stdout
    events = real.kubectl("-n", ns, "get", "events", "-o", "json").stdout
    gateway_logs = real.kubectl("-n", ns, "logs", "deployment/bot-gateway").stdout
    operator_logs = real.kubectl("-n", SYSTEM, "logs", "deployment/switchboard").stdout
    for where, text in (("status", pconn), ("events", events), ("gateway logs", gateway_logs),
                        ("operator logs", operator_logs)):
        assert token not in text, where
    deployment = get(real, ns, "deployment", "bot-gateway")
    assert deployment is not None
    env = deployment["spec"]["template"]["spec"]["containers"][0]["env"]
    token_env = next(e for e in env if e["name"] == "SWITCHBOARD_WEBHOOK_SECRET_TOKEN")
    assert token_env == {"name": "SWITCHBOARD_WEBHOOK_SECRET_TOKEN", "valueFrom": {
        "secretKeyRef": {"name": "bot-gateway-webhook", "key": "secretToken"}}}


def test_switching_a_connection_between_polling_and_webhook_loses_nothing(
        real: RealNodeCluster, chart: str, ns: str, fake_telegram: Any) -> None:
    fake = fake_telegram(TOKEN, "--allow-http-webhooks")
    telegram_connection(real, ns, fake, {"echo": True},
                        telegram={"reconnect": FAST})
    wait_status(real, ns, "bot", lambda s: s.get("state") == "connected", 120, "polling")
    token = get(real, ns, "secret", "bot-gateway-webhook")
    assert token is None  # polling needs none

    real.kubectl("-n", ns, "patch", "platformconnection", "bot", "--type=merge", "-p",
                 json.dumps({"spec": {"delivery": webhook_delivery()}}))
    fake.call("inject_message", {"chat_id": 11, "text": "sent while switching to the webhook"})
    route_to_service(real, ns, fake)
    fake.call("wait_for_sent", {"timeout": 60, "contains": "switching to the webhook"})
    wait_status(real, ns, "bot", lambda s: s.get("state") == "connected" and (
        s.get("webhook") or {}).get("url") == URL, 60, "connected over the webhook")
    first = get(real, ns, "secret", "bot-gateway-webhook")
    assert first is not None

    real.kubectl("-n", ns, "patch", "platformconnection", "bot", "--type=json", "-p",
                 json.dumps([{"op": "replace", "path": "/spec/delivery",
                              "value": {"mode": "polling"}}]))
    fake.call("inject_message", {"chat_id": 12, "text": "sent while switching to polling"})
    fake.call("wait_for_sent", {"timeout": 60, "contains": "switching to polling"})
    wait_for(lambda: get(real, ns, "service", "bot-gateway") is None, 60,
             "the webhook Service removed")
    status = wait_status(real, ns, "bot", lambda s: s.get("state") == "connected" and
                         "webhook" not in s, 60, "polling again, no status.webhook")
    assert fake.call("state", method="GET")["result"]["webhook"]["url"] == ""

    real.kubectl("-n", ns, "patch", "platformconnection", "bot", "--type=merge", "-p",
                 json.dumps({"spec": {"delivery": webhook_delivery()}}))
    fake.call("inject_message", {"chat_id": 13, "text": "and back to the webhook"})
    route_to_service(real, ns, fake)
    fake.call("wait_for_sent", {"timeout": 60, "contains": "back to the webhook"})
    again = get(real, ns, "secret", "bot-gateway-webhook")
    assert again is not None and again["data"] == first["data"]  # generated once
    calls = fake_calls(fake)
    assert [c for c in calls if c["status"] == 409] == [], "a getUpdates met a webhook"
    sent = fake.call("sent", method="GET")["result"]
    assert sorted(m["chat_id"] for m in sent) == [11, 12, 13]  # each answered once
    assert status["state"] == "connected"


def test_a_backend_outage_is_redelivered_through_the_service_and_nothing_is_lost(
        real: RealNodeCluster, chart: str, ns: str, fake_telegram: Any) -> None:
    """The backend Deployment scaled to zero: the gateway answers Telegram 503, Telegram
    delivers again, and once the backend is back the message is answered exactly once."""
    fake = fake_telegram(TOKEN, "--allow-http-webhooks")
    telegram_connection(real, ns, fake, {"url": echo_backend(real, ns)},
                        telegram={"reconnect": FAST}, delivery=webhook_delivery())
    route_to_service(real, ns, fake)
    wait_status(real, ns, "bot", lambda s: s.get("state") == "connected" and (
        s.get("webhook") or {}).get("url") == URL, 120, "connected over the webhook")

    real.kubectl("-n", ns, "scale", "deployment/echo-backend", "--replicas=0")
    real.kubectl("-n", ns, "wait", "--for=delete", "pod", "-l", "app=echo-backend",
                 "--timeout=60s", timeout=70)
    fake.call("inject_message", {"chat_id": 21, "text": "while the backend is down"})

    def refused() -> int:
        state = fake.call("state", method="GET")["result"]
        return sum(d["status"] == 503 for d in state["webhook_deliveries"])

    wait_for(lambda: refused() >= 2, 60, "two deliveries answered 503")
    status = wait_status(real, ns, "bot", lambda s: (s.get("lastError") or {}).get(
        "code") == "backend_error", 30, "the backend's error in status")
    assert status["state"] == "connected"  # Telegram's side works
    assert fake.call("sent", method="GET")["result"] == []

    real.kubectl("-n", ns, "scale", "deployment/echo-backend", "--replicas=1")
    fake.call("wait_for_sent", {"timeout": 90, "contains": "while the backend is down"})
    wait_for(lambda: fake.call("state", method="GET")["result"]["pending_updates"] == 0, 30,
             "the update confirmed")
    sent = fake.call("sent", method="GET")["result"]
    assert [m["text"] for m in sent] == ["echo: while the backend is down"]  # once
    wait_status(real, ns, "bot", lambda s: s.get("state") == "connected" and
                not s.get("lastError"), 60, "connected without the backend's error")


QQ_APP_ID, QQ_SECRET = "102000777", "real-node-qq-client-secret"
QQ_URL = f"https://{WEBHOOK_TEST_HOST}/qq/bot"


def test_qq_callbacks_through_the_service_end_to_end(real: RealNodeCluster, chart: str,
                                                      ns: str) -> None:
    """The callback URL saved in QQ's console (the fake's configure_callback) is validated by
    the gateway's op 13 answer through the Service, then signed events arrive and are
    answered; a forged one is refused. The route plays the Ingress that terminates TLS."""
    fake = Fake(real, "fake_qq", f"--app-id={QQ_APP_ID}", f"--client-secret={QQ_SECRET}")
    try:
        real.kubectl("-n", ns, "create", "secret", "generic", "qq",
                     f"--from-literal=appId={QQ_APP_ID}",
                     f"--from-literal=clientSecret={QQ_SECRET}")
        real.kubectl("-n", ns, "label", "secret", "qq", "switchboard.dev/credentials=true")
        pc = {"apiVersion": "switchboard.dev/v1alpha1", "kind": "PlatformConnection",
              "metadata": {"name": "bot", "namespace": ns},
              "spec": {"platform": "qqbot", "apiBaseURL": fake.base,
                       "qqbot": {"credentialsSecretRef": {"name": "qq"}},
                       "backend": {"echo": True},
                       "delivery": {"mode": "webhook", "webhook": {"url": QQ_URL}}}}
        real.kubectl("apply", "-f", "-", input=json.dumps(pc))
        wait_status(real, ns, "bot", lambda s: s.get("state") == "connected", 120,
                    "connected (serving callbacks, credentials accepted)")
        service = route_to_service(real, ns, fake, action="route_callback")
        assert service["spec"]["ports"][0]["targetPort"] == "webhook"
        # Saved in the console once the Service has the pod as a ready endpoint (kube-proxy
        # refuses connections to a Service without one): as a person would save it again.
        tries: list[dict[str, Any]] = []

        def saved() -> bool:
            tries.append(fake.call("configure_callback", {"url": QQ_URL})["result"])
            return bool(tries[-1]["validated"])

        wait_for(saved, 60, "QQ to accept the callback URL", interval=1)
        assert all(t["error"] == "Connection refused" for t in tries[:-1]), tries
        fake.call("inject_message", {"openid": "user-1", "content": "hello by callback"})
        sent = fake.call("wait_for_sent", {"timeout": 30, "contains": "hello by callback"})
        assert "echo: hello by callback" in json.dumps(sent)
        forged = {"op": 0, "id": "x", "t": "C2C_MESSAGE_CREATE", "d": {
            "author": {"user_openid": "u"}, "content": "forged", "id": "m1",
            "timestamp": "2026-12-03T12:00:00+08:00"}}
        answer = fake.call("post_callback", {"payload": forged, "signature": "00" * 64})
        assert answer["result"] == 401
        wait_status(real, ns, "bot",
                    lambda s: (s.get("webhook") or {}).get("refusedRequests") == 1, 30,
                    "the refusal in status")
        logs = real.kubectl("-n", ns, "logs", "deployment/bot-gateway").stdout
        assert QQ_SECRET not in logs
    finally:
        fake.stop()
