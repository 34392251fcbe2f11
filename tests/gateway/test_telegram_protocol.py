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
