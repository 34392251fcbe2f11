"""telegram_protocol.py: what each Bot API error means, for polling and for sending."""

from __future__ import annotations

import httpx
import pytest
from telegram.error import (
    BadRequest,
    ChatMigrated,
    Conflict,
    Forbidden,
    InvalidToken,
    NetworkError,
    RetryAfter,
    TelegramError,
    TimedOut,
)

from switchboard_contract import DeadLetterReason, ErrorCode
from switchboard_gateway import telegram_protocol as proto
from switchboard_gateway.telegram_protocol import (
    ConflictWindow,
    PollAction,
    SendAction,
    UpdateBudget,
    poll_error,
    send_error,
)


@pytest.mark.parametrize(("exc", "action", "code"), [
    (InvalidToken("Unauthorized"), PollAction.FATAL, ErrorCode.TELEGRAM_INVALID_TOKEN),
    (RetryAfter(7), PollAction.WAIT, ErrorCode.TELEGRAM_RATE_LIMITED),
    (Conflict("terminated by other getUpdates request"), PollAction.CONFLICT,
     ErrorCode.TELEGRAM_POLLING_CONFLICT),
    (NetworkError("Bad Gateway"), PollAction.RECONNECT, ErrorCode.TELEGRAM_NETWORK_ERROR),
    (TimedOut(), PollAction.RECONNECT, ErrorCode.TELEGRAM_NETWORK_ERROR),
    (BadRequest("Bad Request: wrong offset"), PollAction.RECONNECT,
     ErrorCode.TELEGRAM_NETWORK_ERROR),
    (httpx.ConnectError("refused"), PollAction.RECONNECT, ErrorCode.TELEGRAM_NETWORK_ERROR),
    (OSError("unreachable"), PollAction.RECONNECT, ErrorCode.TELEGRAM_NETWORK_ERROR),
])
def test_polling_errors(exc: BaseException, action: PollAction, code: str) -> None:
    verdict = poll_error(exc)
    assert (verdict.action, verdict.code) == (action, code)


def test_polling_waits_what_telegram_says() -> None:
    assert poll_error(RetryAfter(7)).wait == 7


@pytest.mark.parametrize(("exc", "action"), [
    (InvalidToken("Unauthorized"), SendAction.FATAL),
    (RetryAfter(3), SendAction.WAIT),
    (ChatMigrated(-100123), SendAction.MIGRATE),
    # BadRequest is a NetworkError in PTB: it must not fall into the retry branch.
    (BadRequest("Bad Request: chat not found"), SendAction.DEAD),
    (Forbidden("Forbidden: bot was blocked by the user"), SendAction.DEAD),
    (NetworkError("Bad Gateway"), SendAction.RETRY),
    (TimedOut(), SendAction.RETRY),
    (TelegramError("something new"), SendAction.RETRY),
    (httpx.ReadError("reset"), SendAction.RETRY),
])
def test_sending_errors(exc: BaseException, action: SendAction) -> None:
    assert send_error(exc).action == action


def test_a_migrated_chat_names_its_new_id_and_a_refused_reply_its_reason() -> None:
    assert send_error(ChatMigrated(-100123)).chat_id == -100123
    assert send_error(RetryAfter(3)).wait == 3
    assert send_error(Forbidden("blocked")).reason == DeadLetterReason.REJECTED


def test_each_update_has_its_own_budget() -> None:
    budget = UpdateBudget(limit=3)
    assert [budget.failed(10) for _ in range(3)] == [False, False, True]
    assert budget.failed(11) is False  # another update starts afresh
    budget.done(10)
    assert budget.failed(10) is False


def test_conflicts_count_over_a_window_not_since_the_last_good_poll() -> None:
    window = ConflictWindow(window=60)
    assert [window.conflict(t) for t in (0, 10, 20)] == [1, 2, 3]  # good polls in between
    assert window.conflict(75) == 2  # the ones at 0 and 10 are older than the window
    assert window.conflict(200) == 1


@pytest.mark.parametrize(("token", "problem"), [
    ("", "is empty"),
    ("123456789:AAFakeTokenForSwitchboard\nTests0123", "line break"),
    ("123456789:AAFake TokenForSwitchboardTests0123", "space"),
    ("not-a-token", "not shaped like a bot token"),
    ("123456789:AAFakeTokenForSwitchboardTests0123", None),
    ("4242:chart-test-token", None),  # shorter ones too: only the shape is checked
])
def test_a_malformed_token_is_named_before_it_is_sent(token: str, problem: str | None) -> None:
    from switchboard_gateway.telegram_protocol import token_problem
    found = token_problem(token)
    assert (found is None) if problem is None else (found is not None and problem in found)


