"""What a Telegram Bot API error means for the gateway: pure decisions, no I/O.

The counterpart of qqbot_protocol.py. telegram.py does the calls; this module says what to do
about each failure, separately for polling (getUpdates: the connection) and for sending a reply
(sendMessage: one update), and keeps the per-update attempt budget, so that one update that
cannot be answered never wedges the bot: past its budget it is dead-lettered (counted, named by
chat and message id, never by its text) and the next update is served.

Polling (the connection's ladder, config.TelegramReconnect):
- 401/404 (InvalidToken): fatal, not retryable (`telegram_invalid_token`);
- 429 (RetryAfter): wait ``retry_after``, no failure;
- 409 (Conflict): the conflict ladder, then fatal `telegram_polling_conflict`;
- anything else (network, 5xx, other 4xx, a dead getMe probe): the network ladder, then a
  retryable fatal `telegram_network_error`.

Sending a reply (one update):
- 429: that chat waits ``retry_after`` (not an attempt; nothing is dropped): the reply, and
  every later one to the same chat, waits in the chat's queue (FloodQueue), in order, while
  other chats are answered; the offset stays below the oldest owed update, so a restart
  meanwhile gets it again;
- ChatMigrated (a group became a supergroup): send again to ``migrate_to_chat_id``;
- 400 (BadRequest) and 403 (Forbidden): the chat cannot take it (gone, the bot blocked or
  removed, the text refused): dead-lettered at once, retrying cannot help;
- 401/404: the token was revoked: fatal, as when polling;
- anything else (network, 5xx, unknown errors): an attempt of the update's budget, and the
  network ladder; past the budget the update is dead-lettered.

The ladders reset only after a whole cycle succeeded: getUpdates answered *and* every update it
returned was handled (answered or dead-lettered).
"""

from __future__ import annotations

import datetime as dt
import re
from collections import deque
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from telegram.error import (
    BadRequest,
    ChatMigrated,
    Conflict,
    Forbidden,
    InvalidToken,
    RetryAfter,
)

from switchboard_contract import DeadLetterReason, ErrorCode

# Attempts to answer one update (its backend call excluded: a backend that is down holds the
# update, it does not consume its budget) before it is dead-lettered.
UPDATE_ATTEMPTS = 5


class PollAction(Enum):
    FATAL = "fatal"  # give up now, not retryable
    WAIT = "wait"  # flood control: wait, then poll again
    CONFLICT = "conflict"  # another poller: the conflict ladder
    RECONNECT = "reconnect"  # the network ladder


class SendAction(Enum):
    FATAL = "fatal"  # the token is gone: the whole adapter stops
    WAIT = "wait"  # flood control for this chat: wait, send again
    MIGRATE = "migrate"  # send again to the new chat id
    DEAD = "dead"  # this update cannot be answered: dead letter now
    RETRY = "retry"  # an attempt of the update's budget; the network ladder


@dataclass(frozen=True)
class Verdict:
    action: PollAction | SendAction
    code: str = ""  # ErrorCode for status and metrics
    wait: float = 0.0  # seconds (WAIT)
    chat_id: int | None = None  # the new chat (MIGRATE)
    reason: str = ""  # DeadLetterReason (DEAD)


def retry_after_seconds(exc: RetryAfter) -> float:
    value: Any = exc.retry_after  # int, or timedelta with PTB_TIMEDELTA=true
    return value.total_seconds() if isinstance(value, dt.timedelta) else float(value)


def poll_error(exc: BaseException) -> Verdict:
    """What a failed getUpdates (or getMe/deleteWebhook at start) means."""
    if isinstance(exc, InvalidToken):
        return Verdict(PollAction.FATAL, ErrorCode.TELEGRAM_INVALID_TOKEN)
    if isinstance(exc, RetryAfter):
        return Verdict(PollAction.WAIT, ErrorCode.TELEGRAM_RATE_LIMITED,
                       wait=retry_after_seconds(exc))
    if isinstance(exc, Conflict):
        return Verdict(PollAction.CONFLICT, ErrorCode.TELEGRAM_POLLING_CONFLICT)
    return Verdict(PollAction.RECONNECT, ErrorCode.TELEGRAM_NETWORK_ERROR)


