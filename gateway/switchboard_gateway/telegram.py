"""Telegram adapter: long polling with python-telegram-bot's ``Bot``, at-least-once relay.

Why ``Bot.get_updates`` in our own loop rather than PTB's ``Application``/``Updater``:
- the Updater confirms an update (advances the offset) as soon as it fetched it, before any
  handler ran; a pod killed mid-handling then loses the message. Here the offset moves past an
  update only after the backend accepted it *and* its reply was sent;
- the Updater retries network errors on its own schedule and never tells us, so it cannot write
  `retrying N/MAX` before each sleep, and its polling task dies silently on an invalid token
  mid-poll (``updater.running`` stays true). In our loop every failure surfaces as an exception
  right here, so there is no hidden task that can die unnoticed.

Ladders (config.TelegramReconnect) and what each error means: telegram_protocol.py (pure).
Network errors retry up to maxAttempts, then a retryable fatal ``telegram_network_error``; 409
Conflict retries conflictRetries times, then a non-retryable ``telegram_polling_conflict``;
401/404 are a non-retryable ``telegram_invalid_token`` at once; 429 waits ``retry_after``. The
ladders reset only after a whole cycle: getUpdates answered and every update it returned was
handled. An update whose reply Telegram refuses (400/403), or that fails its attempt budget, is
dead-lettered (status.deadLetters, a metric, an Event the operator posts) and the next one is
served; a reply to a group that became a supergroup goes to the new chat id.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import TypeVar

import httpx
from telegram import Bot, Update
from telegram.error import InvalidToken, RetryAfter, TelegramError
from telegram.request import HTTPXRequest

from switchboard_contract import DeadLetterReason, ErrorCode
from switchboard_gateway import dead_letters, metrics
from switchboard_gateway import telegram_protocol as proto
from switchboard_gateway.adapter import (
    AdapterError,
    BackendError,
    FatalAdapterError,
    FieldStore,
    InboundMessage,
    Relay,
    State,
    StatusSink,
    supervise,
)
from switchboard_gateway.config import GatewayConfig
from switchboard_gateway.progress import Progress
from switchboard_gateway.redact import describe

log = logging.getLogger("switchboard.telegram")

PLATFORM = "telegram"
DEFAULT_BASE_URL = "https://api.telegram.org/bot"
MAX_TEXT = 4096  # Bot API limit of one message
ALLOWED_UPDATES = ["message"]
REMEMBERED_REPLIES = 1000

# Short local names for the contract's codes this adapter reports (the values live only there).
NETWORK_ERROR = ErrorCode.TELEGRAM_NETWORK_ERROR
INVALID_TOKEN = ErrorCode.TELEGRAM_INVALID_TOKEN
POLLING_CONFLICT = ErrorCode.TELEGRAM_POLLING_CONFLICT
RATE_LIMITED = ErrorCode.TELEGRAM_RATE_LIMITED
SEND_FAILED = ErrorCode.TELEGRAM_SEND_FAILED
BACKEND_ERROR = ErrorCode.BACKEND_ERROR
# Errors of a call to the Bot API (PTB's, httpx's below it, the socket's, the getMe probe's).
CALL_ERRORS = (TelegramError, httpx.HTTPError, OSError)
REMEMBERED_MIGRATIONS = 1000
# While replies wait for a chat's 429, a poll that brought nothing new waits this long.
FLOOD_PAUSE = 1.0
# On SIGTERM, owed replies whose wait ends within this are still sent (within the pod's grace).
SHUTDOWN_DRAIN = 5.0

T = TypeVar("T")


class _Stopped(Exception):
    """The stop event fired while we were waiting on the platform or the backend."""


class _LinkDead(Exception):
    """The getMe probe failed: the link looks up but does not answer."""


def short_error(exc: BaseException) -> str:
    """Redacted and short: PTB appends whole HTML error pages to NetworkError messages."""
    text = describe(exc)
    text = text.split(". Parsing the server response", 1)[0]
    return text if len(text) <= 300 else text[:297] + "..."


def token_rejected(exc: BaseException) -> FatalAdapterError:
    """Telegram refused the token (401/404), when polling, sending or probing: not retryable."""
    return FatalAdapterError(INVALID_TOKEN, f"the bot token was rejected: {short_error(exc)}",
                             False)


def split_text(text: str, limit: int = MAX_TEXT) -> list[str]:
    return [text[i:i + limit] for i in range(0, len(text), limit)] or [""]


def inbound_message(update: Update, connection: str) -> tuple[int, InboundMessage] | None:
    """(chat id, message) for updates carrying text; None for everything else."""
    message = update.effective_message
    if message is None:
        return None
    text = message.text if message.text is not None else message.caption
    if text is None:
        return None
    user = message.from_user
    sent = message.date.astimezone(dt.UTC) if message.date else dt.datetime.now(dt.UTC)
    return message.chat_id, InboundMessage(
        connection=connection,
        platform=PLATFORM,
        chat_id=str(message.chat_id),
        sender_id=str(user.id) if user else str(message.chat_id),
        sender_name=user.full_name if user else (message.chat.title or ""),
        text=text,
        message_id=str(message.message_id),
        time=sent.strftime("%Y-%m-%dT%H:%M:%SZ"),
    )


class TelegramAdapter:
    """One bot, long polling. Constructed as every adapter is: (config, sink, relay)."""

    def __init__(self, config: GatewayConfig, sink: StatusSink, relay: Relay,
                 *, bot: Bot | None = None,
                 poll_window: Callable[[], float] | None = None) -> None:
        assert config.telegram_token is not None
        problem = proto.token_problem(config.telegram_token.reveal())
        if problem is not None and bot is None:
            metrics.ERRORS.labels(PLATFORM, INVALID_TOKEN).inc()
            raise FatalAdapterError(
                INVALID_TOKEN, f"the bot token in {config.telegram_token_source} {problem}",
                False)
        self.config = config
        self.policy = config.telegram_reconnect
        self.sink = sink
        self.relay = relay
        # The poller fence's window (PollerLease.poll_window): a long poll must be answered
        # before another pod may poll. None: no fence.
        self.poll_window = poll_window
        self.bot = bot or Bot(
            config.telegram_token.reveal(),
            base_url=config.api_base_url or DEFAULT_BASE_URL,
            request=HTTPXRequest(connection_pool_size=8, read_timeout=config.probe_timeout,
                                 connect_timeout=5.0, write_timeout=5.0, pool_timeout=5.0),
            get_updates_request=HTTPXRequest(connection_pool_size=1, connect_timeout=5.0,
                                             write_timeout=5.0, pool_timeout=5.0),
        )
        # The update after the last one handled (answered, dead-lettered or parked in _flood).
        self._next: int | None = None
        # Replies waiting for their chat's 429 to pass (per chat, in order).
        self._flood = proto.FloodQueue()
        self._flood_changed = asyncio.Event()
        # update_id -> reply chunks still to send, for updates the backend already accepted:
        # when such an update comes again (a send failed), it is not handed to the backend twice.
        self._accepted: OrderedDict[int, list[str]] = OrderedDict()
        self.connected = False
        self._stop: asyncio.Event = asyncio.Event()
        self._interrupted: asyncio.Future[None] | None = None
        self._probe_error: BaseException | None = None
        self._died: FatalAdapterError | None = None  # a supervised task's end
        self._budget = proto.UpdateBudget()
        # Groups that became supergroups: old chat id -> new one (replies go to the new one).
        self._moved: OrderedDict[int, int] = OrderedDict()
        self._store = sink if isinstance(sink, FieldStore) else None
        self.progress = Progress(self._store)  # main's watchdog reads it

    @property
    def offset(self) -> int | None:
        """What getUpdates confirms: everything before the oldest reply still owed."""
        low = self._flood.low_water()
        return low if low is not None else self._next

    # ------------------------------------------------------------------ main loop

    async def run(self, stop: asyncio.Event) -> None:
        self._stop = stop
        self._interrupted = asyncio.get_running_loop().create_future()
        watcher = asyncio.create_task(self._watch_stop(), name="telegram-stop-watch")
        probe = supervise(asyncio.create_task(self._probe_loop(), name="telegram-getme-probe"),
                          self._task_died)
        drainer = supervise(asyncio.create_task(self._drain_loop(), name="telegram-flood-queue"),
                            self._task_died)
        try:
            await self.sink.report(State.CONNECTING, max_attempts=self.policy.max_attempts)
            await self._poll_loop()
        except _Stopped:
            pass
        finally:
            probe.cancel()
            drainer.cancel()
            watcher.cancel()
            await asyncio.gather(probe, drainer, watcher, return_exceptions=True)
            await self._shutdown()

    async def _poll_loop(self) -> None:
        attempt = 0  # network ladder
        # 409 ladder, over a window that outlasts the whole ladder twice (see ConflictWindow).
        window = proto.ConflictWindow(2 * sum(
            self.policy.conflict_delay(n) for n in range(1, self.policy.conflict_retries + 2)))
        loop = asyncio.get_running_loop()
        initialized = False
        while not self._stop.is_set():
            try:
                if not initialized:
                    # getMe (verifies the token) and deleteWebhook: getUpdates answers 409
                    # while a webhook is set. Pending updates are kept.
                    await self._call(self.bot.initialize())
                    await self._call(self.bot.delete_webhook(drop_pending_updates=False))
                    initialized = True
                # After a failure (and at start) a short poll answers at once, so `connected`
                # is written as soon as the platform really answered, not a long poll later.
                timeout = self._poll_timeout() if self.connected else 0
                updates = await self._call(self.bot.get_updates(
                    offset=self.offset, timeout=timeout, allowed_updates=ALLOWED_UPDATES,
                    read_timeout=self.config.probe_timeout))
                self.progress.answered()
                if not self.connected:
                    self.connected = True
                    # Not awaited: the write lands within a second, messages flow meanwhile.
                    self.sink.record(State.CONNECTED, max_attempts=self.policy.max_attempts)
                fresh = 0
                for update in updates:
                    fresh += await self._handle(update)
                if self._flood and (not fresh or self._flood.full()):
                    # The offset is held below an owed reply, so getUpdates answers at once
                    # with what was handled already: wait for the queue instead of spinning.
                    await self._sleep(FLOOD_PAUSE)
                # A whole cycle went through (polled, and every update handled): only now do
                # the ladders start again. A reply that keeps failing therefore climbs the
                # ladder, and its update's budget ends it, instead of resetting forever.
                attempt = 0
            except (_Stopped, FatalAdapterError):
                raise
            except (*CALL_ERRORS, _LinkDead) as exc:
                verdict = proto.poll_error(exc)
                metrics.ERRORS.labels(PLATFORM, verdict.code).inc()
                message = short_error(exc)
                if verdict.action is proto.PollAction.FATAL:
                    raise token_rejected(exc) from None
                if verdict.action is proto.PollAction.WAIT:
                    # Flood control: Telegram says when to come back. Not a failure.
                    log.warning("rate limited by Telegram: waiting %.0fs", verdict.wait)
                    self.progress.moved(verdict.wait)
                    await self._sleep(verdict.wait)
                elif verdict.action is proto.PollAction.CONFLICT:
                    conflicts = window.conflict(loop.time())
                    message = f"another process polls with this bot token: {message}"
                    if conflicts > self.policy.conflict_retries:
                        raise FatalAdapterError(
                            POLLING_CONFLICT,
                            f"{message} (gave up after {self.policy.conflict_retries} retries)",
                            False) from None
                    await self._retrying(conflicts, self.policy.conflict_retries,
                                         self.policy.conflict_delay(conflicts),
                                         AdapterError(POLLING_CONFLICT, message, True))
                else:
                    attempt += 1
                    if attempt > self.policy.max_attempts:
                        raise FatalAdapterError(
                            NETWORK_ERROR,
                            f"gave up after {self.policy.max_attempts} reconnect attempts: "
                            f"{message}", True) from None
                    await self._retrying(attempt, self.policy.max_attempts,
                                         self.policy.delay(attempt),
                                         AdapterError(NETWORK_ERROR, message, True))

    async def _retrying(self, attempt: int, max_attempts: int, delay: float,
                        error: AdapterError) -> None:
        """Report `retrying` N/MAX (it lands first), then sleep the back-off."""
        self.connected = False
        # Already handling a failure: a probe verdict that raced in must not cut the sleep short.
        self._probe_error = None
        if self._interrupted is not None and self._interrupted.done() \
                and not self._stop.is_set() and self._died is None:
            self._interrupted = asyncio.get_running_loop().create_future()
        metrics.RECONNECT_ATTEMPTS.labels(PLATFORM).inc()
        log.warning("telegram: %s; retry %d/%d in %.1fs", error.message, attempt, max_attempts,
                    delay)
        loop = asyncio.get_running_loop()
        failed_at = loop.time()
        await self.sink.report(State.RETRYING, attempt=attempt, max_attempts=max_attempts,
                               error=error)
        # The back-off counts from the failure: time spent landing the report (coalesced
        # writes wait up to a second) is part of it, not added to it.
        await self._sleep(delay - (loop.time() - failed_at))

    # ------------------------------------------------------------------ messages

    async def _handle(self, update: Update) -> int:
        """Handle one update; 1 if it was new, 0 if it was handled before."""
        update_id = update.update_id
        if self._next is not None and update_id < self._next:
            if not self._flood:  # (while replies are owed, getUpdates repeats on purpose)
                metrics.DUPLICATES.labels(PLATFORM).inc()  # already confirmed: never twice
            return 0
        pending = self._accepted.get(update_id)
        parsed = inbound_message(update, self.config.connection_ref)
        if pending is not None:
            metrics.DUPLICATES.labels(PLATFORM).inc()  # backend has it; only the reply is owed
        elif parsed is None:
            pending = []  # nothing to relay (service message, sticker, ...)
        else:
            reply = await self._deliver(parsed[1])
            metrics.MESSAGES_IN.labels(PLATFORM).inc()
            pending = split_text(reply) if reply else []
            self._accepted[update_id] = pending
            while len(self._accepted) > REMEMBERED_REPLIES:
                self._accepted.popitem(last=False)
        if pending and parsed is not None:
            item = proto.Owed(update_id, parsed[0], pending, parsed[1])
            if self._flood.blocked(item.chat):
                self._park(item)  # behind that chat's owed replies: order per chat
                self._next = update_id + 1
                return 1
            try:
                wait = await self._send(update_id, parsed, pending)
            except CALL_ERRORS as exc:
                # A transient failure (the network, a 5xx): the ladder handles it and the
                # update comes again, until its budget is used up.
                if not self._budget.failed(update_id):
                    raise
                self._dead_letter(update_id, parsed, DeadLetterReason.EXHAUSTED,
                                  f"{proto.UPDATE_ATTEMPTS} attempts failed: {short_error(exc)}")
                wait = None
            if wait is not None:  # 429 for this chat: its queue sends the rest
                self._park(item, wait)
                self._next = update_id + 1
                return 1
        self._finished(update_id)
        self._next = update_id + 1
        return 1

    def _finished(self, update_id: int) -> None:
        self._budget.done(update_id)
        self._accepted.pop(update_id, None)

    def _park(self, item: proto.Owed, wait: float | None = None) -> None:
        loop = asyncio.get_running_loop()
        self._flood.park(item, None if wait is None else loop.time() + wait)
        self._flood_changed.set()

    async def _deliver(self, message: InboundMessage) -> str | None:
        """Hand to the backend until it accepts; the update (and offset) is held meanwhile."""
        failures = 0
        while True:
            try:
                reply = await self._call(self.relay.deliver(message))
            except BackendError as exc:
                failures += 1
                metrics.ERRORS.labels(PLATFORM, BACKEND_ERROR).inc()
                delay = self.policy.delay(min(failures, 30))
                self.progress.moved(delay)  # an attempt: holding the message is not a stall
                text = (f"{short_error(exc)}; message held, retry {failures} in {delay:g}s")
                log.warning("backend: %s", text)
                await self.sink.report(State.CONNECTED, max_attempts=self.policy.max_attempts,
                                       error=AdapterError(BACKEND_ERROR, text, True))
                await self._sleep(delay)
                continue
            self.progress.delivered()
            if failures:
                log.info("backend accepted the held message after %d retries", failures)
                self.sink.record(State.CONNECTED, max_attempts=self.policy.max_attempts)
            return reply

    async def _send(self, update_id: int, parsed: tuple[int, InboundMessage],
                    chunks: list[str], *, direct: bool = False) -> float | None:
        """Send the reply chunks, removing each once sent (so a retry resends only the rest).
        A 429 returns Telegram's wait for that chat (the rest stays in ``chunks``); transient
        errors propagate (to the ladder and the update's budget); a reply Telegram refuses is
        dead-lettered. ``direct``: from the flood queue's task, which must not take the poll
        loop's interruptions (_call hands them out once)."""
        chat_id = self._moved.get(parsed[0], parsed[0])
        while chunks:
            try:
                sending = self.bot.send_message(chat_id, chunks[0])
                await (sending if direct else self._call(sending))
            except CALL_ERRORS as exc:
                verdict = proto.send_error(exc)
                if verdict.action is proto.SendAction.WAIT:
                    metrics.ERRORS.labels(PLATFORM, RATE_LIMITED).inc()
                    self.progress.moved(verdict.wait)
                    log.info("chat %s is rate limited: its replies wait %.0fs", chat_id,
                             verdict.wait)
                    return verdict.wait
                if verdict.action is proto.SendAction.FATAL:
                    metrics.ERRORS.labels(PLATFORM, INVALID_TOKEN).inc()
                    raise token_rejected(exc) from None
                if verdict.action is proto.SendAction.MIGRATE and verdict.chat_id is not None \
                        and not self._budget.failed(update_id):
                    log.info("chat %s became %s (a supergroup): replying there", chat_id,
                             verdict.chat_id)
                    self._moved[parsed[0]] = chat_id = verdict.chat_id
                    while len(self._moved) > REMEMBERED_MIGRATIONS:
                        self._moved.popitem(last=False)
                    continue
                if verdict.action is proto.SendAction.RETRY:
                    raise
                metrics.ERRORS.labels(PLATFORM, SEND_FAILED).inc()
                self._dead_letter(update_id, parsed, verdict.reason or
                                  DeadLetterReason.EXHAUSTED, short_error(exc))
                chunks.clear()
                return None
            chunks.pop(0)
            self.progress.moved()
            metrics.MESSAGES_OUT.labels(PLATFORM).inc()
        return None

    async def _drain_loop(self) -> None:
        """Send the replies of rate-limited chats once their wait is over, chat by chat, in
        order. A failure here never ends the task: it is the item's attempt (then its dead
        letter) or, for a revoked token, the adapter's fatal error."""
        loop = asyncio.get_running_loop()
        while True:
            for chat in self._flood.due(loop.time()):
                await self._drain_chat(chat)
            due = self._flood.next_due()
            self._flood_changed.clear()
            timeout = None if due is None else max(0.0, due - loop.time())
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self._flood_changed.wait()

    async def _drain_soon(self, deadline: float) -> None:
        """On the way out: what the chats' waits allow before ``deadline`` (a reply sent now
        is one the next pod does not answer again)."""
        loop = asyncio.get_running_loop()
        while self._flood:
            due = self._flood.next_due()
            if due is None or due > deadline:
                return
            await asyncio.sleep(max(0.0, due - loop.time()))
            for chat in self._flood.due(loop.time()):
                await self._drain_chat(chat)

    async def _drain_chat(self, chat: int) -> None:
        loop = asyncio.get_running_loop()
        while self._flood.blocked(chat) and self._flood.until.get(chat, 0.0) <= loop.time():
            item = self._flood.first(chat)
            parsed = (item.chat, item.message)
            try:
                wait = await self._send(item.update_id, parsed, item.chunks, direct=True)
            except FatalAdapterError as exc:
                self._interrupt(exc)  # the token was revoked: the adapter stops with it
                return
            except CALL_ERRORS as exc:
                if not self._budget.failed(item.update_id):
                    self._flood.limited(chat, loop.time() + self.policy.delay(1))
                    return
                self._dead_letter(item.update_id, parsed, DeadLetterReason.EXHAUSTED,
                                  f"{proto.UPDATE_ATTEMPTS} attempts failed: "
                                  f"{short_error(exc)}")
                wait = None
            if wait is not None:
                self._flood.limited(chat, loop.time() + wait)
                return
            self._flood.done(chat)
            self._finished(item.update_id)

    def _dead_letter(self, update_id: int, parsed: tuple[int, InboundMessage], reason: str,
                     detail: str) -> None:
        """Give up on answering one update: counted and named by chat and message id (never
        its text); the offset moves on. The operator posts a Warning Event for it."""
        message = parsed[1]
        dead_letters.record(self._store, PLATFORM, reason, chat_id=message.chat_id,
                            message_id=message.message_id,
                            detail=f"update {update_id}: {detail}")

    # ------------------------------------------------------------------ plumbing

    def _poll_timeout(self) -> int:
        window = None if self.poll_window is None else self.poll_window()
        return proto.long_poll_timeout(self.config.poll_timeout, window)

    async def _call(self, aw: Awaitable[T]) -> T:
        """Await ``aw`` unless stop fires or the probe finds the link dead first."""
        assert self._interrupted is not None
        if self._interrupted.done():
            if asyncio.iscoroutine(aw):
                aw.close()
            self._raise_interrupt()
        task = asyncio.ensure_future(aw)
        try:
            await asyncio.wait((task, self._interrupted), return_when=asyncio.FIRST_COMPLETED)
        finally:
            if not task.done():
                task.cancel()
                with contextlib.suppress(BaseException):
                    await task
        if task.cancelled() or not task.done():
            self._raise_interrupt()
        return task.result()

    async def _sleep(self, seconds: float) -> None:
        assert self._interrupted is not None
        if seconds > 0 and not self._interrupted.done():
            await asyncio.wait((self._interrupted,), timeout=seconds)
        if self._interrupted.done():
            self._raise_interrupt()

    def _raise_interrupt(self) -> None:
        if self._stop.is_set():
            raise _Stopped
        if self._died is not None:
            raise self._died
        error, self._probe_error = self._probe_error, None
        self._interrupted = asyncio.get_running_loop().create_future()
        if error is not None:
            raise error

    def _task_died(self, error: FatalAdapterError) -> None:
        """A background task ended by itself: the adapter stops with it (sticky: no later
        verdict or back-off clears it)."""
        self._died = error
        self._interrupt()

    def _interrupt(self, error: BaseException | None = None) -> None:
        if error is not None:
            self._probe_error = error
        if self._interrupted is not None and not self._interrupted.done():
            self._interrupted.set_result(None)

    async def _watch_stop(self) -> None:
        await self._stop.wait()
        self._interrupt()

    async def _probe_loop(self) -> None:
        """getMe every probe_interval while connected: catches a link that is up but deaf."""
        while True:
            await asyncio.sleep(self.config.probe_interval)
            if not self.connected:
                continue
            try:
                async with asyncio.timeout(self.config.probe_timeout):
                    await self.bot.get_me(read_timeout=self.config.probe_timeout)
                self.progress.answered()
            except InvalidToken as exc:
                metrics.ERRORS.labels(PLATFORM, INVALID_TOKEN).inc()
                self._interrupt(token_rejected(exc))
            except RetryAfter:
                continue
            except (*CALL_ERRORS, TimeoutError) as exc:
                if self.connected:
                    log.warning("getMe probe failed: %s", short_error(exc) or "timeout")
                    self._interrupt(_LinkDead(
                        f"getMe probe got no answer within {self.config.probe_timeout:g}s"
                        if isinstance(exc, TimeoutError) else
                        f"getMe probe failed: {short_error(exc)}"))

    async def _shutdown(self) -> None:
        """Send the owed replies whose chat's wait ends soon, then confirm what was handled
        (bounded), so a restart does not hand it out again."""
        if self._flood:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(SHUTDOWN_DRAIN):
                    await self._drain_soon(asyncio.get_running_loop().time() + SHUTDOWN_DRAIN)
        if self.offset is not None:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(2.0):
                    await self.bot.get_updates(offset=self.offset, timeout=0, read_timeout=2.0,
                                               allowed_updates=ALLOWED_UPDATES)
        with contextlib.suppress(Exception):
            await self.bot.shutdown()
