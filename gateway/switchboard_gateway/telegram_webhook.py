"""Telegram adapter, webhook delivery: Telegram posts every update to spec.delivery.webhook.url.

The polling adapter (telegram.py) is the base: token checks, the getMe probe, the reply path
(chunks, flood waits, migrated groups, dead letters, the per-update budget) and the ladders are
the same. What differs:

- at start the gateway serves its webhook port, then calls ``setWebhook`` with the URL, the
  connection's ``secret_token`` (the Secret the operator created), ``allowed_updates`` and
  ``max_connections``, keeping pending updates. On stop it leaves the webhook set: Telegram
  holds the updates until the next pod (a restart or a rollout) answers them. A polling pod
  deletes it before its first getUpdates (telegram.py), so switching modes loses nothing;
- a request without the right ``X-Telegram-Bot-Api-Secret-Token`` is refused (403) and counted
  (metric and status.webhook.refusedRequests); the token itself is compared in constant time
  and never logged;
- an update is answered 200 only once the backend accepted it and its reply was sent (or
  dead-lettered): on a backend failure, a reply that must wait for the chat's flood control or
  a transient send error the answer is 503, and Telegram delivers it again (at least once, as
  in polling). The backend is not asked twice for an update it accepted;
- the state comes from Telegram's own view, ``getWebhookInfo`` every webhook_info_interval
  (telegram_protocol.webhook_verdict): ``connected`` while our URL is set and its deliveries
  arrive, ``retrying N/MAX`` with Telegram's last error while they fail before they reach us
  (after maxAttempts looks, a retryable fatal ``telegram_webhook_failing`` for the operator to
  restart), ``fatal`` on 401 or when setWebhook refuses the URL (not retryable). Another URL
  set meanwhile (someone else's setWebhook with this token) is set back, on the conflict
  ladder. status.webhook shows what getWebhookInfo said.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import hmac
import json
import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from aiohttp import web
from telegram import Update

from switchboard_contract import DeadLetterReason, ErrorCode, Field, WebhookField, WebhookRefusal
from switchboard_gateway import metrics, webhook_server
from switchboard_gateway import telegram_protocol as proto
from switchboard_gateway.adapter import AdapterError, BackendError, FatalAdapterError, State
from switchboard_gateway.health import Readiness
from switchboard_gateway.redact import platform_text
from switchboard_gateway.telegram import (
    ALLOWED_UPDATES,
    CALL_ERRORS,
    PLATFORM,
    REMEMBERED_REPLIES,
    TelegramAdapter,
    _LinkDead,
    _Stopped,
    inbound_message,
    short_error,
    split_text,
    token_rejected,
)

log = logging.getLogger("switchboard.telegram.webhook")

SECRET_HEADER = "X-Telegram-Bot-Api-Secret-Token"
WEBHOOK_FAILING = ErrorCode.TELEGRAM_WEBHOOK_FAILING
WEBHOOK_REFUSED = ErrorCode.TELEGRAM_WEBHOOK_REFUSED
BACKEND_ERROR = ErrorCode.BACKEND_ERROR


class TelegramWebhookAdapter(TelegramAdapter):
    """One bot, webhook delivery. Constructed as every adapter is: (config, sink, relay)."""

    def __init__(self, *args: Any, wall: Callable[[], float] = time.time,
                 readiness: Readiness | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.readiness = readiness
        assert self.config.webhook_url is not None
        assert self.config.webhook_secret_token is not None
        self.url = self.config.webhook_url
        self._secret = self.config.webhook_secret_token.reveal().encode()
        # The wall clock, as Telegram dates its errors (injected: tests use a fake clock).
        self.wall = wall
        self._since = 0.0  # when this gateway set the webhook
        self._last_ok: float | None = None  # when it last answered a delivery 2xx
        self._last_refused: float | None = None  # ... or 503 on purpose
        self._done: OrderedDict[int, None] = OrderedDict()  # update ids answered 200
        self._attempts = webhook_server.Attempts()  # by update id
        self._refused = 0
        self._backend_failing = False  # the last delivery failed at the backend
        self._runner: web.AppRunner | None = None
        self.port = self.config.webhook_port  # the bound port (0 in tests: a free one)

    # ------------------------------------------------------------------ the webhook server

    async def _serve(self) -> None:
        self._runner, self.port = await webhook_server.serve(
            self._on_request, url=self.url, host=self.config.bind_address,
            port=self.config.webhook_port)
        log.info("webhook served on :%d%s", self.port, webhook_server.path_of(self.url))
        if self.readiness is None:
            return
        # Ready now, so the Service gets this pod as its endpoint; the webhook is set once the
        # kubelet has seen that (Telegram posts the pending updates at once), bounded.
        self.readiness.serving = True
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self.config.webhook_ready_wait):
                await self.readiness.seen.wait()

    async def _on_request(self, request: web.Request) -> web.Response:
        if request.method != "POST":
            return web.Response(status=405, headers={"Allow": "POST"})
        given = request.headers.get(SECRET_HEADER, "").encode()
        if not hmac.compare_digest(given, self._secret):
            return self._refuse(WebhookRefusal.SECRET_TOKEN, 403)
        try:
            data = json.loads(await request.read())
            update = Update.de_json(data, self.bot)
        except (ValueError, TypeError, KeyError, AttributeError):
            return self._refuse(WebhookRefusal.MALFORMED, 400)
        if update is None:
            return self._refuse(WebhookRefusal.MALFORMED, 400)
        if not await self._answer_once(update):
            self._last_refused = self.wall()
            metrics.WEBHOOK_DELIVERIES.labels(PLATFORM, "retry").inc()
            return web.Response(status=503, text="not yet: deliver again")
        self._last_ok = self.wall()
        self.progress.moved()
        return web.Response(status=200)

    def _refuse(self, reason: WebhookRefusal, status: int) -> web.Response:
        metrics.WEBHOOK_REFUSED.labels(PLATFORM, reason.value).inc()
        self._refused += 1
        self._publish_refused()
        log.warning("refused a request to the webhook (%s)", reason.value)
        return web.Response(status=status)

    async def _answer_once(self, update: Update) -> bool:
        """Telegram gives up waiting on a slow backend (an LLM's half minute) and delivers the
        update again: the redelivery joins the attempt still running."""
        return await self._attempts.join(update.update_id, lambda: self._answer_guarded(update))

    async def _answer_guarded(self, update: Update) -> bool:
        try:
            return await self._answer(update)
        except FatalAdapterError as exc:  # the token was revoked while replying
            self._interrupt(exc)
            return False

    async def _answer(self, update: Update) -> bool:
        """Hand one update to the backend and send its reply; True: answer 200."""
        update_id = update.update_id
        if update_id in self._done:
            metrics.DUPLICATES.labels(PLATFORM).inc()
            metrics.WEBHOOK_DELIVERIES.labels(PLATFORM, "duplicate").inc()
            return True
        parsed = inbound_message(update, self.config.connection_ref)
        pending = self._accepted.get(update_id)
        if parsed is None:
            self._remember(update_id)  # nothing to relay (service message, sticker, ...)
            return True
        if pending is None:
            try:
                reply = await self.relay.deliver(parsed[1])
            except BackendError as exc:
                metrics.ERRORS.labels(PLATFORM, BACKEND_ERROR).inc()
                text = f"{short_error(exc)}; Telegram delivers the message again"
                log.warning("backend: %s", text)
                self.sink.record(State.CONNECTED if self.connected else State.CONNECTING,
                                 max_attempts=self.policy.max_attempts,
                                 error=AdapterError(BACKEND_ERROR, text, True))
                self._backend_failing = True
                return False
            self.progress.delivered()
            metrics.MESSAGES_IN.labels(PLATFORM).inc()
            if self._backend_failing and self.connected:
                self._backend_failing = False
                self.sink.record(State.CONNECTED, max_attempts=self.policy.max_attempts)
            pending = split_text(reply) if reply else []
            self._accepted[update_id] = pending
            while len(self._accepted) > REMEMBERED_REPLIES:
                self._accepted.popitem(last=False)
        try:
            wait = await self._send(update_id, parsed, pending, direct=True)
        except CALL_ERRORS as exc:
            if not self._budget.failed(update_id):
                log.warning("reply to update %d failed (%s): Telegram delivers it again",
                            update_id, short_error(exc))
                return False
            self._dead_letter(update_id, parsed, DeadLetterReason.EXHAUSTED,
                              f"{proto.UPDATE_ATTEMPTS} attempts failed: {short_error(exc)}")
            wait = None
        if wait is not None:
            return False  # the chat's flood control: the rest of the reply comes next time
        self._finished(update_id)
        self._remember(update_id)
        metrics.WEBHOOK_DELIVERIES.labels(PLATFORM, "ok").inc()
        return True

    def _remember(self, update_id: int) -> None:
        self._done[update_id] = None
        while len(self._done) > REMEMBERED_REPLIES:
            self._done.popitem(last=False)

    # ------------------------------------------------------------------ the loop

    async def _poll_loop(self) -> None:
        """Serve, set the webhook, then look at getWebhookInfo (the name is the base's)."""
        await self._serve()
        attempt = 0  # the webhook's ladder (deliveries failing, network errors)
        conflicts = 0
        webhook_set = False
        while not self._stop.is_set():
            try:
                if not webhook_set:
                    await self._call(self.bot.initialize())
                    self._since = self.wall()
                    await self._call(self.bot.set_webhook(
                        url=self.url, secret_token=self._secret.decode(),
                        allowed_updates=ALLOWED_UPDATES,
                        max_connections=self.config.webhook_max_connections,
                        drop_pending_updates=False))
                    webhook_set = True
                    log.info("webhook set (max_connections %d)",
                             self.config.webhook_max_connections)
                info = await self._call(self.bot.get_webhook_info(
                    read_timeout=self.config.probe_timeout))
                self.progress.answered()
                verdict = self._look(info)
                if verdict.health is proto.WebhookHealth.NOT_OURS:
                    conflicts += 1
                    webhook_set = False
                    if conflicts > self.policy.conflict_retries:
                        raise FatalAdapterError(
                            ErrorCode.TELEGRAM_POLLING_CONFLICT,
                            f"{verdict.message}: something else sets this bot's webhook "
                            f"(gave up after {self.policy.conflict_retries} retries)", False)
                    await self._retrying(conflicts, self.policy.conflict_retries,
                                         self.policy.conflict_delay(conflicts), AdapterError(
                                             ErrorCode.TELEGRAM_POLLING_CONFLICT,
                                             verdict.message, True))
                    continue
                if verdict.health is proto.WebhookHealth.FAILING:
                    metrics.ERRORS.labels(PLATFORM, WEBHOOK_FAILING).inc()
                    attempt += 1
                    if attempt > self.policy.max_attempts:
                        raise FatalAdapterError(
                            WEBHOOK_FAILING, f"{verdict.message} (looked "
                            f"{self.policy.max_attempts} times)", True)
                    await self._retrying(attempt, self.policy.max_attempts,
                                         self.policy.delay(attempt),
                                         AdapterError(WEBHOOK_FAILING, verdict.message, True))
                    continue
                attempt = 0
                if not self.connected:
                    self.connected = True
                    self.sink.record(State.CONNECTED, max_attempts=self.policy.max_attempts)
                await self._sleep(self.config.webhook_info_interval)
            except (_Stopped, FatalAdapterError):
                raise
            except (*CALL_ERRORS, _LinkDead) as exc:
                refused = proto.setwebhook_error(exc) if not webhook_set else None
                if refused is not None and refused.action is proto.PollAction.FATAL:
                    metrics.ERRORS.labels(PLATFORM, WEBHOOK_REFUSED).inc()
                    raise FatalAdapterError(
                        WEBHOOK_REFUSED, f"Telegram refused the webhook URL: "
                        f"{short_error(exc)}", False) from None
                verdict_ = refused or proto.poll_error(exc)
                metrics.ERRORS.labels(PLATFORM, verdict_.code).inc()
                if verdict_.action is proto.PollAction.FATAL:
                    raise token_rejected(exc) from None
                if verdict_.action is proto.PollAction.WAIT:
                    self.progress.moved(verdict_.wait)
                    await self._sleep(verdict_.wait)
                    continue
                attempt += 1
                if attempt > self.policy.max_attempts:
                    raise FatalAdapterError(
                        verdict_.code,
                        f"gave up after {self.policy.max_attempts} reconnect attempts: "
                        f"{short_error(exc)}", True) from None
                await self._retrying(attempt, self.policy.max_attempts,
                                     self.policy.delay(attempt), AdapterError(
                                         verdict_.code, short_error(exc), True))

    def _look(self, info: Any) -> proto.WebhookVerdict:
        """The verdict on getWebhookInfo, and status.webhook from it."""
        error_date = _unix(info.last_error_date)
        self._publish(info, error_date)
        return proto.webhook_verdict(
            url=info.url or "", ours=self.url, last_error_date=error_date,
            last_error_message=info.last_error_message, since=self._since,
            last_ok=self._last_ok, last_refused=self._last_refused)

    def _publish(self, info: Any, error_date: int | None) -> None:
        if self._store is None:
            return
        value: dict[str, Any] = {WebhookField.URL: info.url or "",
                                 WebhookField.PENDING: int(info.pending_update_count or 0),
                                 WebhookField.REFUSED: self._refused}
        if error_date:
            value[WebhookField.LAST_ERROR_TIME] = dt.datetime.fromtimestamp(
                error_date, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
            value[WebhookField.LAST_ERROR_MESSAGE] = platform_text(
                info.last_error_message or "", 300)
        self._store.set_field(Field.WEBHOOK, value)

    def _publish_refused(self) -> None:
        if self._store is None:
            return
        current = dict(self._store.field(Field.WEBHOOK) or {WebhookField.URL: ""})
        current[WebhookField.REFUSED] = self._refused
        self._store.set_field(Field.WEBHOOK, current)

    async def _shutdown(self) -> None:
        """The webhook stays set (Telegram holds the updates for the next pod)."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        try:
            await self.bot.shutdown()
        except Exception as exc:
            log.debug("closing the Bot API session: %s", exc)


def _unix(value: Any) -> int | None:
    """PTB gives dates as datetime; None when Telegram sent none."""
    if value is None:
        return None
    if isinstance(value, dt.datetime):
        return int(value.timestamp())
    return int(value)