def send_error(exc: BaseException) -> Verdict:
    """What a failed sendMessage means for the update it answers."""
    if isinstance(exc, InvalidToken):
        return Verdict(SendAction.FATAL, ErrorCode.TELEGRAM_INVALID_TOKEN)
    if isinstance(exc, RetryAfter):
        return Verdict(SendAction.WAIT, ErrorCode.TELEGRAM_RATE_LIMITED,
                       wait=retry_after_seconds(exc))
    if isinstance(exc, ChatMigrated):
        return Verdict(SendAction.MIGRATE, ErrorCode.TELEGRAM_SEND_FAILED,
                       chat_id=int(exc.new_chat_id))
    if isinstance(exc, BadRequest | Forbidden):
        return Verdict(SendAction.DEAD, ErrorCode.TELEGRAM_SEND_FAILED,
                       reason=DeadLetterReason.REJECTED)
    return Verdict(SendAction.RETRY, ErrorCode.TELEGRAM_NETWORK_ERROR)


# What BotFather hands out: the bot's id, a colon, then letters, digits, '-' and '_'.
TOKEN_SHAPE = re.compile(r"\d{1,20}:[A-Za-z0-9_-]{1,200}")


def token_problem(token: str) -> str | None:
    """What is wrong with a bot token before it is ever sent (None: nothing visible). A token
    with a line break inside (a Secret made from a file with two lines) would otherwise fail
    as an invalid URL, a network error that walks the whole restart ladder."""
    if not token:
        return "is empty"
    if any(c.isspace() for c in token):
        return "contains a space or a line break"
    if not TOKEN_SHAPE.fullmatch(token):
        return "is not shaped like a bot token (<bot id>:<secret> from BotFather)"
    return None


@dataclass
class ConflictWindow:
    """409 Conflicts counted over a sliding window, not since the last good poll: with two
    pollers on one token every other poll succeeds, so a counter reset by success never gets
    anywhere (status flaps connected <-> retrying 1/N forever). ``window`` seconds without a
    conflict forget them."""

    window: float
    times: list[float] = field(default_factory=list)

    def conflict(self, now: float) -> int:
        """Record one at ``now``; how many there were within the window."""
        self.times = [t for t in self.times if now - t <= self.window] + [now]
        return len(self.times)


@dataclass
class UpdateBudget:
    """Failed attempts per update id; an update past ``limit`` is dead-lettered."""

    limit: int = UPDATE_ATTEMPTS
    failures: dict[int, int] = field(default_factory=dict)

    def failed(self, update_id: int) -> bool:
        """Count a failed attempt; True when the update has used its budget up."""
        n = self.failures.get(update_id, 0) + 1
        self.failures[update_id] = n
        return n >= self.limit

    def done(self, update_id: int) -> None:
        self.failures.pop(update_id, None)


def long_poll_timeout(configured: float, window: float | None) -> int:
    """getUpdates' ``timeout``: the configured one, shortened so that the server answers
    within the poller fence's window (None: no fence), one second kept for the way back."""
    if window is None:
        return int(configured)
    return max(0, min(int(configured), int(window) - 1))


@dataclass
class Owed:
    """A reply the backend gave for one update, still to be sent to its chat."""

    update_id: int
    chat: int  # the chat the update came from (the queue's key)
    chunks: list[str]  # what is left to send, in order
    message: Any  # the inbound message (for a dead letter's chat and message id)


