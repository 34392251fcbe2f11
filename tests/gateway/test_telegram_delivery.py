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


def _sends(fake: FakeTelegram, chat: int, status: int | None = None) -> list[Any]:
    return [c for c in fake.call_log if c.method == "sendMessage"
            and int(c.params.get("chat_id", 0)) == chat
            and (status is None or c.status == status)]


async def test_a_rate_limited_chat_waits_its_retry_after_while_other_chats_are_answered(
        pconn: PConn, fake: FakeTelegram, backend: EchoBackend, gateway: StartGateway) -> None:
    """Telegram's 429 on sendMessage is per chat. Before, the gateway slept retry_after inside
    the update loop, so every chat waited behind one busy group."""
    gw = await start_connected(gateway, telegram_env(pconn, fake, backend), pconn, fake)
    fake.flood_chat(70, retry_after=3)
    fake.inject_message(70, "first to the busy chat")
    fake.inject_message(70, "second to the busy chat")
    fake.inject_message(71, "to a quiet chat")
    await fake.wait_for_sent(lambda m: m.chat_id == 71, 10)
    await fake.wait_for_sent(lambda m: m.chat_id == 70 and "second" in m.text, 15)
    quiet_at = _sends(fake, 71, 200)[0].at
    busy = _sends(fake, 70)
    refused, answered = [c for c in busy if c.status == 429], [c for c in busy if c.status == 200]
    assert len(refused) == 1, busy  # asked once; then it waited, it did not hammer
    assert quiet_at < answered[0].at, "the quiet chat waited behind the busy one"
    assert answered[0].at - refused[0].at >= 2.9  # retry_after was honoured
    texts = [m.text for m in fake.sent_messages if m.chat_id == 70]
    assert texts == ["echo: first to the busy chat", "echo: second to the busy chat"]
    assert backend.texts() == ["first to the busy chat", "second to the busy chat",
                               "to a quiet chat"]  # each once
    assert pconn.status()["state"] == "connected"
    assert not [e for e in pconn.history if e.status.get("state") == "retrying"]
    await gw.terminate()


async def test_a_reply_owed_to_a_rate_limited_chat_survives_a_restart(
        pconn: PConn, fake: FakeTelegram, backend: EchoBackend, gateway: StartGateway) -> None:
    """The offset stays below an owed reply: a gateway stopped while a chat waits does not
    confirm that update, so the next one answers it. At least once, as everywhere: what came
    after the owed update was not confirmed either, so it is answered again."""
    env = telegram_env(pconn, fake, backend)
    gw = await start_connected(gateway, env, pconn, fake)
    fake.flood_chat(80, retry_after=60)
    fake.inject_message(81, "before")
    fake.inject_message(80, "owed")
    fake.inject_message(81, "after")
    await fake.wait_for_sent(lambda m: m.text == "echo: after", 10)
    assert _sends(fake, 80, 429)
    assert await gw.terminate() == 0
    fake.flood_chat(80, retry_after=0)  # the flood is over
    gw = await start_connected(gateway, env, pconn, fake)
    await fake.wait_for_sent(lambda m: m.text == "echo: owed", 10)
    sent = [m.text for m in fake.sent_messages]
    assert (sent.count("echo: before"), sent.count("echo: owed"), sent.count("echo: after")) \
        == (1, 1, 2)
    await gw.terminate()


async def test_a_stopping_gateway_sends_a_reply_whose_wait_ends_soon_and_confirms_it(
        pconn: PConn, fake: FakeTelegram, backend: EchoBackend, gateway: StartGateway) -> None:
    """SIGTERM while a chat waits 2 s: the reply still goes out before the process ends, so
    the next pod answers nothing twice."""
    env = telegram_env(pconn, fake, backend)
    gw = await start_connected(gateway, env, pconn, fake)
    fake.flood_chat(90, retry_after=2)
    fake.inject_message(90, "owed")
    fake.inject_message(91, "after")
    await fake.wait_for_sent(lambda m: m.text == "echo: after", 10)
    assert _sends(fake, 90, 429)
    assert await gw.terminate() == 0
    assert [m.text for m in fake.sent_messages].count("echo: owed") == 1  # before it exited
    gw = await start_connected(gateway, env, pconn, fake)
    assert await gw.terminate() == 0
    sent = [m.text for m in fake.sent_messages]
    assert (sent.count("echo: owed"), sent.count("echo: after")) == (1, 1)
    assert backend.texts().count("after") == 1
