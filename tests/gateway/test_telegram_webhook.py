"""Telegram webhook delivery: the gateway as a process, the fake Bot API pushing updates to its
webhook (secret header, redelivery on failure), status in a real PlatformConnection."""

from __future__ import annotations

import asyncio
import json
import time

import pytest
from test_telegram_gateway import StartGateway, metric, telegram_env

from switchboard_gateway.backend import EchoBackend
from switchboard_testkit.fake_telegram import FakeTelegram
from switchboard_testkit.gateway_harness import GatewayProcess, PConn
from switchboard_testkit.net import free_port

pytestmark = pytest.mark.cluster

HOST = "bots.example.test"
SECRET = "webhook-secret-token_0123456789abcdefABCDEF"


@pytest.fixture
async def hook_fake() -> FakeTelegram:
    from switchboard_testkit.fake_telegram import GATEWAY_TEST_TOKEN

    fake = FakeTelegram(GATEWAY_TEST_TOKEN, allow_http_webhooks=True)
    await fake.start()
    yield fake  # type: ignore[misc]
    await fake.stop()


def webhook_env(pconn: PConn, fake: FakeTelegram, backend: EchoBackend | None, port: int,
                **extra: str) -> dict[str, str]:
    fake.webhook.route(HOST, f"127.0.0.1:{port}")
    return telegram_env(pconn, fake, backend, **{
        "SWITCHBOARD_DELIVERY": "webhook",
        "SWITCHBOARD_WEBHOOK_URL": f"http://{HOST}/telegram/{pconn.name}",
        "SWITCHBOARD_WEBHOOK_PORT": str(port),
        "SWITCHBOARD_WEBHOOK_MAX_CONNECTIONS": "7",
        "SWITCHBOARD_WEBHOOK_SECRET_TOKEN": SECRET,
        "SWITCHBOARD_WEBHOOK_INFO_INTERVAL": "0.5",
        "SWITCHBOARD_WEBHOOK_READY_WAIT": "0",  # no kubelet probes these processes
        **extra})


async def start_hooked(gateway: StartGateway, env: dict[str, str], pconn: PConn,
                       fake: FakeTelegram) -> GatewayProcess:
    gw = gateway(env)
    await gw.wait_serving()
    await pconn.wait_state("connected")
    await fake.wait_until(lambda: fake.webhook.active, 10, "the webhook set")
    return gw


def assert_secret_kept(gw: GatewayProcess, pconn: PConn) -> None:
    assert SECRET not in gw.logs()
    assert all(SECRET not in json.dumps(e.status) for e in pconn.history)


async def test_a_webhook_connection_connects_answers_and_shows_telegrams_view(
        pconn: PConn, hook_fake: FakeTelegram, backend: EchoBackend,
        gateway: StartGateway) -> None:
    fake = hook_fake
    gw = await start_hooked(gateway, webhook_env(pconn, fake, backend, free_port()), pconn, fake)
    settings = fake.webhook.settings
    assert settings is not None
    assert settings.url == f"http://{HOST}/telegram/{pconn.name}"
    assert (settings.secret_token, settings.max_connections) == (SECRET, 7)
    assert settings.allowed_updates == ["message"]
    fake.inject_message(42, "hi over the webhook")
    sent = await fake.wait_for_sent(lambda m: m.chat_id == 42, 10)
    assert sent.text == "echo: hi over the webhook"
    await fake.wait_until(lambda: not fake.pending_updates, 5, "the update confirmed")
    status = await pconn.wait_status(
        lambda s: (s.get("webhook") or {}).get("url") == settings.url, 5, "status.webhook")
    assert status["webhook"]["pendingUpdateCount"] == 0
    assert fake.call_count("getUpdates") == 0
    assert [d.status for d in fake.webhook.deliveries] == [200]
    assert_secret_kept(gw, pconn)
    assert await gw.terminate() == 0
    assert fake.webhook.active  # left set: Telegram holds updates for the next pod


async def test_the_webhook_is_set_once_the_kubelet_saw_the_pod_ready(
        pconn: PConn, hook_fake: FakeTelegram, backend: EchoBackend,
        gateway: StartGateway) -> None:
    """The Service sends traffic only to Ready pods, and Telegram posts the pending updates as
    soon as the webhook is set: a gateway serving its webhook is Ready before it is connected,
    and sets the webhook only after /readyz answered so (here the test plays the kubelet).
    Before, every start met "Connection refused" first and showed retrying."""
    fake = hook_fake
    gw = gateway(webhook_env(pconn, fake, backend, free_port(),
                             SWITCHBOARD_WEBHOOK_READY_WAIT="60"))
    await gw.wait_serving()
    await pconn.wait_state("connecting")
    probed = None
    while probed is None:  # the kubelet's readiness probe, every 0.1 s until ready
        status, _ = await gw.http_get(gw.health_url + "/readyz")
        probed = time.monotonic() if status == 200 else await asyncio.sleep(0.1)
    await fake.wait_until(lambda: fake.webhook.active, 10, "the webhook set after the probe")
    (set_at,) = [c.at for c in fake.call_log if c.method == "setWebhook"]
    assert set_at > probed
    await pconn.wait_state("connected")
    await gw.terminate()


