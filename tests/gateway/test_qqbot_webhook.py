"""QQ Bot HTTP callbacks: the gateway as a process, the fake QQ platform validating the
callback URL (op 13) and posting signed events, status in a real PlatformConnection."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Callable

import pytest
from test_telegram_gateway import StartGateway, metric

from switchboard_gateway.backend import EchoBackend
from switchboard_testkit.fake_qq import DEFAULT_APP_ID, DEFAULT_CLIENT_SECRET, FakeQQ
from switchboard_testkit.gateway_harness import GatewayProcess, PConn
from switchboard_testkit.net import free_port

pytestmark = pytest.mark.cluster

HOST = "qq.bots.example.test"
USER = "A1B2C3D4E5F60718293A4B5C6D7E8F90"


@pytest.fixture
def qq_pconn(make_pconn: Callable[..., PConn]) -> PConn:
    return make_pconn("qqbot")


@pytest.fixture
async def qq_fake() -> AsyncIterator[FakeQQ]:
    async with FakeQQ() as fake:
        yield fake


async def start(gateway: StartGateway, pconn: PConn, fake: FakeQQ,
                backend: EchoBackend) -> GatewayProcess:
    port = free_port()
    fake.callbacks.route(HOST, f"127.0.0.1:{port}")
    gw = gateway(pconn.env(
        SWITCHBOARD_API_BASE_URL=fake.base_url,
        SWITCHBOARD_QQ_APP_ID=DEFAULT_APP_ID,
        SWITCHBOARD_QQ_CLIENT_SECRET=DEFAULT_CLIENT_SECRET,
        SWITCHBOARD_RECONNECT=json.dumps({"maxAttempts": 5, "delaySeconds": [0.2, 0.4]}),
        SWITCHBOARD_BACKEND_URL=backend.url,
        SWITCHBOARD_BACKEND_TIMEOUT="2",
        SWITCHBOARD_DELIVERY="webhook",
        SWITCHBOARD_WEBHOOK_URL=f"https://{HOST}/qq/{pconn.name}",
        SWITCHBOARD_WEBHOOK_PORT=str(port)))
    await gw.wait_serving()
    await pconn.wait_state("connected")
    return gw


async def test_the_url_validates_and_signed_events_are_answered(
        qq_pconn: PConn, qq_fake: FakeQQ, backend: EchoBackend,
        gateway: StartGateway) -> None:
    fake = qq_fake
    gw = await start(gateway, qq_pconn, fake, backend)
    result = await fake.callbacks.configure(f"https://{HOST}/qq/{qq_pconn.name}")
    assert result["validated"], result  # the platform checked the op 13 signature
    fake.inject_message(USER, "hello by callback")
    sent = await fake.wait_for_sent(lambda m: "hello by callback" in m.text, 10)
    assert sent.text == "echo: hello by callback"
    await fake.wait_until(lambda: not fake.callbacks.queue, 5, "acknowledged with op 12")
    assert fake.live_connections == 0  # no websocket in this mode
    status = qq_pconn.status()
    assert status["webhook"]["url"] == f"https://{HOST}/qq/{qq_pconn.name}"
    assert DEFAULT_CLIENT_SECRET not in gw.logs() and DEFAULT_CLIENT_SECRET not in str(status)
    await gw.terminate()


async def test_unsigned_forged_and_replayed_callbacks_are_refused_and_counted(
        qq_pconn: PConn, qq_fake: FakeQQ, backend: EchoBackend,
        gateway: StartGateway) -> None:
    fake = qq_fake
    gw = await start(gateway, qq_pconn, fake, backend)
    assert (await fake.callbacks.configure(f"https://{HOST}/qq/{qq_pconn.name}"))["validated"]
    event = {"op": 0, "id": "C2C_MESSAGE_CREATE:forged", "t": "C2C_MESSAGE_CREATE",
             "d": {"author": {"user_openid": USER}, "content": "forged", "id": "m-forged",
                   "timestamp": "2026-12-03T12:00:00+08:00"}}
    assert await fake.callbacks.post(event, sign=False) == 401
    assert await fake.callbacks.post(event, signature="00" * 64) == 401
    stale = str(int(time.time()) - 3600)  # a captured request, replayed an hour later
    assert await fake.callbacks.post(event, timestamp=stale) == 401
    status = await qq_pconn.wait_status(
        lambda s: (s.get("webhook") or {}).get("refusedRequests") == 3, 5, "refusals shown")
    assert status["state"] == "connected"
    assert backend.received == [] and fake.sent_messages == []
    text = await gw.metrics()
    assert metric(text, "switchboard_gateway_webhook_refused_total", reason="signature") == 2
    assert metric(text, "switchboard_gateway_webhook_refused_total",
                  reason="stale_timestamp") == 1
    assert await fake.callbacks.post(event) == 200  # signed now, by the platform's key
    await fake.wait_for_sent(lambda m: "forged" in m.text, 5)
    await gw.terminate()


async def test_a_backend_outage_is_posted_again_and_nothing_is_lost(
        qq_pconn: PConn, qq_fake: FakeQQ, backend: EchoBackend,
        gateway: StartGateway) -> None:
    fake = qq_fake
    gw = await start(gateway, qq_pconn, fake, backend)
    assert (await fake.callbacks.configure(f"https://{HOST}/qq/{qq_pconn.name}"))["validated"]
    backend.fail_status = 500
    fake.inject_message(USER, "during the outage")
    await fake.wait_until(lambda: sum(p.status == 503 for p in fake.callbacks.pushes) >= 2,
                          10, "two unacknowledged posts")
    status = await qq_pconn.wait_status(
        lambda s: (s.get("lastError") or {}).get("code") == "backend_error", 5,
        "the backend's error in status")
    assert status["state"] == "connected"
    backend.fail_status = None
    sent = await fake.wait_for_sent(lambda m: "during the outage" in m.text, 15)
    assert sent.text == "echo: during the outage"
    await fake.wait_until(lambda: not fake.callbacks.queue, 5, "acknowledged")
    await qq_pconn.wait_status(lambda s: not s.get("lastError"), 10, "the error cleared")
    assert len(fake.sent_messages) == 1
    await gw.terminate()


async def test_a_url_answering_with_another_key_does_not_validate(
        qq_fake: FakeQQ) -> None:
    """The fake's side of op 13: an answer signed with a key not derived from the bot secret
    (a gateway of another bot behind the URL) is not accepted."""
    from aiohttp import web

    from switchboard_gateway import qqbot_callback as cb

    wrong = cb.signing_key("the-secret-of-another-bot")

    async def answer(request: web.Request) -> web.Response:
        return web.json_response(cb.validation_answer(wrong, (await request.json())["d"]))

    app = web.Application()
    app.router.add_post("/qq", answer)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    qq_fake.callbacks.route(HOST, f"127.0.0.1:{port}")
    try:
        result = await qq_fake.callbacks.configure(f"https://{HOST}/qq")
        assert result["status"] == 200 and not result["validated"]
        assert not qq_fake.callbacks.active
    finally:
        await runner.cleanup()
