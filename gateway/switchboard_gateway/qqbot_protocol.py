"""QQ Bot gateway protocol: the pure decisions, testable without a socket or a clock.

Everything here takes the time (``now``) and the inputs as arguments; qqbot.py does the I/O.

Decisions documented here (they are the adapter's contract with the operator):

- Close codes (see ``classify_close``): fatal codes raise a non-retryable FatalAdapterError at
  once; 4006/4007/4900-4913 drop the session (next connection identifies); 4009 and every
  unknown or network-level close keep it (next connection resumes); 4004 fetches a new token
  first; 4008 (rate limited) waits at least ``rate_limit_delay``, which defaults to the ladder's
  longest step (60 s with the default ladder, as in the reference).
- Ladder (``ReconnectLadder``): every unplanned disconnect or failed connection attempt is one
  attempt; the back-off is ``steps[attempt - 1]`` with the last step repeating; attempt
  ``max_attempts + 1`` is exhaustion (a retryable fatal ``qq_reconnect_exhausted``). The counter
  resets only when a connection reached READY/RESUMED *and* stayed up for ``quick_window``
  seconds: a link that answers and then drops at once does not reset the ladder.
- Failure burst: a disconnect within ``quick_window`` (5 s) of the socket opening is quick.
  From the ``burst_size``-th (3rd) quick disconnect in a row, every retry waits the ladder's
  longest step and reports ``qqbot_quick_disconnects``, so a flapping platform is not hammered
  and the operator sees why. (The reference treated such a burst as fatal; here it stays on
  the ladder, which ends in the retryable exhaustion error, so the operator still gets it.)
- Planned reconnects (op 7 Reconnect, op 9 Invalid Session) on a connection that was up for
  longer than ``quick_window`` reconnect at once without counting an attempt; within the
  window they count like any other quick disconnect (a server looping op 7 cannot spin us).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import IntEnum, StrEnum

from switchboard_contract import ErrorCode

# Protocol constants -------------------------------------------------------------------------


class Op(IntEnum):
    DISPATCH = 0
    HEARTBEAT = 1
    IDENTIFY = 2
    RESUME = 6
    RECONNECT = 7
    INVALID_SESSION = 9
    HELLO = 10
    HEARTBEAT_ACK = 11


# GROUP_AND_C2C_EVENT (1<<25) | PUBLIC_GUILD_MESSAGES (1<<30) | DIRECT_MESSAGE (1<<12)
DEFAULT_INTENTS = 1107300352
DEFAULT_DELAYS: tuple[float, ...] = (2.0, 5.0, 10.0, 30.0, 60.0)
DEFAULT_MAX_ATTEMPTS = 100
HEARTBEAT_FRACTION = 0.8  # send a heartbeat every 0.8 x the Hello interval, as the reference
QUICK_WINDOW = 5.0
BURST_SIZE = 3

# Error codes (AdapterError.code). Fatal ones end the adapter; the rest show while retrying.
EXHAUSTED = ErrorCode.QQ_RECONNECT_EXHAUSTED  # retryable fatal, fixed by the issue
INVALID_CREDENTIALS = ErrorCode.QQ_INVALID_CREDENTIALS  # token endpoint rejects the app
QUICK_DISCONNECTS = ErrorCode.QQ_QUICK_DISCONNECTS
HEARTBEAT_TIMEOUT = ErrorCode.QQ_HEARTBEAT_TIMEOUT
HANDSHAKE_TIMEOUT = ErrorCode.QQ_HANDSHAKE_TIMEOUT
NETWORK_ERROR = ErrorCode.QQ_NETWORK_ERROR
TOKEN_ERROR = ErrorCode.QQ_TOKEN_ERROR
GATEWAY_ERROR = ErrorCode.QQ_GATEWAY_ERROR
RECONNECT_REQUESTED = ErrorCode.QQ_RECONNECT_REQUESTED  # op 7
SESSION_INVALIDATED = ErrorCode.QQ_INVALID_SESSION  # op 9
UNEXPECTED_ERROR = ErrorCode.QQ_UNEXPECTED_ERROR
CONNECTION_LOST = ErrorCode.QQ_CONNECTION_LOST  # no close frame (1006)
CONNECTION_CLOSED = ErrorCode.QQ_CONNECTION_CLOSED  # a close code without a special meaning


class Cause(StrEnum):
    """The three failure families the exhaustion message tells apart."""

    RATE_LIMITED = "rate limited (close 4008)"
    CLOSE_CODE = "closed by the platform"
    ERROR = "connection errors"


class Next(StrEnum):
    RESUME = "resume"  # keep the session: Resume if there is one
    IDENTIFY = "identify"  # drop the session: Identify anew
    FATAL = "fatal"  # do not reconnect


@dataclass(frozen=True)
class CloseDecision:
    code: int | None
    error_code: str
    description: str
    next: Next
    refresh_token: bool = False
    rate_limited: bool = False

    @property
    def fatal(self) -> bool:
        return self.next is Next.FATAL

    @property
    def cause(self) -> Cause:
        if self.rate_limited:
            return Cause.RATE_LIMITED
        if self.code is None or self.code < 4000:
            return Cause.ERROR  # network-level: a lost TCP connection, a going-away server
        return Cause.CLOSE_CODE


FATAL_CLOSES: dict[int, tuple[ErrorCode, str]] = {
    4001: (ErrorCode.QQ_INVALID_OPCODE, "the platform rejected an opcode we sent"),
    4002: (ErrorCode.QQ_INVALID_PAYLOAD, "the platform rejected a payload we sent"),
    4010: (ErrorCode.QQ_INVALID_SHARD, "invalid shard"),
    4011: (ErrorCode.QQ_SHARDING_REQUIRED, "too many guilds for one connection, sharding required"),
    4012: (ErrorCode.QQ_INVALID_VERSION, "invalid gateway version"),
    4013: (ErrorCode.QQ_INTENTS_REJECTED, "invalid intents"),
    4014: (ErrorCode.QQ_INTENTS_REJECTED, "intents not permitted for this bot"),
    4914: (ErrorCode.QQ_DELISTED, "the bot is delisted (offline, sandbox only)"),
    4915: (ErrorCode.QQ_BANNED, "the bot is banned"),
}


def classify_close(code: int | None) -> CloseDecision:
    """What a websocket close (``None``: no close frame, i.e. 1006) means for the next step."""
    if code is not None and code in FATAL_CLOSES:
        error_code, text = FATAL_CLOSES[code]
        return CloseDecision(code, error_code, text, Next.FATAL)
    match code:
        case 4004:
            return CloseDecision(code, ErrorCode.QQ_TOKEN_INVALID, "access token rejected",
                                 Next.RESUME, refresh_token=True)
        case 4006:
            return CloseDecision(code, ErrorCode.QQ_SESSION_INVALID, "session no longer valid",
                                 Next.IDENTIFY)
        case 4007:
            return CloseDecision(code, ErrorCode.QQ_INVALID_SEQ, "invalid seq on resume",
                                 Next.IDENTIFY)
        case 4008:
            return CloseDecision(code, ErrorCode.QQ_RATE_LIMITED, "sending too fast",
                                 Next.RESUME, rate_limited=True)
        case 4009:
            return CloseDecision(code, ErrorCode.QQ_SESSION_TIMEOUT, "connection expired, resume",
                                 Next.RESUME)
        case int() if 4900 <= code <= 4913:
            return CloseDecision(code, ErrorCode.QQ_SERVER_ERROR, "platform internal error",
                                 Next.IDENTIFY)
        case None | 1006:
            return CloseDecision(None, CONNECTION_LOST, "connection lost without a close frame",
                                 Next.RESUME)
        case _:
            return CloseDecision(code, CONNECTION_CLOSED, "connection closed", Next.RESUME)


# Back-off -----------------------------------------------------------------------------------


def backoff_delay(attempt: int, steps: Sequence[float]) -> float:
    """Delay before reconnect ``attempt`` (1-based): ``steps[attempt-1]``, the last repeats."""
    if attempt < 1:
        raise ValueError("attempt is 1-based")
    if not steps:
        raise ValueError("at least one back-off step is needed")
    return float(steps[min(attempt, len(steps)) - 1])


@dataclass(frozen=True)
class RetryPlan:
    attempt: int  # 1..max_attempts, what status shows as N/MAX
    delay: float
    error_code: str
    burst: bool


@dataclass(frozen=True)
class Exhausted:
    attempts: int
    last_cause: Cause
    last_message: str
    tallies: dict[Cause, int]

    def message(self) -> str:
        counts = ", ".join(f"{self.tallies.get(c, 0)} {c.value}" for c in Cause)
        return (f"gave up after {self.attempts} reconnect attempts; last failure "
                f"{self.last_cause.value}: {self.last_message} (failures: {counts})")


@dataclass
class ReconnectLadder:
    """Attempt counting, back-off choice and the quick-disconnect burst rule (see module doc)."""

    steps: tuple[float, ...] = DEFAULT_DELAYS
    max_attempts: int = DEFAULT_MAX_ATTEMPTS
    rate_limit_delay: float | None = None  # None: the ladder's longest step
    quick_window: float = QUICK_WINDOW
    burst_size: int = BURST_SIZE
    attempt: int = 0
    quick_in_a_row: int = 0
    tallies: Counter[Cause] = field(default_factory=Counter)

    def __post_init__(self) -> None:
        if not self.steps or any(s < 0 for s in self.steps):
            raise ValueError("back-off steps must be a non-empty list of seconds >= 0")
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")

    def is_quick(self, opened_at: float | None, now: float) -> bool:
        return opened_at is not None and now - opened_at < self.quick_window

    def on_disconnect(self, *, opened_at: float | None, ready: bool, now: float) -> bool:
        """Book-keeping for a connection that ended; returns whether it was quick.

        ``opened_at`` is None when the socket never opened (token, /gateway or connect failed):
        that is neither quick nor stable and leaves the burst count alone.
        """
        if opened_at is None:
            return False
        quick = self.is_quick(opened_at, now)
        if quick:
            self.quick_in_a_row += 1
        else:
            self.quick_in_a_row = 0
            if ready:  # it answered and stayed up: the platform is fine, start the ladder anew
                self.attempt = 0
                self.tallies.clear()
        return quick

    @property
    def in_burst(self) -> bool:
        return self.quick_in_a_row >= self.burst_size

    def failure(self, cause: Cause, error_code: str, message: str, *,
                rate_limited: bool = False) -> RetryPlan | Exhausted:
        """Count one failed attempt: the plan for the next one, or exhaustion."""
        self.attempt += 1
        self.tallies[cause] += 1
        if self.attempt > self.max_attempts:
            return Exhausted(self.max_attempts, cause, message, dict(self.tallies))
        delay = backoff_delay(self.attempt, self.steps)
        burst = self.in_burst
        if burst:
            delay = max(delay, self.steps[-1])
            error_code = QUICK_DISCONNECTS
        if rate_limited:
            limit = self.steps[-1] if self.rate_limit_delay is None else self.rate_limit_delay
            delay = max(delay, limit)
        return RetryPlan(self.attempt, delay, error_code, burst)


# Access token -------------------------------------------------------------------------------


def parse_expires_in(value: object) -> float:
    """``expires_in`` arrives as a string of seconds ("7200"); accept numbers too."""
    if isinstance(value, bool):
        raise ValueError("expires_in is not a number")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str):
        seconds = float(value.strip())
    else:
        raise ValueError("expires_in is missing")
    if not seconds > 0:
        raise ValueError("expires_in must be positive")
    return seconds


def token_refresh_after(lifetime: float) -> float:
    """Seconds after issue to fetch a new token: 60 s before expiry, but never before 80 % of
    the lifetime (short-lived tokens would otherwise be refreshed at once, in a loop)."""
    return max(0.8 * lifetime, lifetime - 60.0)


# Heartbeat ----------------------------------------------------------------------------------


def heartbeat_period(interval_ms: float) -> float:
    """Seconds between our heartbeats for Hello's ``heartbeat_interval`` (ms)."""
    if not interval_ms > 0:
        raise ValueError("heartbeat_interval must be positive")
    return interval_ms / 1000.0 * HEARTBEAT_FRACTION