async def test_forged_requests_are_refused_and_counted(
        pconn: PConn, hook_fake: FakeTelegram, backend: EchoBackend,
        gateway: StartGateway) -> None:
    fake = hook_fake
    gw = await start_hooked(gateway, webhook_env(pconn, fake, backend, free_port()), pconn, fake)
    forged = {"update_id": 1, "message": {"message_id": 1, "date": 0, "text": "pay me",
                                          "chat": {"id": 5, "type": "private"}}}
    assert await fake.webhook.post(forged, "wrong-token") == 403
    assert await fake.webhook.post(forged, None) == 403
    assert await fake.webhook.post(forged, SECRET[:-1]) == 403
    status = await pconn.wait_status(
        lambda s: (s.get("webhook") or {}).get("refusedRequests") == 3, 5, "refusals shown")
    assert status["state"] == "connected"
    assert backend.received == [] and fake.sent_messages == []
    text = await gw.metrics()
    assert metric(text, "switchboard_gateway_webhook_refused_total",
                  reason="secret_token") == 3
    # The right token is accepted (the test posts as Telegram would).
    assert await fake.webhook.post(forged, SECRET) == 200
    await fake.wait_for_sent(lambda m: m.chat_id == 5, 5)
    assert_secret_kept(gw, pconn)
    await gw.terminate()


async def test_a_backend_outage_is_redelivered_by_telegram_and_nothing_is_lost(
        pconn: PConn, hook_fake: FakeTelegram, backend: EchoBackend,
        gateway: StartGateway) -> None:
    fake = hook_fake
    gw = await start_hooked(gateway, webhook_env(pconn, fake, backend, free_port()), pconn, fake)
    backend.fail_status = 500
    fake.inject_message(61, "during the outage")
    await fake.wait_until(lambda: sum(d.status == 503 for d in fake.webhook.deliveries) >= 2,
                          10, "two refused deliveries")
    status = await pconn.wait_status(
        lambda s: (s.get("lastError") or {}).get("code") == "backend_error", 5,
        "the backend's error in status")
    assert status["state"] == "connected"  # the platform side works; the backend does not
    assert fake.sent_messages == []
    backend.fail_status = None
    sent = await fake.wait_for_sent(lambda m: m.chat_id == 61, 15)
    assert sent.text == "echo: during the outage"
    await fake.wait_until(lambda: not fake.pending_updates, 5, "the update confirmed")
    await pconn.wait_status(lambda s: s.get("state") == "connected" and not s.get("lastError"),
                            10, "connected without the backend's error")
    assert len(fake.sent_messages) == 1
    text = await gw.metrics()
    assert metric(text, "switchboard_gateway_webhook_deliveries_total", result="retry") >= 2
    assert metric(text, "switchboard_gateway_messages_received_total") == 1
    await gw.terminate()


async def test_a_redelivery_during_a_slow_backend_waits_for_the_first_attempt(
        pconn: PConn, hook_fake: FakeTelegram, backend: EchoBackend,
        gateway: StartGateway) -> None:
    """Telegram stops waiting on a slow answer and delivers the update again while the first
    attempt is still with the backend: one relay, one reply, and 200 once it is done."""
    fake = hook_fake
    gw = await start_hooked(gateway, webhook_env(pconn, fake, backend, free_port()), pconn, fake)
    fake.webhook.client.timeout = 0.5  # Telegram's patience, shortened
    backend.hold = asyncio.Event()
    fake.inject_message(62, "a slow answer")
    await fake.wait_until(
        lambda: sum(d.error == "Read timeout expired" for d in fake.webhook.deliveries) >= 3,
        15, "three deliveries that timed out")
    assert backend.texts() == ["a slow answer"]  # the redeliveries did not reach the backend
    fake.webhook.client.timeout = 10.0
    backend.hold.set()
    sent = await fake.wait_for_sent(lambda m: m.chat_id == 62, 15)
    assert sent.text == "echo: a slow answer"
    await fake.wait_until(lambda: not fake.pending_updates, 10, "the update confirmed")
    assert backend.texts() == ["a slow answer"]
    assert [m.text for m in fake.sent_messages] == ["echo: a slow answer"]
    text = await gw.metrics()
    assert metric(text, "switchboard_gateway_messages_received_total") == 1
    await gw.terminate()


