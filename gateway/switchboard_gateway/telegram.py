"""Telegram adapter: long polling with python-telegram-bot's ``Bot``, at-least-once relay.

Why ``Bot.get_updates`` in our own loop rather than PTB's ``Application``/``Updater``:
- the Updater confirms an update (advances the offset) as soon as it fetched it, before any
  handler ran; a pod killed mid-handling then loses the message. Here the offset moves past an
  update only after the backend accepted it *and* its reply was sent;
- the Updater retries network errors on its own schedule and never tells us, so it cannot write
  `retrying N/MAX` before each sleep, and its polling task dies silently on an invalid token
  mid-poll (``updater.running`` stays true). In our loop every failure surfaces as an exception
  right here, so there is no hidden task that can die unnoticed.

Ladders (config.TelegramReconnect): network errors (NetworkError, TimedOut, 5xx, refused,
OSError, a failed getMe probe) retry up to maxAttempts with min(initial * 2^(n-1), max) delays,
then raise a retryable fatal ``telegram_network_error``; 409 Conflict retries conflictRetries
times, then a non-retryable ``telegram_polling_conflict``; 401/404 are a non-retryable
``telegram_invalid_token`` at once; 429 waits ``retry_after`` and is not a failure. Counters
reset only when getUpdates really answered.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
from collections import OrderedDict
from collections.abc import Awaitable
from typing import Any, TypeVar

import httpx
from telegram import Bot, Update
from telegram.error import (
    BadRequest,
    Conflict,
    Forbidden,
    InvalidToken,
    NetworkError,
    RetryAfter,
    TelegramError,
)
from telegram.request import HTTPXRequest

from switchboard_contract import ErrorCode
from switchboard_gateway import metrics
from switchboard_gateway.adapter import (
    AdapterError,
    BackendError,
    FatalAdapterError,
    InboundMessage,
    Relay,
    State,
    StatusSink,
)
from switchboard_gateway.config import GatewayConfig
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

T = TypeVar("T")


class _Stopped(Exception):
    """The stop event fired while we were waiting on the platform or the backend."""


class _LinkDead(Exception):
    """The getMe probe failed: the link looks up but does not answer."""


def retry_after_seconds(exc: RetryAfter) -> float:
    value: Any = exc.retry_after  # int, or timedelta with PTB_TIMEDELTA=true
    return value.total_seconds() if isinstance(value, dt.timedelta) else float(value)


def short_error(exc: BaseException) -> str:
    """Redacted and short: PTB appends whole HTML error pages to NetworkError messages."""
    text = describe(exc)
    text = text.split(". Parsing the server response", 1)[0]
    return text if len(text) <= 300 else text[:297] + "..."


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
                 *, bot: Bot | None = None) -> None:
        assert config.telegram_token is not None
        self.config = config
        self.policy = config.telegram_reconnect
        self.sink = sink
        self.relay = relay
        self.bot = bot or Bot(
            config.telegram_token.reveal(),
            base_url=config.api_base_url or DEFAULT_BASE_URL,
            request=HTTPXRequest(connection_pool_size=8, read_timeout=config.probe_timeout,
                                 connect_timeout=5.0, write_timeout=5.0, pool_timeout=5.0),
            get_updates_request=HTTPXRequest(connection_pool_size=1, connect_timeout=5.0,
                                             write_timeout=5.0, pool_timeout=5.0),
        )
        self.offset: int | None = None  # first update_id not yet fully handled
        # update_id -> reply chunks still to send, for updates the backend already accepted:
        # when such an update comes again (a send failed), it is not handed to the backend twice.
        self._accepted: OrderedDict[int, list[str]] = OrderedDict()
        self.connected = False
        self._stop: asyncio.Event = asyncio.Event()
        self._interrupted: asyncio.Future[None] | None = None
        self._probe_error: BaseException | None = None

    # ------------------------------------------------------------------ main loop

    async def run(self, stop: asyncio.Event) -> None:
        self._stop = stop
        self._interrupted = asyncio.get_running_loop().create_future()
        watcher = asyncio.create_task(self._watch_stop(), name="telegram-stop-watch")
        probe = asyncio.create_task(self._probe_loop(), name="telegram-getme-probe")
        try:
            await self.sink.report(State.CONNECTING, max_attempts=self.policy.max_attempts)
            await self._poll_loop()
        except _Stopped:
            pass
        finally:
            probe.cancel()
            watcher.cancel()
            await asyncio.gather(probe, watcher, return_exceptions=True)
            await self._shutdown()

    async def _poll_loop(self) -> None:
        attempt = 0  # network ladder
        conflicts = 0  # 409 ladder
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
                timeout = int(self.config.poll_timeout) if self.connected else 0
                updates = await self._call(self.bot.get_updates(
                    offset=self.offset, timeout=timeout, allowed_updates=ALLOWED_UPDATES,
                    read_timeout=self.config.probe_timeout))
                attempt = conflicts = 0
                if not self.connected:
                    self.connected = True
                    # Not awaited: the write lands within a second, messages flow meanwhile.
                    self.sink.record(State.CONNECTED, max_attempts=self.policy.max_attempts)
                for update in updates:
                    await self._handle(update)
            except (_Stopped, FatalAdapterError):
                raise
            except InvalidToken as exc:
                metrics.ERRORS.labels(PLATFORM, INVALID_TOKEN).inc()
                raise FatalAdapterError(
                    INVALID_TOKEN, f"the bot token was rejected: {short_error(exc)}", False
                ) from None
            except RetryAfter as exc:
                # Flood control: Telegram says when to come back. Not a failure, no state change.
                delay = retry_after_seconds(exc)
                metrics.ERRORS.labels(PLATFORM, RATE_LIMITED).inc()
                log.warning("rate limited by Telegram: waiting %.0fs", delay)
                await self._sleep(delay)
            except Conflict as exc:
                conflicts += 1
                metrics.ERRORS.labels(PLATFORM, POLLING_CONFLICT).inc()
                message = (f"another process polls with this bot token: {short_error(exc)}")
                if conflicts > self.policy.conflict_retries:
                    raise FatalAdapterError(
                        POLLING_CONFLICT,
                        f"{message} (gave up after {self.policy.conflict_retries} retries)",
                        False) from None
                await self._retrying(conflicts, self.policy.conflict_retries,
                                     self.policy.conflict_delay(conflicts),
                                     AdapterError(POLLING_CONFLICT, message, True))
            except (NetworkError, TelegramError, _LinkDead, httpx.HTTPError, OSError) as exc:
                # BadRequest/Forbidden on getUpdates, too: nothing else we could do but retry.
                attempt += 1
                metrics.ERRORS.labels(PLATFORM, NETWORK_ERROR).inc()
                message = short_error(exc)
                if attempt > self.policy.max_attempts:
                    raise FatalAdapterError(
                        NETWORK_ERROR,
                        f"gave up after {self.policy.max_attempts} reconnect attempts: {message}",
                        True) from None
                await self._retrying(attempt, self.policy.max_attempts, self.policy.delay(attempt),
                                     AdapterError(NETWORK_ERROR, message, True))

    async def _retrying(self, attempt: int, max_attempts: int, delay: float,
                        error: AdapterError) -> None:
        """Report `retrying` N/MAX (it lands first), then sleep the back-off."""
        self.connected = False
        # Already handling a failure: a probe verdict that raced in must not cut the sleep short.
        self._probe_error = None
        if self._interrupted is not None and self._interrupted.done() and not self._stop.is_set():
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

    async def _handle(self, update: Update) -> None:
        update_id = update.update_id
        if self.offset is not None and update_id < self.offset:
            metrics.DUPLICATES.labels(PLATFORM).inc()  # already confirmed: never twice
            return
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
            await self._send(parsed[0], pending)
        self._accepted.pop(update_id, None)
        self.offset = update_id + 1  # confirmed with the next getUpdates

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
                text = (f"{short_error(exc)}; message held, retry {failures} in {delay:g}s")
                log.warning("backend: %s", text)
                await self.sink.report(State.CONNECTED, max_attempts=self.policy.max_attempts,
                                       error=AdapterError(BACKEND_ERROR, text, True))
                await self._sleep(delay)
                continue
            if failures:
                log.info("backend accepted the held message after %d retries", failures)
                self.sink.record(State.CONNECTED, max_attempts=self.policy.max_attempts)
            return reply

    async def _send(self, chat_id: int, chunks: list[str]) -> None:
        """Send the reply chunks, removing each once sent (so a retry resends only the rest).
        Network errors propagate to the ladder; the update is then seen again and resumed."""
        while chunks:
            try:
                await self._call(self.bot.send_message(chat_id, chunks[0]))
            except RetryAfter as exc:
                await self._sleep(retry_after_seconds(exc))
                continue
            except (BadRequest, Forbidden) as exc:
                # The chat is gone, the bot was blocked, ...: retrying cannot help.
                metrics.ERRORS.labels(PLATFORM, SEND_FAILED).inc()
                log.warning("dropping a reply to a chat: %s", short_error(exc))
                chunks.clear()
                return
            chunks.pop(0)
            metrics.MESSAGES_OUT.labels(PLATFORM).inc()

    # ------------------------------------------------------------------ plumbing

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
        error, self._probe_error = self._probe_error, None
        self._interrupted = asyncio.get_running_loop().create_future()
        if error is not None:
            raise error

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
            except InvalidToken as exc:
                metrics.ERRORS.labels(PLATFORM, INVALID_TOKEN).inc()
                self._interrupt(FatalAdapterError(
                    INVALID_TOKEN, f"the bot token was rejected: {short_error(exc)}", False))
            except RetryAfter:
                continue
            except (TelegramError, httpx.HTTPError, OSError, TimeoutError) as exc:
                if self.connected:
                    log.warning("getMe probe failed: %s", short_error(exc) or "timeout")
                    self._interrupt(_LinkDead(
                        f"getMe probe got no answer within {self.config.probe_timeout:g}s"
                        if isinstance(exc, TimeoutError) else
                        f"getMe probe failed: {short_error(exc)}"))

    async def _shutdown(self) -> None:
        """Confirm what was handled (bounded), so a restart does not hand it out again."""
        if self.offset is not None:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(2.0):
                    await self.bot.get_updates(offset=self.offset, timeout=0, read_timeout=2.0,
                                               allowed_updates=ALLOWED_UPDATES)
        with contextlib.suppress(Exception):
            await self.bot.shutdown()