def test_a_long_poll_is_shortened_to_the_poller_fence_window() -> None:
    from switchboard_gateway.telegram_protocol import long_poll_timeout

    assert long_poll_timeout(30.0, None) == 30  # no fence
    assert long_poll_timeout(30.0, 45.0) == 30  # the window is wider
    assert long_poll_timeout(30.0, 12.7) == 11  # a second kept for the way back
    assert long_poll_timeout(30.0, 0.4) == 0  # the window is closing: a short poll


def test_flood_queue_keeps_each_chats_order_and_holds_the_offset_below_the_oldest_owed() -> None:
    from switchboard_gateway.telegram_protocol import FloodQueue, Owed

    q = FloodQueue(limit=3)
    assert q.low_water() is None and q.next_due() is None and not q
    q.park(Owed(10, 1, ["a"], None), until=5.0)
    q.park(Owed(12, 1, ["b"], None))  # behind chat 1's owed reply, same wait
    q.park(Owed(11, 2, ["c"], None), until=2.0)
    assert q.blocked(1) and q.blocked(2) and not q.blocked(3)
    assert q.low_water() == 10 and q.full() and len(q) == 3
    assert q.due(1.0) == [] and q.due(2.0) == [2] and q.next_due() == 2.0
    assert q.done(2).update_id == 11 and not q.blocked(2)
    q.limited(1, 4.0)  # a shorter wait never shortens the one in force
    assert q.due(4.5) == [] and q.due(5.0) == [1]
    assert q.first(1).update_id == 10
    q.done(1)
    assert q.first(1).update_id == 12 and q.low_water() == 12
    q.done(1)
    assert not q.blocked(1) and q.low_water() is None and not q.full()


# ------------------------------------------------------------------ webhook delivery

URL = "https://bots.example.com/tg/one"


def verdict(**given: object) -> proto.WebhookVerdict:
    args: dict[str, object] = {"url": URL, "ours": URL, "last_error_date": None,
                               "last_error_message": None, "since": 1000.0,
                               "last_ok": None, "last_refused": None}
    args.update(given)
    return proto.webhook_verdict(**args)  # type: ignore[arg-type]


def test_the_webhook_is_ok_until_telegram_reports_an_error_after_it_was_set() -> None:
    assert verdict().health is proto.WebhookHealth.OK
    # An error from before this gateway set the webhook (the last pod's outage) is old news.
    assert verdict(last_error_date=999, last_error_message="x").health is proto.WebhookHealth.OK
    failing = verdict(last_error_date=1005, last_error_message="Connection refused")
    assert failing.health is proto.WebhookHealth.FAILING
    assert "Connection refused" in failing.message


def test_a_delivery_after_the_error_means_it_recovered() -> None:
    assert verdict(last_error_date=1005, last_ok=1006.2).health is proto.WebhookHealth.OK
    assert verdict(last_error_date=1007, last_ok=1006.2).health is proto.WebhookHealth.FAILING


def test_an_error_telegram_got_from_our_own_refusal_is_the_backends_not_the_webhooks() -> None:
    assert verdict(last_error_date=1010, last_refused=1009.7).health is proto.WebhookHealth.OK
    assert verdict(last_error_date=1020, last_refused=1009.7).health is \
        proto.WebhookHealth.FAILING


def test_another_url_or_none_is_not_ours() -> None:
    assert verdict(url="").health is proto.WebhookHealth.NOT_OURS
    other = verdict(url="https://elsewhere.example/x")
    assert other.health is proto.WebhookHealth.NOT_OURS and "elsewhere" in other.message


def test_setwebhook_refusals_are_fatal_except_a_host_telegram_cannot_resolve_yet() -> None:
    port = proto.setwebhook_error(BadRequest(
        "bad webhook: Webhook can be set up only on ports 80, 88, 443 or 8443"))
    assert port is not None and port.action is PollAction.FATAL
    dns = proto.setwebhook_error(BadRequest(
        "bad webhook: Failed to resolve host: Name or service not known"))
    assert dns is not None and dns.action is PollAction.RECONNECT
    assert proto.setwebhook_error(NetworkError("Bad Gateway")) is None