async def test_chats_are_answered_at_once_and_each_chat_in_order(
        pconn: PConn, hook_fake: FakeTelegram, backend: EchoBackend,
        gateway: StartGateway) -> None:
    """Telegram pushes different chats' updates at once (up to max_connections) and one chat's
    in order: the gateway relays them side by side, each once."""
    fake = hook_fake
    gw = await start_hooked(gateway, webhook_env(pconn, fake, backend, free_port()), pconn, fake)
    backend.hold = asyncio.Event()
    for chat, text in ((81, "a1"), (82, "b1"), (83, "c1"), (81, "a2")):
        fake.inject_message(chat, text)
    await backend.wait_until(lambda: len(backend.received) >= 3)
    assert sorted(backend.texts()) == ["a1", "b1", "c1"]  # a2 waits for a1's answer
    backend.hold.set()
    await fake.wait_until(lambda: len(fake.sent_messages) >= 4, 15, "four replies")
    await fake.wait_until(lambda: not fake.pending_updates, 10, "every update confirmed")
    assert [m.text for m in fake.sent_messages if m.chat_id == 81] == ["echo: a1", "echo: a2"]
    assert sorted(backend.texts()) == ["a1", "a2", "b1", "c1"]
    assert len(fake.sent_messages) == 4
    await gw.terminate()


async def test_deliveries_that_never_arrive_show_as_retrying_with_telegrams_error(
        pconn: PConn, hook_fake: FakeTelegram, backend: EchoBackend,
        gateway: StartGateway) -> None:
    """The gateway's own health checks pass; only Telegram knows its posts go nowhere (here:
    the URL's host routes to a closed port, like an Ingress pointing at the wrong Service)."""
    fake = hook_fake
    port = free_port()
    gw = await start_hooked(gateway, webhook_env(pconn, fake, backend, port), pconn, fake)
    fake.webhook.route(HOST, f"127.0.0.1:{free_port()}")
    fake.inject_message(71, "lost in routing?")
    status = await pconn.wait_state("retrying", 15)
    assert "Connection refused" in status["lastError"]["message"]
    assert status["lastError"]["code"] == "telegram_webhook_failing"
    assert status["webhook"]["lastErrorMessage"] == "Connection refused"
    assert status["webhook"]["pendingUpdateCount"] >= 1
    fake.webhook.route(HOST, f"127.0.0.1:{port}")
    await fake.wait_for_sent(lambda m: m.chat_id == 71, 15)
    await pconn.wait_state("connected", 15)
    await gw.terminate()


async def test_switching_modes_both_ways_loses_nothing_and_never_meets_409(
        pconn: PConn, hook_fake: FakeTelegram, backend: EchoBackend,
        gateway: StartGateway) -> None:
    fake = hook_fake
    port = free_port()
    gw = await start_hooked(gateway, webhook_env(pconn, fake, backend, port), pconn, fake)
    await gw.terminate()
    fake.inject_message(81, "sent while switching to polling")  # nobody answers the webhook
    await fake.wait_until(lambda: fake.webhook.last_error_date is not None, 10,
                          "a failed delivery")
    polling = gateway(telegram_env(pconn, fake, backend))
    await polling.wait_serving()
    await fake.wait_for_sent(lambda m: m.chat_id == 81, 15)
    assert not fake.webhook.active  # deleted before the first getUpdates
    await polling.terminate()
    fake.inject_message(82, "sent while switching to the webhook")
    gw = await start_hooked(gateway, webhook_env(pconn, fake, backend, port), pconn, fake)
    await fake.wait_for_sent(lambda m: m.chat_id == 82, 15)
    assert [c for c in fake.call_log if c.status == 409] == []
    assert backend.texts() == ["sent while switching to polling",
                               "sent while switching to the webhook"]
    await gw.terminate()


async def test_a_url_telegram_refuses_is_fatal_and_not_retryable(
        pconn: PConn, hook_fake: FakeTelegram, gateway: StartGateway) -> None:
    fake = hook_fake
    env = webhook_env(pconn, fake, None, free_port(),
                      SWITCHBOARD_WEBHOOK_URL=f"http://{HOST}:9443/telegram")
    gw = gateway(env)
    status = await pconn.wait_state("fatal", 15)
    assert status["lastError"]["code"] == "telegram_webhook_refused"
    assert status["lastError"]["retryable"] is False
    assert "ports 80, 88, 443 or 8443" in status["lastError"]["message"]
    await gw.terminate()


async def test_a_revoked_token_is_fatal_in_webhook_mode_too(
        pconn: PConn, hook_fake: FakeTelegram, gateway: StartGateway) -> None:
    fake = hook_fake
    gw = await start_hooked(gateway, webhook_env(pconn, fake, None, free_port()), pconn, fake)
    fake.revoke_token()
    status = await pconn.wait_state("fatal", 15)
    assert status["lastError"]["code"] == "telegram_invalid_token"
    await gw.terminate()