@dataclass
class HeartbeatMonitor:
    """Dead-peer detection: no Heartbeat ACK (nor Hello) for ``factor`` x interval."""

    interval: float  # seconds, Hello's heartbeat_interval
    factor: float
    last_ack: float  # when Hello or the last ACK arrived

    def ack(self, now: float) -> None:
        self.last_ack = now

    @property
    def deadline(self) -> float:
        return self.last_ack + self.factor * self.interval

    def overdue(self, now: float) -> bool:
        return now >= self.deadline


# Payloads -----------------------------------------------------------------------------------


def identify_payload(token: str, intents: int) -> dict[str, object]:
    return {"op": Op.IDENTIFY, "d": {
        "token": f"QQBot {token}", "intents": intents, "shard": [0, 1],
        "properties": {"$os": "linux", "$browser": "switchboard", "$device": "switchboard"}}}


def resume_payload(token: str, session_id: str, seq: int | None) -> dict[str, object]:
    return {"op": Op.RESUME, "d": {"token": f"QQBot {token}", "session_id": session_id,
                                   "seq": seq or 0}}


def heartbeat_payload(seq: int | None) -> dict[str, object]:
    return {"op": Op.HEARTBEAT, "d": seq}


MESSAGE_EVENTS = frozenset({"C2C_MESSAGE_CREATE", "GROUP_AT_MESSAGE_CREATE"})


