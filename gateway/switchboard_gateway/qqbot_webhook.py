"""QQ Bot adapter, HTTP callback delivery: QQ posts every event to spec.delivery.webhook.url
(the callback URL saved in QQ's console) instead of the websocket.

The websocket adapter (qqbot.py) is the base: the access token, the relay and the reply path
(msg_seq, retries, rejected replies) are the same. Every callback is checked by
qqbot_callback.py before anything else: unsigned, signed by another key, or with a timestamp
outside five minutes of this gateway's clock (a replay) -> 401, counted
(`switchboard_gateway_webhook_refused_total`, status.webhook.refusedRequests). Then:
- op 13 (address validation, when the URL is saved in the console): the signed plain_token;
- op 0 (a dispatch): the message goes to the backend; op 12 (the acknowledgement) is answered
  only once the backend accepted it, a failed backend is answered 503 so that QQ posts it
  again, and the reply is sent after the acknowledgement (QQ wants an answer within 3 s). A
  callback posted again while its first delivery is still at the backend waits for that one;
  a message already accepted is acknowledged at once.
State: QQ has no view of the callbacks like Telegram's getWebhookInfo, so `connected` means
the webhook is served and the access token endpoint accepts appId/clientSecret (looked at
again when the token is due); failing that, the reconnect ladder (`retrying N/MAX`), then a
retryable fatal, and rejected credentials a non-retryable fatal as with the websocket.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable
from typing import Any

from aiohttp import web

from switchboard_contract import ErrorCode, Field, WebhookField, WebhookRefusal
from switchboard_gateway import metrics, webhook_server
from switchboard_gateway import qqbot_callback as cb
from switchboard_gateway.adapter import AdapterError, BackendError, FatalAdapterError, State
from switchboard_gateway.config import GatewayConfig
from switchboard_gateway.health import Readiness
from switchboard_gateway.qqbot import PLATFORM, QQBotAdapter, _describe, _Failure
from switchboard_gateway.qqbot_protocol import ChatMessage, backoff_delay, parse_message

log = logging.getLogger("switchboard.qqbot.webhook")

TOKEN_RECHECK = 60.0  # how often the token is looked at (refreshed when due)
_REFUSALS = {cb.Refusal.UNSIGNED: WebhookRefusal.SIGNATURE,
             cb.Refusal.BAD_SIGNATURE: WebhookRefusal.SIGNATURE,
             cb.Refusal.STALE: WebhookRefusal.STALE}


class QQBotWebhookAdapter(QQBotAdapter):
    def __init__(self, config: GatewayConfig, sink: Any, relay: Any, *,
                 wall: Callable[[], float] = time.time,
                 readiness: Readiness | None = None) -> None:
        super().__init__(config, sink, relay)
        assert config.webhook_url is not None
        self.config = config
        self.url = config.webhook_url
        self._key = cb.signing_key(self.settings.client_secret.reveal())
        self._public = self._key.public_key()
        self.wall = wall  # the clock stale timestamps are judged by (injected in tests)
        self.readiness = readiness
        self._attempts = webhook_server.Attempts()  # by message id
        self._replies: set[asyncio.Task[None]] = set()
        self._refused = 0
        self._runner: web.AppRunner | None = None
        self.port = config.webhook_port

    async def run(self, stop: asyncio.Event) -> None:
        s = self.settings
        self._stop = stop
        self._http = self._open_http()
        tokens = self._tokens
        assert tokens is not None
        self._publish()
        try:
            await self._report(State.CONNECTING)
            await self._serve()
            attempt = 0
            while not stop.is_set():
                try:
                    await tokens.get()
                except _Failure as exc:
                    attempt += 1
                    if attempt > s.max_attempts:
                        raise FatalAdapterError(
                            ErrorCode.QQ_RECONNECT_EXHAUSTED,
                            f"gave up after {s.max_attempts} attempts: {exc.message}",
                            True) from None
                    metrics.ERRORS.labels(platform=PLATFORM, code=exc.code).inc()
                    metrics.RECONNECT_ATTEMPTS.labels(platform=PLATFORM).inc()
                    self.link_up = False
                    await self._report(State.RETRYING, attempt=attempt,
                                       max_attempts=s.max_attempts,
                                       error=AdapterError(exc.code, exc.message, True))
                    await _wait(stop, backoff_delay(attempt, s.delays))
                    continue
                attempt = 0
                self.progress.answered()
                if not self.link_up:
                    self.link_up = True
                    await self._report(State.CONNECTED, max_attempts=s.max_attempts,
                                       error=self._backend_error)
                await _wait(stop, TOKEN_RECHECK)
        finally:
            if self._runner is not None:
                await self._runner.cleanup()
            for task in list(self._replies):
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(task, 5.0)
            if self._report_task is not None:
                with contextlib.suppress(Exception):
                    await self._report_task
            await self._http.close()

    # ------------------------------------------------------------------ the callback server

    async def _serve(self) -> None:
        self._runner, self.port = await webhook_server.serve(
            self._on_request, url=self.url, host=self.config.bind_address,
            port=self.config.webhook_port)
        log.info("QQ Bot callbacks served on :%d%s", self.port,
                 webhook_server.path_of(self.url))
        if self.readiness is not None:
            self.readiness.serving = True  # the Service may send callbacks from now on

    async def _on_request(self, request: web.Request) -> web.Response:
        if request.method != "POST":
            return web.Response(status=405, headers={"Allow": "POST"})
        body = await request.read()
        checked = cb.check(self._public, request.headers.get(cb.SIGNATURE_HEADER),
                           request.headers.get(cb.TIMESTAMP_HEADER), body, now=self.wall())
        if not checked.ok:
            assert checked.refusal is not None
            return self._refuse(_REFUSALS[checked.refusal], 401)
        try:
            payload = json.loads(body)
            op = payload.get("op")
        except (ValueError, AttributeError):
            return self._refuse(WebhookRefusal.MALFORMED, 400)
        if op == cb.OP_VALIDATION:
            try:
                answer = cb.validation_answer(self._key, payload.get("d"))
            except ValueError:
                return self._refuse(WebhookRefusal.MALFORMED, 400)
            log.info("answered QQ's callback address validation")
            return web.json_response(answer)
        if op != cb.OP_DISPATCH:
            return web.json_response(cb.ack())
        message = parse_message(payload.get("t"), payload.get("d"))
        if message is not None and not await self._take(message):
            metrics.WEBHOOK_DELIVERIES.labels(PLATFORM, "retry").inc()
            return web.Response(status=503, text="not yet: post it again")
        self.progress.moved()
        return web.json_response(cb.ack())

    def _refuse(self, reason: WebhookRefusal, status: int) -> web.Response:
        metrics.WEBHOOK_REFUSED.labels(PLATFORM, reason.value).inc()
        self._refused += 1
        self._publish()
        log.warning("refused a callback (%s)", reason.value)
        return web.Response(status=status)

    def _publish(self) -> None:
        if self._store is not None:
            self._store.set_field(Field.WEBHOOK, {WebhookField.URL: self.url,
                                                  WebhookField.REFUSED: self._refused})

    async def _take(self, message: ChatMessage) -> bool:
        """True once the backend has the message (now or before)."""
        if message.message_id in self._seen:
            metrics.DUPLICATES.labels(platform=PLATFORM).inc()
            metrics.WEBHOOK_DELIVERIES.labels(PLATFORM, "duplicate").inc()
            return True
        return await self._attempts.join(message.message_id, lambda: self._accept(message))

    async def _accept(self, message: ChatMessage) -> bool:
        try:
            reply = await self._relay.deliver(self._inbound(message))
        except BackendError as exc:
            metrics.ERRORS.labels(platform=PLATFORM, code=ErrorCode.BACKEND_ERROR).inc()
            text = f"{_describe(exc)}; QQ posts the message again"
            log.warning("backend: %s", text)
            self._backend_error = AdapterError(ErrorCode.BACKEND_ERROR, text, True)
            if self.link_up:
                await self._report(State.CONNECTED, max_attempts=self.settings.max_attempts,
                                   error=self._backend_error)
            return False
        self.progress.delivered()
        metrics.MESSAGES_IN.labels(platform=PLATFORM).inc()
        metrics.WEBHOOK_DELIVERIES.labels(PLATFORM, "ok").inc()
        self._seen[message.message_id] = None
        while len(self._seen) > 10_000:
            self._seen.popitem(last=False)
        if self._backend_error is not None:
            self._backend_error = None
            if self.link_up:
                await self._report(State.CONNECTED, max_attempts=self.settings.max_attempts)
        if reply:
            task = asyncio.create_task(self._reply(message, reply), name="qqbot-reply")
            self._replies.add(task)
            task.add_done_callback(self._replies.discard)
        return True


async def _wait(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)
