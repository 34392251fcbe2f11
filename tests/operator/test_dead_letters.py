"""A message the gateway dead-lettered becomes one Warning Event, posted by the operator (the
gateway needs no right to post Events): on the real control plane."""

from __future__ import annotations

from kubernetes import client
from opkit import GROUP, PLURAL, VERSION, Kit, Operator, secret, telegram_conn

from switchboard_testkit.controlplane import wait_for


def _dead_letter(kit: Kit, gw: client.ApiClient, name: str, pod: str, count: int) -> None:
    """What the gateway writes (its own field manager and token) after giving up a message."""
    status = {"state": "connected", "attempt": 0, "maxAttempts": 10, "attempts": "0/10",
              "stateSince": "2026-01-01T12:00:00Z", "gatewayPod": pod,
              "deadLetters": {"count": count, "last": {
                  "chatId": "55", "messageId": str(count), "reason": "rejected",
                  "message": "Forbidden: bot was blocked by the user",
                  "time": "2026-01-01T12:00:00Z"}}}
    body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "PlatformConnection",
            "metadata": {"name": name, "namespace": kit.ns}, "status": status}
    client.CustomObjectsApi(gw).patch_namespaced_custom_object_status(
        GROUP, VERSION, kit.ns, PLURAL, name, body, field_manager="switchboard-gateway",
        force=True, _content_type="application/apply-patch+yaml")


def test_a_dead_letter_is_one_warning_event_and_ready_stays_true(
        kit: Kit, operator: Operator) -> None:
    kit.core.create_namespaced_secret(kit.ns, secret("tg"))
    kit.create(telegram_conn("dl"))
    gw = kit.gateway_client("dl")
    pod = kit.one_pod("dl").metadata.name
    _dead_letter(kit, gw, "dl", pod, 1)
    wait_for(lambda: kit.status("dl").get("deadLettersReported") == 1, 15, "reported")
    (event,) = kit.events("dl", "MessageDeadLettered")
    assert event.type == "Warning" and "chat 55, message 1" in event.message
    kit.wait_ready("dl", "True", "Connected")
    _dead_letter(kit, gw, "dl", pod, 2)
    wait_for(lambda: kit.status("dl").get("deadLettersReported") == 2, 15, "reported again")
    events = kit.events("dl", "MessageDeadLettered", at_least=2)
    assert len(events) == 2 and any("message 2" in e.message for e in events)
