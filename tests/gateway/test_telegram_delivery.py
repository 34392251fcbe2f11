"""No update wedges a Telegram bot: the gateway as a process against the fake Bot API (faults
scripted in the fake), status in a real PlatformConnection."""

from __future__ import annotations

from typing import Any

import pytest
from test_telegram_gateway import StartGateway, metric, start_connected, telegram_env

from switchboard_gateway.backend import EchoBackend
from switchboard_gateway.telegram_protocol import UPDATE_ATTEMPTS
from switchboard_testkit.fake_telegram import FakeTelegram
from switchboard_testkit.gateway_harness import PConn

pytestmark = pytest.mark.cluster

GROUP, SUPERGROUP = -4001, -1004001


async def test_a_reply_to_a_migrated_group_goes_to_the_supergroup_and_nothing_wedges(
        pconn: PConn, fake: FakeTelegram, backend: EchoBackend, gateway: StartGateway) -> None:
    """Before: ChatMigrated was handled as a network error; the ladder reset on every poll, so
    the same update was retried forever (~100 sends a second), state flapped retrying 1/N and
    every later message waited behind it."""
    gw = await start_connected(gateway, telegram_env(pconn, fake, backend), pconn, fake)
    fake.migrate_chat(GROUP, SUPERGROUP)
    fake.inject_message(GROUP, "hello from the old group")
    fake.inject_message(77, "next in line")
    moved = await fake.wait_for_sent(lambda m: m.chat_id == SUPERGROUP, 10)
    assert moved.text == "echo: hello from the old group"
    await fake.wait_for_sent(lambda m: m.chat_id == 77, 10)
    sends = [c for c in fake.call_log if c.method == "sendMessage"]
    assert len(sends) == 3  # the refused one, the resend, the next message's reply
    assert backend.texts() == ["hello from the old group", "next in line"]
    assert pconn.status()["state"] == "connected"
    assert not [e for e in pconn.history if e.status.get("state") == "retrying"]
    await gw.terminate()


async def test_a_reply_the_chat_refuses_is_dead_lettered_and_the_next_is_served(
        pconn: PConn, fake: FakeTelegram, backend: EchoBackend, gateway: StartGateway) -> None:
    gw = await start_connected(gateway, telegram_env(pconn, fake, backend), pconn, fake)
    fake.refuse_chat(55, 403, "Forbidden: bot was blocked by the user")
    fake.inject_message(55, "secret words")
    fake.inject_message(56, "after it")
    await fake.wait_for_sent(lambda m: m.chat_id == 56, 10)
    status = await pconn.wait_status(lambda s: (s.get("deadLetters") or {}).get("count") == 1, 5,
                                  "the dead letter in status")
    last = status["deadLetters"]["last"]
    assert (last["chatId"], last["messageId"], last["reason"]) == ("55", "1", "rejected")
    assert "blocked" in last["message"]
    assert "secret words" not in str(status) and "secret words" not in gw.logs()
    text = await gw.metrics()
    assert metric(text, "switchboard_gateway_dead_letters_total", reason="rejected") == 1
    assert status["state"] == "connected"
    await gw.terminate()


async def test_a_reply_that_keeps_failing_uses_its_budget_then_the_bot_moves_on(
        pconn: PConn, fake: FakeTelegram, backend: EchoBackend, gateway: StartGateway) -> None:
    """sendMessage 502s for this reply while getUpdates works: before, every successful poll
    reset the ladder, so it never ended; now the update has a budget."""
    gw = await start_connected(gateway, telegram_env(pconn, fake, backend), pconn, fake)
    fake.fail_next(UPDATE_ATTEMPTS, 502, method="sendMessage")
    fake.inject_message(91, "unlucky")
    fake.inject_message(92, "lucky")
    await fake.wait_for_sent(lambda m: m.chat_id == 92, 30)
    status = await pconn.wait_status(lambda s: (s.get("deadLetters") or {}).get("count") == 1, 5,
                                  "the dead letter in status")
    assert status["deadLetters"]["last"]["reason"] == "attempts_exhausted"
    assert backend.texts() == ["unlucky", "lucky"]  # the backend saw each once
    sends = [c for c in fake.call_log if c.method == "sendMessage"]
    assert len(sends) == UPDATE_ATTEMPTS + 1
    await pconn.wait_state("connected")
    await gw.terminate()


async def test_two_pollers_on_one_token_end_in_polling_conflict(
        pconn: PConn, make_pconn: Any, fake: FakeTelegram, gateway: StartGateway) -> None:
    """Two gateways poll with one token: every newer getUpdates ends the older one with 409,
    and each one's polls succeed in between. Before, every good poll reset the count, so the
    status flapped connected <-> retrying 1/N forever and no Warning came; now the conflicts
    are counted over a window and the connection ends non-retryable PollingConflict."""
    other = make_pconn("telegram")
    env = telegram_env(pconn, fake, SWITCHBOARD_TELEGRAM_CONFLICT_RETRIES="3",
                       SWITCHBOARD_POLL_TIMEOUT="2")
    first = await start_connected(gateway, env, pconn, fake)
    # The other one is more patient, so this one is the first to give up.
    second = gateway(telegram_env(other, fake, SWITCHBOARD_TELEGRAM_CONFLICT_RETRIES="50",
                                  SWITCHBOARD_POLL_TIMEOUT="2"))
    await second.wait_serving()
    status = await pconn.wait_state("fatal", timeout=60)
    assert status["lastError"]["code"] == "telegram_polling_conflict"
    assert status["lastError"]["retryable"] is False
    assert "connected" in pconn.states()  # it did poll successfully in between
    await first.terminate()
    await second.terminate()