@dataclass(frozen=True)
class ChatMessage:
    """A user message from a dispatch, with where its passive reply goes."""

    scene: str  # "c2c" or "group"
    chat_id: str  # user openid (c2c) or group openid
    sender_id: str
    text: str
    message_id: str
    timestamp: str

    @property
    def reply_path(self) -> str:
        kind = "users" if self.scene == "c2c" else "groups"
        return f"/v2/{kind}/{self.chat_id}/messages"


def parse_message(event_type: str | None, d: object) -> ChatMessage | None:
    """A C2C or group @-message from a dispatch's ``t`` and ``d``; None for anything else."""
    if event_type not in MESSAGE_EVENTS or not isinstance(d, dict):
        return None
    raw_author = d.get("author")
    author: dict[str, object] = raw_author if isinstance(raw_author, dict) else {}
    message_id = d.get("id")
    if not isinstance(message_id, str) or not message_id:
        return None
    text = str(d.get("content") or "").strip()  # group @-messages keep a leading space
    if event_type == "C2C_MESSAGE_CREATE":
        sender = str(author.get("user_openid") or author.get("id") or "")
        scene, chat = "c2c", sender
    else:
        sender = str(author.get("member_openid") or author.get("id") or "")
        scene, chat = "group", str(d.get("group_openid") or d.get("group_id") or "")
    if not chat:
        return None
    return ChatMessage(scene, chat, sender, text, message_id, str(d.get("timestamp") or ""))
