"""The Telegram gateway end to end: ``switchboard-gateway`` as a process, the fake Bot API on
127.0.0.1, a local HTTP backend, and status written into a real PlatformConnection with the
gateway's least-privilege ServiceAccount."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from typing import Any

import pytest

from switchboard_gateway.backend import EchoBackend
from switchboard_testkit.fake_telegram import GATEWAY_TEST_TOKEN, FakeTelegram
from switchboard_testkit.gateway_harness import GatewayProcess, PConn

pytestmark = pytest.mark.cluster

TOKEN = GATEWAY_TEST_TOKEN

FAST = json.dumps({"maxAttempts": 5, "initialDelaySeconds": 1, "maxDelaySeconds": 2})
StartGateway = Callable[[dict[str, str]], GatewayProcess]


def telegram_env(pconn: PConn, fake: FakeTelegram, backend: EchoBackend | None = None,
                 reconnect: str = FAST, **extra: str) -> dict[str, str]:
    env = pconn.env(
        SWITCHBOARD_API_BASE_URL=fake.base_url,
        SWITCHBOARD_TELEGRAM_TOKEN=TOKEN,
        SWITCHBOARD_RECONNECT=reconnect,
        SWITCHBOARD_POLL_TIMEOUT="10",
    )
    if backend is not None:
        env["SWITCHBOARD_BACKEND_URL"] = backend.url
        env["SWITCHBOARD_BACKEND_TIMEOUT"] = "5"
    else:
        env["SWITCHBOARD_BACKEND_ECHO"] = "true"
    env.update(extra)
    return env


async def start_connected(start: StartGateway, env: dict[str, str], pconn: PConn,
                          fake: FakeTelegram) -> GatewayProcess:
    gw = start(env)
    await gw.wait_serving()
    await pconn.wait_state("connected")
    await fake.wait_until(lambda: fake.active_polls == 1, 10, "gateway long-polling")
    return gw


def assert_no_secret(gw: GatewayProcess, pconn: PConn) -> None:
    secret = TOKEN.split(":", 1)[1]
    assert secret not in gw.logs()
    assert all(secret not in json.dumps(e.status) for e in pconn.history)
    assert secret not in json.dumps(pconn.status())


def metric(text: str, name: str, **labels: str) -> float:
    """Value of one sample in Prometheus text format (0 if absent)."""
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', line.split(" ")[0]))
        if all(found.get(k) == v for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def failed_polls(fake: FakeTelegram, status: int = 502) -> list[float]:
    return [c.at for c in fake.call_log if c.method == "getUpdates" and c.status == status]


def retrying_events(pconn: PConn) -> list[tuple[float, dict[str, Any]]]:
    return [(e.at, e.status) for e in pconn.history if e.status.get("state") == "retrying"]


async def test_relays_messages_and_reports_connected(
        pconn: PConn, fake: FakeTelegram, backend: EchoBackend, gateway: StartGateway) -> None:
    gw = await start_connected(gateway, telegram_env(pconn, fake, backend), pconn, fake)
    status = pconn.status()
    assert status["attempts"] == "0/5" and status["gatewayPod"] == "gw-0"
    assert "lastError" not in status and status["stateSince"].endswith("Z")

    fake.inject_message(4242, "hello gateway")
    sent = await fake.wait_for_sent(lambda m: m.chat_id == 4242, 10)
    assert sent.text == "echo: hello gateway"
    (body,) = backend.received
    assert body["connection"] == f"{pconn.namespace}/{pconn.name}"
    assert body["platform"] == "telegram" and body["chat"] == {"id": "4242"}
    assert body["sender"] == {"id": "4242", "name": "Test User"}
    assert body["text"] == "hello gateway" and body["messageId"] == "1"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", body["time"])

    assert (await gw.http_get(gw.health_url + "/healthz"))[0] == 200
    assert (await gw.http_get(gw.health_url + "/readyz"))[0] == 200
    text = await gw.metrics()
    assert metric(text, "switchboard_gateway_state", state="connected") == 1
    assert metric(text, "switchboard_gateway_state", state="retrying") == 0
    assert metric(text, "switchboard_gateway_messages_received_total") == 1
    assert metric(text, "switchboard_gateway_messages_sent_total") == 1
    assert metric(text, "switchboard_gateway_backend_latency_seconds_count") == 1
    assert metric(text, "switchboard_gateway_status_writes_total", result="ok") >= 2
    assert TOKEN.split(":", 1)[1] not in text

    # Server-side apply under our own manager, owning only the gateway's fields.
    managed = [m for m in pconn.get()["metadata"]["managedFields"]
               if m["manager"] == "switchboard-gateway"]
    assert [m["subresource"] for m in managed] == ["status"]
    owned = set(managed[0]["fieldsV1"]["f:status"])
    assert owned <= {"f:state", "f:attempt", "f:maxAttempts", "f:attempts", "f:lastError",
                     "f:stateSince", "f:gatewayPod", "f:lastActivity", "f:deadLetters"}
    assert_no_secret(gw, pconn)


async def test_502_storm_reports_each_attempt_then_connected(
        pconn: PConn, fake: FakeTelegram, gateway: StartGateway) -> None:
    gw = await start_connected(gateway, telegram_env(pconn, fake), pconn, fake)
    fake.fail_next(3, 502)
    fake.inject_message(7, "wake up")  # the parked poll returns it; the next 3 polls fail
    await fake.wait_until(lambda: len(failed_polls(fake)) == 3, 10, "three failed polls")
    fake.inject_message(7, "after the storm")
    await fake.wait_for_sent(lambda m: m.text == "echo: after the storm", 10)
    await pconn.wait_state("connected", attempts="0/5")

    failed = failed_polls(fake)
    assert len(failed) == 3
    retrying = retrying_events(pconn)
    assert [s["attempts"] for _, s in retrying] == ["1/5", "2/5", "3/5"]
    for failed_at, (seen_at, status) in zip(failed, retrying, strict=True):
        # Written before the back-off sleep: visible within a second of the failed attempt.
        assert 0 <= seen_at - failed_at < 1.0, (seen_at - failed_at, status)
        assert status["lastError"]["code"] == "telegram_network_error"
        assert status["lastError"]["retryable"] is True
        assert "502" in status["lastError"]["message"]
    # The ladder's delays: 1 s, then 2 s (maxDelaySeconds).
    assert 0.9 <= failed[1] - failed[0] < 1.9 and 1.9 <= failed[2] - failed[1] < 2.9
    assert pconn.states()[-1] == "connected"
    text = await gw.metrics()
    assert metric(text, "switchboard_gateway_reconnect_attempts_total") == 3
    assert metric(text, "switchboard_gateway_errors_total", code="telegram_network_error") == 3
    assert_no_secret(gw, pconn)


async def test_exhausted_ladder_is_a_retryable_fatal_and_the_process_stays_up(
        pconn: PConn, fake: FakeTelegram, gateway: StartGateway) -> None:
    reconnect = json.dumps({"maxAttempts": 2, "initialDelaySeconds": 1, "maxDelaySeconds": 1})
    gw = await start_connected(gateway, telegram_env(pconn, fake, reconnect=reconnect),
                               pconn, fake)
    await fake.refuse_connections()
    status = await pconn.wait_state("fatal", timeout=20)
    assert status["lastError"]["code"] == "telegram_network_error"
    assert status["lastError"]["retryable"] is True
    assert "gave up after 2 reconnect attempts" in status["lastError"]["message"]
    assert [s["attempts"] for _, s in retrying_events(pconn)] == ["1/2", "2/2"]
    assert status["attempts"] == "2/2"  # how far the ladder got
    # Alive for the kubelet, not ready: the operator decides what happens next.
    assert gw.alive()
    assert (await gw.http_get(gw.health_url + "/healthz"))[0] == 200
    assert (await gw.http_get(gw.health_url + "/readyz"))[0] == 503
    # SIGTERM keeps the fatal error in status for the operator.
    assert await gw.terminate() == 0
    assert pconn.status()["state"] == "fatal"
    assert_no_secret(gw, pconn)


async def test_invalid_token_is_a_non_retryable_fatal_without_leaking_it(
        pconn: PConn, fake: FakeTelegram, gateway: StartGateway) -> None:
    env = telegram_env(pconn, fake, SWITCHBOARD_LOG_LEVEL="DEBUG")
    gw = await start_connected(gateway, env, pconn, fake)
    fake.revoke_token()  # the in-flight long poll ends with 401 at once
    status = await pconn.wait_state("fatal", timeout=10)
    assert status["lastError"]["code"] == "telegram_invalid_token"
    assert status["lastError"]["retryable"] is False
    assert "retrying" not in pconn.states()
    await gw.terminate()
    assert_no_secret(gw, pconn)
    assert "getUpdates" in gw.logs() or "telegram" in gw.logs()  # DEBUG did log requests


async def test_bad_token_at_start_is_fatal_and_never_logged(
        pconn: PConn, fake: FakeTelegram, gateway: StartGateway) -> None:
    wrong = "777000111:AAwrongTOKENwrongTOKENwrongTOKEN_xyz"
    env = telegram_env(pconn, fake, SWITCHBOARD_LOG_LEVEL="DEBUG")
    env["SWITCHBOARD_TELEGRAM_TOKEN"] = wrong
    gw = gateway(env)
    status = await pconn.wait_state("fatal", timeout=15)
    assert status["lastError"]["code"] == "telegram_invalid_token"
    assert status["lastError"]["retryable"] is False
    await gw.terminate()
    secret = wrong.split(":", 1)[1]
    assert secret not in gw.logs() and secret not in json.dumps(pconn.status())
    assert "rejected" in gw.logs()  # PTB's message names the token: it was there, redacted


async def test_conflict_ladder_then_non_retryable_fatal(
        pconn: PConn, fake: FakeTelegram, gateway: StartGateway) -> None:
    env = telegram_env(pconn, fake, SWITCHBOARD_TELEGRAM_CONFLICT_RETRIES="2")
    gw = await start_connected(gateway, env, pconn, fake)
    fake.conflict_next(1)
    fake.inject_message(1, "wake")
    await pconn.wait_state("retrying", attempts="1/2")
    await pconn.wait_state("connected", timeout=10)  # one conflict, then polling works again

    # The count is over a window, not since the last good poll: the earlier one still counts.
    fake.conflict_next(2)
    fake.inject_message(1, "wake again")
    status = await pconn.wait_state("fatal", timeout=20)
    assert status["lastError"]["code"] == "telegram_polling_conflict"
    assert status["lastError"]["retryable"] is False
    conflict = [s for _, s in retrying_events(pconn)
                if s["lastError"]["code"] == "telegram_polling_conflict"]
    assert [s["attempts"] for s in conflict] == ["1/2", "2/2"]
    await gw.terminate()


async def test_rate_limit_waits_retry_after_without_failing(
        pconn: PConn, fake: FakeTelegram, gateway: StartGateway) -> None:
    gw = await start_connected(gateway, telegram_env(pconn, fake), pconn, fake)
    fake.rate_limit_next(1, retry_after=2)
    fake.inject_message(5, "wake up")  # the parked poll returns it; the next one gets 429
    await fake.wait_until(lambda: len(failed_polls(fake, 429)) == 1, 10, "rate limited poll")
    fake.inject_message(5, "after the flood")
    await fake.wait_for_sent(lambda m: m.text == "echo: after the flood", 15)
    polls = [c for c in fake.call_log if c.method == "getUpdates"]
    limited = next(i for i, c in enumerate(polls) if c.status == 429)
    assert polls[limited + 1].at - polls[limited].at >= 1.9  # waited retry_after
    assert "retrying" not in pconn.states() and pconn.status()["state"] == "connected"
    text = await gw.metrics()
    assert metric(text, "switchboard_gateway_errors_total", code="telegram_rate_limited") == 1
    await gw.terminate()


async def test_no_message_lost_across_a_forced_reconnect(
        pconn: PConn, fake: FakeTelegram, backend: EchoBackend, gateway: StartGateway) -> None:
    gw = await start_connected(gateway, telegram_env(pconn, fake, backend), pconn, fake)
    fake.inject_message(1, "before")
    await fake.wait_for_sent(lambda m: m.text == "echo: before", 10)
    await fake.refuse_connections(duration=2.5)  # resets the long poll, refuses reconnects
    for i in range(5):
        fake.inject_message(1, f"while down {i}")
    await pconn.wait_state("retrying", timeout=5)
    fake.inject_message(1, "after")
    await fake.wait_for_sent(lambda m: m.text == "echo: after", 20)
    await pconn.wait_state("connected", timeout=5)
    expected = ["before", *[f"while down {i}" for i in range(5)], "after"]
    assert [m.text for m in fake.sent_messages] == [f"echo: {t}" for t in expected]
    assert backend.texts() == expected  # each handed to the backend exactly once
    await gw.terminate()


async def test_restart_redelivers_the_update_the_backend_never_accepted(
        pconn: PConn, fake: FakeTelegram, backend: EchoBackend, gateway: StartGateway) -> None:
    import asyncio

    backend.hold = asyncio.Event()  # the backend takes the request but never answers
    gw = await start_connected(gateway, telegram_env(pconn, fake, backend), pconn, fake)
    update_id = fake.inject_message(9, "survive the restart")
    await backend.wait_until(lambda: len(backend.received) == 1)
    assert await gw.kill() != 0  # SIGKILL: no clean shutdown, nothing confirmed
    assert [u["update_id"] for u in fake.pending_updates] == [update_id]

    backend.hold.set()
    backend.hold = None
    gw2 = gateway(telegram_env(pconn, fake, backend, SWITCHBOARD_POD_NAME="gw-1"))
    sent = await fake.wait_for_sent(lambda m: m.chat_id == 9, 20)
    assert sent.text == "echo: survive the restart"
    assert backend.texts() == ["survive the restart", "survive the restart"]  # at least once
    await pconn.wait_state("connected", gatewayPod="gw-1")
    assert await gw2.terminate() == 0
    assert fake.pending_updates == []  # confirmed on the way out
    assert len(fake.sent_messages) == 1


async def test_update_seen_twice_is_handed_to_the_backend_once(
        pconn: PConn, fake: FakeTelegram, backend: EchoBackend, gateway: StartGateway) -> None:
    gw = await start_connected(gateway, telegram_env(pconn, fake, backend), pconn, fake)
    fake.fail_next(1, 502, method="sendMessage")  # the reply fails: the update is not confirmed
    fake.inject_message(3, "only once")
    await fake.wait_for_sent(lambda m: m.text == "echo: only once", 15)
    # The update came back from getUpdates after the reconnect, but only the reply was redone.
    returned = [c for c in fake.call_log if c.method == "getUpdates" and c.status == 200]
    assert len(returned) >= 2
    assert backend.texts() == ["only once"]
    assert len(fake.sent_messages) == 1
    text = await gw.metrics()
    assert metric(text, "switchboard_gateway_duplicate_messages_total") == 1
    assert metric(text, "switchboard_gateway_messages_received_total") == 1
    await gw.terminate()


async def test_backend_failure_holds_the_offset_and_shows_in_status(
        pconn: PConn, fake: FakeTelegram, backend: EchoBackend, gateway: StartGateway) -> None:
    gw = await start_connected(gateway, telegram_env(pconn, fake, backend), pconn, fake)
    backend.fail_status = 503
    update_id = fake.inject_message(11, "wait for the backend")
    status = await pconn.wait_status(lambda s: (s.get("lastError") or {}).get("code")
                                     == "backend_error", 10, "backend error in status")
    assert status["state"] == "connected" and status["lastError"]["retryable"] is True
    assert "503" in status["lastError"]["message"]
    await backend.wait_until(lambda: len(backend.received) >= 3)  # retried with back-off
    assert [u["update_id"] for u in fake.pending_updates] == [update_id]  # offset held
    text = await gw.metrics()
    assert metric(text, "switchboard_gateway_errors_total", code="backend_error") >= 2

    backend.fail_status = None
    await fake.wait_for_sent(lambda m: m.text == "echo: wait for the backend", 10)
    status = await pconn.wait_status(lambda s: "lastError" not in s, 5, "backend error cleared")
    assert status["state"] == "connected"
    fake.inject_message(11, "next")  # the next poll confirms the held update
    await fake.wait_for_sent(lambda m: m.text == "echo: next", 10)
    assert update_id not in [u["update_id"] for u in fake.pending_updates]
    await gw.terminate()


async def test_deaf_link_is_caught_by_the_getme_probe(
        pconn: PConn, fake: FakeTelegram, gateway: StartGateway) -> None:
    env = telegram_env(pconn, fake, SWITCHBOARD_PROBE_INTERVAL="1",
                       SWITCHBOARD_PROBE_TIMEOUT="1")
    gw = await start_connected(gateway, env, pconn, fake)
    fake.stall_next(1, seconds=30, method="getMe")
    started = time.monotonic()
    status = await pconn.wait_state("retrying", timeout=10)
    assert time.monotonic() - started < 4  # probe interval + probe timeout + a write
    assert status["lastError"]["code"] == "telegram_network_error"
    assert "getMe" in status["lastError"]["message"]
    await pconn.wait_state("connected", timeout=10)
    await gw.terminate()


async def test_sigterm_stops_cleanly_and_writes_disconnected(
        pconn: PConn, fake: FakeTelegram, gateway: StartGateway) -> None:
    gw = await start_connected(gateway, telegram_env(pconn, fake), pconn, fake)
    fake.inject_message(2, "last words")
    await fake.wait_for_sent(lambda m: m.text == "echo: last words", 10)
    started = time.monotonic()
    assert await gw.terminate() == 0
    assert time.monotonic() - started < 5
    status = pconn.status()
    assert status["state"] == "disconnected" and "lastError" not in status
    assert fake.pending_updates == []  # the handled update was confirmed before exiting
    assert_no_secret(gw, pconn)


async def test_invalid_environment_is_reported_as_fatal(
        pconn: PConn, fake: FakeTelegram, gateway: StartGateway) -> None:
    env = telegram_env(pconn, fake, SWITCHBOARD_RECONNECT='{"maxAttempts": 0}')
    gw = gateway(env)
    status = await pconn.wait_state("fatal", timeout=15)
    assert status["lastError"]["code"] == "gateway_config_invalid"
    assert status["lastError"]["retryable"] is False
    assert "maxAttempts" in status["lastError"]["message"]
    assert status["attempts"] == "-"  # no ladder ran: not "0/0" in kubectl get
    assert await gw.terminate() == 0


async def test_sigterm_during_a_long_back_off_stops_at_once(
        pconn: PConn, fake: FakeTelegram, gateway: StartGateway) -> None:
    reconnect = json.dumps({"maxAttempts": 10, "initialDelaySeconds": 60,
                            "maxDelaySeconds": 60})
    gw = await start_connected(gateway, telegram_env(pconn, fake, reconnect=reconnect),
                               pconn, fake)
    await fake.refuse_connections()
    await pconn.wait_state("retrying", attempts="1/10")
    started = time.monotonic()
    assert await gw.terminate() == 0
    assert time.monotonic() - started < 5  # well within the pod's grace period
    status = pconn.status()
    assert status["state"] == "disconnected" and "lastError" not in status


async def test_status_api_errors_never_stall_the_relay(
        pconn: PConn, fake: FakeTelegram, gateway: StartGateway) -> None:
    from kubernetes import client

    rbac = client.RbacAuthorizationV1Api(pconn.api)
    name = f"gateway-{pconn.name}"
    binding = rbac.read_namespaced_role_binding(name, pconn.namespace)
    rbac.delete_namespaced_role_binding(name, pconn.namespace)  # every status write: 403

    gw = gateway(telegram_env(pconn, fake))
    await gw.wait_serving()
    await fake.wait_until(lambda: fake.active_polls == 1, 15, "gateway long-polling")
    fake.inject_message(21, "status is down, messages are not")
    await fake.wait_for_sent(lambda m: m.chat_id == 21, 5)
    assert metric(await gw.metrics(), "switchboard_gateway_status_writes_total",
                  result="error") >= 1
    assert pconn.status() == {}
    # Readiness follows the adapter, not the API server.
    assert (await gw.http_get(gw.health_url + "/readyz"))[0] == 200

    rbac.create_namespaced_role_binding(pconn.namespace, client.V1RoleBinding(
        metadata=client.V1ObjectMeta(name=name), role_ref=binding.role_ref,
        subjects=binding.subjects))
    await pconn.wait_state("connected", timeout=20)  # retried with back-off, latest state
    await gw.terminate()


async def test_platform_error_text_is_bounded_printable_and_redacted_in_status(
        pconn: PConn, fake: FakeTelegram, gateway: StartGateway) -> None:
    """Any server named in apiBaseURL writes the text of its errors: PTB makes the JSON
    description the exception message. Status gets it bounded, without control characters,
    and without the token even if the server echoes it."""
    gw = await start_connected(gateway, telegram_env(pconn, fake), pconn, fake)
    hostile = f"Bad Gateway\r\n\x1b[31mFORGED LOG LINE token={TOKEN}\x00" + "A" * 20000
    fake.fail_next(1, 500, body="json", description=hostile)
    fake.inject_message(7, "wake up")
    status = await pconn.wait_state("retrying", timeout=10)
    message = status["lastError"]["message"]
    assert "Bad Gateway" in message
    assert len(message) <= 512
    assert message.isprintable(), repr(message[:80])
    assert TOKEN not in message
    await gw.terminate()
    assert_no_secret(gw, pconn)