@dataclass
class FloodQueue:
    """Replies owed to chats Telegram rate-limited (429 ``retry_after`` is per chat).

    A chat with owed replies gets no new send until they are out, so each chat's replies keep
    their order; other chats are served meanwhile. Times are the caller's clock (monotonic
    seconds). ``limit`` bounds what is held: when full, the gateway stops polling.
    """

    limit: int = 1000
    owed: dict[int, deque[Owed]] = field(default_factory=dict)
    until: dict[int, float] = field(default_factory=dict)

    def __len__(self) -> int:
        return sum(len(q) for q in self.owed.values())

    def blocked(self, chat: int) -> bool:
        return chat in self.owed

    def full(self) -> bool:
        return len(self) >= self.limit

    def park(self, item: Owed, until: float | None = None) -> None:
        """Queue ``item`` behind its chat's owed replies; ``until``: the chat's new 429."""
        self.owed.setdefault(item.chat, deque()).append(item)
        if until is not None:
            self.limited(item.chat, until)

    def limited(self, chat: int, until: float) -> None:
        self.until[chat] = max(until, self.until.get(chat, until))

    def due(self, now: float) -> list[int]:
        """Chats whose wait is over and that have replies owed."""
        return [c for c in self.owed if self.until.get(c, now) <= now]

    def next_due(self) -> float | None:
        times = [self.until.get(c, 0.0) for c in self.owed]
        return min(times) if times else None

    def first(self, chat: int) -> Owed:
        return self.owed[chat][0]

    def done(self, chat: int) -> Owed:
        """The chat's first reply went out (or was given up): the next one is first."""
        item = self.owed[chat].popleft()
        if not self.owed[chat]:
            del self.owed[chat]
            self.until.pop(chat, None)
        return item

    def low_water(self) -> int | None:
        """The oldest update still owed: getUpdates must not confirm it (nor any after)."""
        ids = [item.update_id for q in self.owed.values() for item in q]
        return min(ids) if ids else None


# ------------------------------------------------------------------------ webhook delivery
#
# In webhook mode Telegram posts every update to our URL and retries a delivery that failed
# (any answer but 2xx, no answer, no connection) "after a reasonable number of attempts".
# Only Telegram knows whether its deliveries reach us: getWebhookInfo says which URL is set
# and when (its clock, unix seconds) the last delivery failed, with what message. The gateway
# knows when it last answered 2xx and when it last refused on purpose (the backend failed:
# 503, so that Telegram delivers again). An error no later than our own last refusal is that
# refusal (the backend's failure, reported as such); one after our last 2xx, and after the
# webhook was set by this gateway, is a delivery that never reached us (DNS, TLS, Ingress,
# Service): the webhook's ladder. Clocks: Telegram's and ours are both NTP time; one second of
# slack covers the whole-second dates.


class WebhookHealth(Enum):
    OK = "ok"  # our URL is set and its deliveries arrive (or nothing failed since it was set)
    FAILING = "failing"  # Telegram's deliveries fail before they reach the gateway
    NOT_OURS = "not_ours"  # another URL (or none) is set: set ours again


@dataclass(frozen=True)
class WebhookVerdict:
    health: WebhookHealth
    message: str = ""


def webhook_verdict(*, url: str, ours: str, last_error_date: int | None,
                    last_error_message: str | None, since: float, last_ok: float | None,
                    last_refused: float | None) -> WebhookVerdict:
    """What getWebhookInfo says about our webhook. ``since``: when this gateway set it;
    ``last_ok`` / ``last_refused``: when it last answered 2xx / refused a delivery on purpose
    (all on the gateway's wall clock, None: never)."""
    if url != ours:
        shown = url or "none"
        return WebhookVerdict(WebhookHealth.NOT_OURS,
                              f"Telegram's webhook is {shown}, not this connection's URL")
    if not last_error_date or last_error_date < int(since):
        return WebhookVerdict(WebhookHealth.OK)
    if last_ok is not None and last_error_date <= int(last_ok):
        return WebhookVerdict(WebhookHealth.OK)  # a delivery went through since
    if last_refused is not None and last_error_date <= int(last_refused) + 1:
        return WebhookVerdict(WebhookHealth.OK)  # our own refusal (the backend's failure)
    return WebhookVerdict(WebhookHealth.FAILING,
                          f"Telegram cannot deliver to the webhook: "
                          f"{last_error_message or 'unknown error'}")


def setwebhook_error(exc: BaseException) -> Verdict | None:
    """setWebhook's own refusal (400: not https, a port Telegram does not post to): fatal, not
    retryable, the URL must change. A host Telegram cannot resolve yet is the exception: a new
    Ingress host's DNS record often comes minutes after the connection, so that climbs the
    webhook's ladder (then the operator's restarts). None: as for polling."""
    if isinstance(exc, BadRequest):
        if "resolve host" in str(exc):
            return Verdict(PollAction.RECONNECT, ErrorCode.TELEGRAM_WEBHOOK_REFUSED)
        return Verdict(PollAction.FATAL, ErrorCode.TELEGRAM_WEBHOOK_REFUSED)
    return None
