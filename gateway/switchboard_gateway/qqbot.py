"""QQ Bot adapter: the websocket gateway (websockets), REST token and replies (aiohttp).

The decisions (close-code table, ladder, burst rule, token timing, heartbeat deadline) live in
qqbot_protocol.py and are documented there; this module only does the I/O around them.

Flow of one connection: access token -> ``GET /gateway`` -> websocket -> Hello -> Identify (or
Resume with session id and last seq) -> READY/RESUMED (only now ``connected``) -> heartbeats
every 0.8 x interval while dispatches arrive. Heartbeat ACKs are watched: none for
``heartbeat_ack_timeout_factor`` x interval and the socket is aborted (a dead peer is noticed in
about two intervals, not at TCP timeout).

Messages: C2C and group @-messages go into an in-process queue that outlives reconnects, are
handed to the relay one at a time (a failing backend is retried with back-off forever, the
adapter keeps running), and the reply is a passive reply (``msg_id``) over REST. A message id
seen twice (a replay after Resume) is handled once.

Restarts: the session survives the process in ``status.qqSession`` ({sessionId, seq, updatedAt,
appId}), written through the FieldStore (the StatusReporter) within its write budget. ``seq`` is
the last *handled* dispatch: every dispatch up to it was relayed to the backend and answered (or
was not a message), so a new process resumes from there and the platform replays everything
after it, including what arrived while no process was connected (at least once: what was
handled in the last second or so before a SIGKILL is replayed too; the reply to it is sent with
the same ``msg_seq`` and deduplicated by the platform). A stored session the platform no longer
resumes (4006, 4007, op 9 false) costs no ladder step: the adapter identifies at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

import aiohttp
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI

from switchboard_contract import DeadLetterReason, ErrorCode, Field
from switchboard_gateway import dead_letters, metrics
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
from switchboard_gateway.config import GatewayConfig, Secret
from switchboard_gateway.progress import Progress
from switchboard_gateway.qqbot_protocol import (
    DEFAULT_DELAYS,
    DEFAULT_INTENTS,
    DEFAULT_MAX_ATTEMPTS,
    EXHAUSTED,
    GATEWAY_ERROR,
    HANDSHAKE_TIMEOUT,
    HEARTBEAT_TIMEOUT,
    INVALID_CREDENTIALS,
    NETWORK_ERROR,
    RECONNECT_REQUESTED,
    SESSION_INVALIDATED,
    TOKEN_ERROR,
    UNEXPECTED_ERROR,
    Cause,
    ChatMessage,
    Exhausted,
    HeartbeatMonitor,
    Next,
    Op,
    ReconnectLadder,
    classify_close,
    heartbeat_payload,
    heartbeat_period,
    identify_payload,
    parse_expires_in,
    parse_message,
    resume_payload,
    token_refresh_after,
)
from switchboard_gateway.redact import redact, register_secret

PLATFORM = "qqbot"
TOKEN_BASE = "https://bots.qq.com"
API_BASE = "https://api.sgroup.qq.com"
BACKEND_ERROR = ErrorCode.BACKEND_ERROR
# Token endpoint answers (HTTP 200, no access_token) that mean the credentials are wrong.
_CREDENTIAL_CODES = frozenset({100007, 100016})
_DUPLICATE_REPLY = 40054005  # "message deduplicated": an earlier attempt of this reply landed
_SEEN_LIMIT = 10_000
SESSION_FIELD = Field.QQ_SESSION  # the gateway-owned status field holding the session to resume
_MAX_SESSION_ID = 256  # the CRD's maxLength of qqSession.sessionId
_MAX_SEQ = 2**53 - 1  # the CRD's maximum of qqSession.seq
_MAX_APP_ID = 64  # the CRD's maxLength of qqSession.appId
RESTORE_TIMEOUT = 5.0  # reading the stored session must not hold the start up for longer

log = logging.getLogger(__name__)
# websockets logs every frame at DEBUG, Identify (with the token) included: pin its logger.
_ws_log = logging.getLogger(__name__ + ".websocket")
_ws_log.setLevel(logging.INFO)


@dataclass(frozen=True)
class QQBotSettings:
    """What the adapter needs; ``from_config`` builds it from the gateway's GatewayConfig.

    Tuning knobs beyond the CRD (heartbeat factor, rate-limit wait, quick window, timeouts) keep
    their defaults in production and are shrunk by tests.
    """

    connection: str
    app_id: str
    client_secret: Secret
    api_base_url: str | None = None  # one base for token, REST and /gateway (sandbox, fakes)
    delays: tuple[float, ...] = DEFAULT_DELAYS
    max_attempts: int = DEFAULT_MAX_ATTEMPTS
    intents: int = DEFAULT_INTENTS
    heartbeat_ack_timeout_factor: float = 2.0
    rate_limit_delay: float | None = None  # 4008: None waits the ladder's longest step (60 s)
    quick_window: float = 5.0
    burst_size: int = 3
    handshake_timeout: float = 15.0  # Hello after connect, READY/RESUMED after Identify/Resume
    request_timeout: float = 15.0  # each REST call and the websocket opening handshake
    backend_delays: tuple[float, ...] = (1.0, 2.0, 5.0, 10.0, 30.0)  # last repeats, forever
    reply_attempts: int = 5
    # Messages held for the backend at most; past it the gateway stops reading (a resumable
    # close) until half have been handled, then resumes: the platform replays the rest.
    inbox_limit: int = 1000

    @property
    def token_base(self) -> str:
        return (self.api_base_url or TOKEN_BASE).rstrip("/")

    @property
    def api_base(self) -> str:
        return (self.api_base_url or API_BASE).rstrip("/")

    @classmethod
    def from_config(cls, config: GatewayConfig, **overrides: Any) -> QQBotSettings:
        if not config.qq_app_id or config.qq_client_secret is None:
            raise ValueError("the QQ Bot adapter needs an app id and a client secret")
        settings = cls(
            connection=config.connection,
            app_id=config.qq_app_id,
            client_secret=config.qq_client_secret,
            api_base_url=config.api_base_url,
            delays=tuple(config.qq_reconnect.delays),
            max_attempts=config.qq_reconnect.max_attempts,
            intents=DEFAULT_INTENTS if config.qq_intents is None else config.qq_intents,
        )
        return replace(settings, **overrides)


class _Failure(Exception):
    """A failed step before or around the websocket: counted on the ladder."""

    def __init__(self, code: str, message: str, *, refresh_token: bool = False) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.refresh_token = refresh_token


@dataclass
class _Outcome:
    """How one connection attempt ended."""

    code: str
    message: str
    cause: Cause = Cause.ERROR
    next: Next = Next.RESUME
    refresh_token: bool = False
    rate_limited: bool = False
    planned: bool = False  # op 7 / op 9: reconnect at once unless it was quick
    wait_drain: bool = False  # the inbox is full: resume once the backend caught up
    opened_at: float | None = None
    ready: bool = False


@dataclass
class _Conn:
    ws: ClientConnection
    opened_at: float
    ready: bool = False
    dead: bool = False  # the heartbeat watchdog gave up on the peer
    monitor: HeartbeatMonitor | None = None
    heartbeat: asyncio.Task[None] | None = field(default=None, repr=False)


class _Tokens:
    """The app access token: fetched lazily, refreshed before it expires, dropped on 4004/401."""

    def __init__(self, settings: QQBotSettings, http: aiohttp.ClientSession,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._settings = settings
        self._http = http
        self._clock = clock
        self._lock = asyncio.Lock()
        self._token: str | None = None
        self._refresh_at = 0.0

    async def get(self) -> str:
        async with self._lock:  # one refresh at a time; the others wait and share it
            if self._token is None or self._clock() >= self._refresh_at:
                await self._fetch()
            assert self._token is not None
            return self._token

    def invalidate(self, token: str | None = None) -> None:
        if token is None or token == self._token:
            self._token = None

    async def _fetch(self) -> None:
        url = f"{self._settings.token_base}/app/getAppAccessToken"
        body = {"appId": self._settings.app_id,
                "clientSecret": self._settings.client_secret.reveal()}
        try:
            async with self._http.post(url, json=body) as response:
                status = response.status
                text = await response.text()
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise _Failure(TOKEN_ERROR, f"token endpoint unreachable: {_describe(exc)}") from None
        try:
            data = json.loads(text)
        except ValueError:
            data = None
        if not isinstance(data, dict):
            raise _Failure(TOKEN_ERROR, f"token endpoint answered HTTP {status} without JSON")
        token = data.get("access_token")
        if status != 200 or not isinstance(token, str) or not token:
            detail = f"code {data.get('code')}: {data.get('message')}"
            if data.get("code") in _CREDENTIAL_CODES:
                raise FatalAdapterError(
                    INVALID_CREDENTIALS,
                    redact(f"the token endpoint rejected appId/clientSecret ({detail})"), False)
            raise _Failure(TOKEN_ERROR, redact(f"token endpoint answered HTTP {status} ({detail})"))
        try:
            lifetime = parse_expires_in(data.get("expires_in"))
        except ValueError as exc:
            raise _Failure(TOKEN_ERROR, f"token endpoint: {exc}") from None
        register_secret(token)  # from now on scrubbed from every log line and status message
        self._token = token
        self._refresh_at = self._clock() + token_refresh_after(lifetime)


class QQBotAdapter:
    """One QQ Bot connection (see the module docstring and qqbot_protocol.py)."""

    def __init__(self, config: GatewayConfig | QQBotSettings, sink: StatusSink,
                 relay: Relay, store: FieldStore | None = None) -> None:
        self.settings = (config if isinstance(config, QQBotSettings)
                         else QQBotSettings.from_config(config))
        s = self.settings
        self._sink = sink
        self._relay = relay
        # Where the session survives a restart; main's StatusReporter is sink and store at once.
        self._store = store if store is not None else (
            sink if isinstance(sink, FieldStore) else None)
        self.ladder = ReconnectLadder(
            steps=s.delays, max_attempts=s.max_attempts, rate_limit_delay=s.rate_limit_delay,
            quick_window=s.quick_window, burst_size=s.burst_size)
        self.session_id: str | None = None
        self.seq: int | None = None  # last dispatch received
        self._inbox: asyncio.Queue[_Item] = asyncio.Queue()
        self._unhandled: deque[_Item] = deque()  # in the inbox or being handled, in seq order
        self._persisted: tuple[str, int] | None = None  # (session, seq) given to the store
        self._restored = False  # resuming a session a previous process stored
        self._seen: OrderedDict[str, None] = OrderedDict()
        self._report_task: asyncio.Task[None] | None = None
        self._http: aiohttp.ClientSession | None = None
        self._tokens: _Tokens | None = None
        self._stop = asyncio.Event()
        self._halt = asyncio.Event()
        self._died: FatalAdapterError | None = None  # a supervised task's end
        self.progress = Progress(self._store)  # main's watchdog reads it
        self._backend_error: AdapterError | None = None  # while the backend fails
        self._drained = asyncio.Event()  # the inbox is at or below half its limit
        self._drained.set()
        self.link_up = False  # between READY/RESUMED and the end of that connection

    # ------------------------------------------------------------------ lifecycle

    async def run(self, stop: asyncio.Event) -> None:
        self._stop = stop
        self._http = self._open_http()
        # Set when stop is, or when a supervised task dies: every wait of the connection loop
        # ends on it, so a dead worker or heartbeat is reported at once, never left silent.
        halt = self._halt = asyncio.Event()
        linker = asyncio.create_task(_link(stop, halt), name="qqbot-stop-link")
        worker = supervise(asyncio.create_task(self._worker(stop), name="qqbot-worker"),
                           self._task_died)
        try:
            await self._restore_session()  # before the first write, which would drop it
            await self._report(State.CONNECTING)
            while not halt.is_set():
                outcome = await _until_stopped(self._connect_once(), halt)
                if self._died is not None and not stop.is_set():
                    raise self._died
                if outcome is None or halt.is_set():
                    return
                await self._after_disconnect(outcome, halt)
            if self._died is not None and not stop.is_set():
                raise self._died
        finally:
            linker.cancel()
            worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await worker
            if self._report_task is not None:
                with contextlib.suppress(Exception):
                    await self._report_task
            await self._http.close()

    def _open_http(self) -> aiohttp.ClientSession:
        """The REST session (token, replies) and the token cache on it."""
        http = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=self.settings.request_timeout), trust_env=True)
        self._tokens = _Tokens(self.settings, http)
        return http

    async def _after_disconnect(self, outcome: _Outcome, stop: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()
        if outcome.wait_drain:
            # Not a failure of the link: no ladder step, no quick-disconnect count.
            log.warning("QQ Bot inbox full: %s", outcome.message)
            if len(self._unhandled) > self.settings.inbox_limit // 2:
                self._drained.clear()
                drained = asyncio.create_task(self._drained.wait())
                halted = asyncio.create_task(stop.wait())
                await asyncio.wait({drained, halted}, return_when=asyncio.FIRST_COMPLETED)
                drained.cancel()
                halted.cancel()
            log.info("QQ Bot inbox at %d: resuming", len(self._unhandled))
            return
        quick = self.ladder.on_disconnect(opened_at=outcome.opened_at, ready=outcome.ready,
                                          now=loop.time())
        message = redact(outcome.message)
        if outcome.next is Next.FATAL:
            metrics.ERRORS.labels(platform=PLATFORM, code=outcome.code).inc()
            log.error("QQ Bot gateway closed the connection for good: %s", message)
            raise FatalAdapterError(outcome.code, message, False)
        if outcome.next is Next.IDENTIFY:
            restored, self._restored = self._restored, False
            self.session_id, self.seq = None, None
            if restored:
                # The stored session expired while no process was connected: identify at once,
                # no ladder step, no `retrying` (what arrived meanwhile is lost, as before).
                log.info("QQ Bot stored session not resumable (%s): identifying anew", message)
                return
        if outcome.refresh_token and self._tokens is not None:
            self._tokens.invalidate()
        if outcome.planned and not quick:
            log.info("QQ Bot reconnecting at once: %s", message)
            await self._report(State.CONNECTING)
            return
        metrics.ERRORS.labels(platform=PLATFORM, code=outcome.code).inc()
        plan = self.ladder.failure(outcome.cause, outcome.code, message,
                                   rate_limited=outcome.rate_limited)
        if isinstance(plan, Exhausted):
            text = redact(plan.message())
            log.error("QQ Bot reconnect ladder exhausted: %s", text)
            raise FatalAdapterError(EXHAUSTED, text, True)
        if plan.burst:
            message = (f"{self.ladder.quick_in_a_row} disconnects in a row within "
                       f"{_secs(self.settings.quick_window)} of connecting; last: {message}")
        error = AdapterError(plan.error_code, message, True)
        metrics.RECONNECT_ATTEMPTS.labels(platform=PLATFORM).inc()
        log.warning("QQ Bot retrying %d/%d in %s: %s: %s", plan.attempt,
                    self.settings.max_attempts, _secs(plan.delay), plan.error_code, message)
        # The status write lands before the back-off sleep starts (the sink returns once written).
        await self._report(State.RETRYING, attempt=plan.attempt,
                           max_attempts=self.settings.max_attempts, error=error)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), plan.delay)

    # ----------------------------------------------------------------- connection

    async def _connect_once(self) -> _Outcome:
        assert self._tokens is not None
        try:
            token = await self._tokens.get()
            try:
                url = await self._gateway_url(token)
            except _Failure as failure:
                if not failure.refresh_token:
                    raise
                # A token the platform expired early: one more try with a fresh one at once,
                # a stale cache is not worth an attempt on the ladder.
                token = await self._tokens.get()
                url = await self._gateway_url(token)
            ws = await connect(
                url, open_timeout=self.settings.request_timeout, close_timeout=1.0,
                # Dead peers are found by the Heartbeat ACK watchdog; protocol pings would
                # only add a second, slower detector.
                ping_interval=None, max_size=2**22, logger=_ws_log)
        except FatalAdapterError:
            raise
        except _Failure as failure:
            return _Outcome(failure.code, failure.message, refresh_token=failure.refresh_token)
        except (OSError, TimeoutError, InvalidHandshake, InvalidURI, aiohttp.ClientError) as exc:
            return _Outcome(NETWORK_ERROR, f"cannot connect to the gateway: {_describe(exc)}")
        except Exception as exc:  # a bug or a surprise: counted on the ladder, never fatal here
            log.exception("unexpected error while connecting to the QQ Bot gateway")
            return _Outcome(UNEXPECTED_ERROR, f"unexpected {type(exc).__name__}: "
                                              f"{_describe(exc)}")
        conn = _Conn(ws, asyncio.get_running_loop().time())
        try:
            outcome = await self._read(conn, token)
        except Exception as exc:
            log.exception("unexpected error on the QQ Bot gateway connection")
            outcome = _Outcome(UNEXPECTED_ERROR, f"unexpected {type(exc).__name__}: "
                                                 f"{_describe(exc)}")
        finally:
            self.link_up = False
            if conn.heartbeat is not None:
                conn.heartbeat.cancel()
            # 4000, not 1000, on a reconnect and on stop too: a normal closure may end the
            # session, which the next connection (or the next process) resumes.
            await self._close(conn, None if conn.dead else 4000)
        outcome.opened_at, outcome.ready = conn.opened_at, conn.ready
        return outcome

    async def _gateway_url(self, token: str) -> str:
        assert self._http is not None and self._tokens is not None
        try:
            async with self._http.get(f"{self.settings.api_base}/gateway",
                                      headers=_auth(token)) as response:
                status = response.status
                data = await response.json(content_type=None) if status == 200 else None
        except (aiohttp.ClientError, TimeoutError, OSError, ValueError) as exc:
            raise _Failure(GATEWAY_ERROR, f"GET /gateway failed: {_describe(exc)}") from None
        if status == 401:
            self._tokens.invalidate(token)
            raise _Failure(GATEWAY_ERROR, "GET /gateway answered 401 (token rejected)",
                           refresh_token=True)
        url = data.get("url") if isinstance(data, dict) else None
        if status != 200 or not isinstance(url, str) or not url:
            raise _Failure(GATEWAY_ERROR, f"GET /gateway answered HTTP {status} without a URL")
        return url

    async def _read(self, conn: _Conn, token: str) -> _Outcome:
        """Hello, Identify/Resume, then dispatches until the connection ends."""
        loop = asyncio.get_running_loop()
        timeout = self.settings.handshake_timeout
        try:
            try:
                async with asyncio.timeout(timeout):
                    hello = _decode(await conn.ws.recv())
            except TimeoutError:
                return _Outcome(HANDSHAKE_TIMEOUT, f"no Hello within {_secs(timeout)}")
            interval_ms = (hello.get("d") or {}).get("heartbeat_interval") \
                if hello.get("op") == Op.HELLO and isinstance(hello.get("d"), dict) else None
            if not isinstance(interval_ms, int | float) or interval_ms <= 0:
                return _Outcome(UNEXPECTED_ERROR, f"expected Hello, got op {hello.get('op')}")
            conn.monitor = HeartbeatMonitor(interval_ms / 1000.0,
                                            self.settings.heartbeat_ack_timeout_factor,
                                            loop.time())
            conn.heartbeat = supervise(asyncio.create_task(self._heartbeat(conn, interval_ms),
                                                           name="qqbot-heartbeat"),
                                       self._task_died, may_return=True)
            if self.session_id is not None:
                await conn.ws.send(json.dumps(resume_payload(token, self.session_id, self.seq)))
            else:
                await conn.ws.send(json.dumps(identify_payload(token, self.settings.intents)))
            handshake_deadline = loop.time() + timeout
            while True:
                try:
                    async with asyncio.timeout_at(None if conn.ready else handshake_deadline):
                        payload = _decode(await conn.ws.recv())
                except TimeoutError:
                    what = "RESUMED" if self.session_id else "READY"
                    return _Outcome(HANDSHAKE_TIMEOUT, f"no {what} within {_secs(timeout)}")
                outcome = await self._on_payload(conn, payload)
                if outcome is not None:
                    return outcome
        except ConnectionClosed as exc:
            if conn.dead:
                assert conn.monitor is not None
                return _Outcome(HEARTBEAT_TIMEOUT, "no Heartbeat ACK for "
                                f"{_secs(conn.monitor.factor * conn.monitor.interval)}")
            code = exc.rcvd.code if exc.rcvd is not None else None
            reason = exc.rcvd.reason if exc.rcvd is not None else ""
            decision = classify_close(code)
            what = f"close {code}" if code is not None else "no close frame"
            message = f"{what} ({decision.description})" + (f": {reason}" if reason else "")
            return _Outcome(decision.error_code, message, cause=decision.cause,
                            next=decision.next, refresh_token=decision.refresh_token,
                            rate_limited=decision.rate_limited)
        except _ProtocolError as exc:
            return _Outcome(UNEXPECTED_ERROR, str(exc))

    async def _on_payload(self, conn: _Conn, payload: dict[str, Any]) -> _Outcome | None:
        op = payload.get("op")
        s = payload.get("s")
        if op == Op.DISPATCH and payload.get("t") not in ("READY", "RESUMED") \
                and len(self._unhandled) >= self.settings.inbox_limit:
            # Back-pressure: this dispatch is not taken (seq stays before it), the connection
            # is closed resumably, and Resume after the backend caught up replays it and
            # everything after it. Memory stays bounded however long the backend is down.
            return _Outcome(BACKEND_ERROR, f"{len(self._unhandled)} messages held for the "
                            "backend: not reading more until it has taken half of them",
                            cause=Cause.CLOSE_CODE, planned=True, next=Next.RESUME,
                            wait_drain=True)
        if isinstance(s, int) and not isinstance(s, bool):
            if op == Op.DISPATCH and self.seq is not None and s > self.seq + 1:
                # Every dispatch of a session has the next seq: a gap is what the platform
                # did not replay on Resume (its buffer is bounded). Lost: say so.
                dead_letters.record(
                    self._store, PLATFORM, DeadLetterReason.NOT_REPLAYED, chat_id="",
                    message_id="", count=s - self.seq - 1,
                    detail=f"the platform did not replay dispatches {self.seq + 1}..{s - 1} "
                           "on Resume")
            self.seq = s
        if op == Op.HEARTBEAT_ACK:
            assert conn.monitor is not None
            conn.monitor.ack(asyncio.get_running_loop().time())
            self.progress.answered()
        elif op == Op.DISPATCH:
            self.progress.moved()
            await self._on_dispatch(conn, payload.get("t"), payload.get("d"), self.seq)
            self._persist()
        elif op == Op.RECONNECT:
            return _Outcome(RECONNECT_REQUESTED, "the platform asked to reconnect (op 7)",
                            cause=Cause.CLOSE_CODE, planned=True)
        elif op == Op.INVALID_SESSION:
            resumable = payload.get("d") is True
            return _Outcome(SESSION_INVALIDATED,
                            f"invalid session (op 9, resumable={str(resumable).lower()})",
                            cause=Cause.CLOSE_CODE, planned=True,
                            next=Next.RESUME if resumable else Next.IDENTIFY)
        elif op == Op.HEARTBEAT:  # the server asks for one now
            await conn.ws.send(json.dumps(heartbeat_payload(self.seq)))
        return None

    async def _on_dispatch(self, conn: _Conn, event: object, d: object,
                           seq: int | None) -> None:
        if event == "READY":
            session_id = d.get("session_id") if isinstance(d, dict) else None
            if not isinstance(session_id, str) or not session_id:
                raise _ProtocolError("READY without a session_id")
            self.session_id = session_id
            self._connected(conn, "identified")
        elif event == "RESUMED":
            self._connected(conn, "resumed")
        elif isinstance(event, str):
            message = parse_message(event, d)
            if message is not None:
                self._enqueue(message, seq)

    def _connected(self, conn: _Conn, how: str) -> None:
        conn.ready = True
        self.link_up = True
        self._restored = False
        log.info("QQ Bot gateway %s (session %s)", how, self.session_id)
        # Not awaited: the reader must keep reading ACKs; reports stay in order (see _report).
        # A backend still failing stays in the report: a reconnect does not make it healthy.
        self._report_later(State.CONNECTED, max_attempts=self.settings.max_attempts,
                           error=self._backend_error)

    def _task_died(self, error: FatalAdapterError) -> None:
        """A background task ended by itself: the adapter stops with a retryable fatal."""
        log.error("QQ Bot %s", error.error.message)
        self._died = error
        self._halt.set()

    async def _heartbeat(self, conn: _Conn, interval_ms: float) -> None:
        monitor = conn.monitor
        assert monitor is not None
        loop = asyncio.get_running_loop()
        period = heartbeat_period(interval_ms)
        next_beat = loop.time() + period
        try:
            while True:
                now = loop.time()
                if monitor.overdue(now):
                    break
                if now >= next_beat:
                    next_beat = now + period
                    try:
                        # A send stuck on a full buffer past the deadline is a dead peer too.
                        async with asyncio.timeout_at(monitor.deadline):
                            await conn.ws.send(json.dumps(heartbeat_payload(self.seq)))
                    except TimeoutError:
                        break
                await asyncio.sleep(max(0.0, min(next_beat, monitor.deadline) - loop.time()))
        except ConnectionClosed:
            return  # the reader sees it too
        log.warning("QQ Bot heartbeat ACK missing for %s: dropping the connection",
                    _secs(monitor.factor * monitor.interval))
        conn.dead = True
        conn.ws.transport.abort()  # no close handshake with a peer that does not answer

    async def _close(self, conn: _Conn, code: int | None) -> None:
        if code is None:
            conn.ws.transport.abort()
        with contextlib.suppress(Exception):
            await conn.ws.close(code=code or 1000, reason="reconnecting")

    # ------------------------------------------------------------------- messages

    def _enqueue(self, message: ChatMessage, seq: int | None) -> None:
        if message.message_id in self._seen:
            metrics.DUPLICATES.labels(platform=PLATFORM).inc()
            log.info("QQ Bot message %s seen again (replay), handled once", message.message_id)
            return
        self._seen[message.message_id] = None
        while len(self._seen) > _SEEN_LIMIT:
            self._seen.popitem(last=False)
        item = _Item(message, self.session_id, seq)
        self._unhandled.append(item)
        self._inbox.put_nowait(item)

    async def _worker(self, stop: asyncio.Event) -> None:
        while True:
            item = await self._inbox.get()
            try:
                handled = await self._handle(item.message, stop)
            except Exception:  # one bad message must not end the worker (nor hold the seq)
                log.exception("QQ Bot message %s could not be handled", item.message.message_id)
                handled = True
            if handled:
                with contextlib.suppress(ValueError):
                    self._unhandled.remove(item)
                if len(self._unhandled) <= self.settings.inbox_limit // 2:
                    self._drained.set()
                self._persist()

    async def _handle(self, message: ChatMessage, stop: asyncio.Event) -> bool:
        """Relay and reply; False if stopped before the backend took it (stays unhandled)."""
        inbound = self._inbound(message)
        failures = 0
        while True:
            try:
                reply = await self._relay.deliver(inbound)
                self.progress.delivered()
                break
            except Exception as exc:  # BackendError or anything else: keep the message, retry
                failures += 1
                delays = self.settings.backend_delays
                delay = delays[min(failures, len(delays)) - 1]
                self.progress.moved(delay)  # an attempt: holding the message is not a stall
                metrics.ERRORS.labels(platform=PLATFORM, code=BACKEND_ERROR).inc()
                kind = "" if isinstance(exc, BackendError) else f"{type(exc).__name__}: "
                text = (f"{kind}{_describe(exc)}; message held, retry {failures} in "
                        f"{_secs(delay)}")
                log.warning("backend: %s", text)
                self._backend_error = AdapterError(BACKEND_ERROR, text, True)
                if self.link_up:  # as Telegram: connected, with the backend's error attached
                    await self._report(State.CONNECTED, max_attempts=self.settings.max_attempts,
                                       error=self._backend_error)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), delay)
                if stop.is_set():
                    return False
        if failures:
            log.info("backend accepted the held message after %d retries", failures)
            self._backend_error = None
            if self.link_up:
                await self._report(State.CONNECTED, max_attempts=self.settings.max_attempts)
        metrics.MESSAGES_IN.labels(platform=PLATFORM).inc()
        if reply:
            await self._reply(message, reply)
        return True

    def _inbound(self, message: ChatMessage) -> InboundMessage:
        return InboundMessage(
            connection=self.settings.connection, platform=PLATFORM, chat_id=message.chat_id,
            sender_id=message.sender_id, sender_name="", text=message.text,
            message_id=message.message_id, time=_rfc3339(message.timestamp))

    async def _reply(self, message: ChatMessage, text: str) -> None:
        assert self._http is not None and self._tokens is not None
        # Same msg_seq on every try: if a try we thought failed did land, the platform answers
        # "deduplicated" and the user still gets exactly one reply.
        body = {"content": text, "msg_type": 0, "msg_id": message.message_id, "msg_seq": 1}
        url = self.settings.api_base + message.reply_path
        attempts = self.settings.reply_attempts
        for attempt in range(1, attempts + 1):
            token: str | None = None
            try:
                token = await self._tokens.get()
                async with self._http.post(url, json=body, headers=_auth(token)) as response:
                    status = response.status
                    data = await response.json(content_type=None) if status >= 400 else None
            except (_Failure, aiohttp.ClientError, TimeoutError, OSError, ValueError) as exc:
                status, data, problem = 0, None, _describe(exc)
            else:
                problem = f"HTTP {status}"
            if 200 <= status < 300:
                metrics.MESSAGES_OUT.labels(platform=PLATFORM).inc()
                return
            code = data.get("code") if isinstance(data, dict) else None
            if code == _DUPLICATE_REPLY:
                metrics.MESSAGES_OUT.labels(platform=PLATFORM).inc()
                return
            if status == 401:
                self._tokens.invalidate(token)
            elif 400 <= status < 500:
                metrics.ERRORS.labels(platform=PLATFORM, code=ErrorCode.QQ_REPLY_REJECTED).inc()
                log.warning("QQ Bot rejected the reply to %s: HTTP %d code %s",
                            message.message_id, status, code)
                return
            metrics.ERRORS.labels(platform=PLATFORM, code=ErrorCode.QQ_REPLY_ERROR).inc()
            log.warning("QQ Bot reply to %s failed (try %d/%d): %s", message.message_id,
                        attempt, attempts, redact(problem))
            if attempt < attempts and status != 401:
                delays = self.settings.backend_delays
                await asyncio.sleep(delays[min(attempt, len(delays)) - 1])
        log.error("QQ Bot reply to %s dropped after %d tries", message.message_id, attempts)

    # ------------------------------------------------------- session across restarts

    async def _restore_session(self) -> None:
        """Take over the session a previous process stored in status.qqSession, if any."""
        if self._store is None:
            return
        try:
            found = await self._store.restore((SESSION_FIELD,), RESTORE_TIMEOUT)
        except Exception as exc:  # never fatal: a new session is the fallback
            log.warning("QQ Bot stored session unreadable: %s", _describe(exc))
            return
        stored = found.get(SESSION_FIELD)
        if stored is None:
            return
        session_id = stored.get("sessionId") if isinstance(stored, dict) else None
        seq = stored.get("seq") if isinstance(stored, dict) else None
        app_id = stored.get("appId") if isinstance(stored, dict) else None
        if (not isinstance(session_id, str) or not session_id
                or isinstance(seq, bool) or not isinstance(seq, int) or seq < 0
                or (app_id is not None and app_id != self.settings.app_id)):
            log.info("QQ Bot stored session unusable (other app or malformed): identifying")
            self._store.set_field(SESSION_FIELD, None)
            return
        self.session_id, self.seq, self._restored = session_id, seq, True
        self._persisted = (session_id, seq)
        log.info("QQ Bot resuming stored session %s from seq %d", session_id, seq)

    def _handled_seq(self) -> int | None:
        """The seq up to which every dispatch of the current session was handled."""
        for item in self._unhandled:  # older sessions' items come first
            if item.session_id == self.session_id and item.seq is not None:
                return item.seq - 1
        return self.seq

    def _persist(self) -> None:
        if self._store is None or self.session_id is None:
            return
        seq = self._handled_seq()
        if seq is None or seq < 0 or len(self.session_id) > _MAX_SESSION_ID:
            return
        key = (self.session_id, min(seq, _MAX_SEQ))
        if key == self._persisted or (self._persisted is not None
                                      and self._persisted[0] == key[0]
                                      and key[1] < self._persisted[1]):
            return  # unchanged, or behind what is stored (a replay of handled dispatches)
        self._persisted = key
        value: dict[str, Any] = {"sessionId": key[0], "seq": key[1],
                                 "updatedAt": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")}
        if len(self.settings.app_id) <= _MAX_APP_ID:  # a value the CRD rejects fails the write
            value["appId"] = self.settings.app_id
        self._store.set_field(SESSION_FIELD, value)

    # -------------------------------------------------------------------- status

    def _report_later(self, state: State, **kwargs: Any) -> asyncio.Task[None]:
        """Queue a status report behind the previous one, so reports land in order."""
        previous = self._report_task

        async def report() -> None:
            if previous is not None:
                with contextlib.suppress(Exception):
                    await previous
            try:
                await self._sink.report(state, **kwargs)
            except Exception:  # the sink retries on its own; never take the adapter down
                log.exception("status report %s failed", state.value)

        self._report_task = asyncio.create_task(report(), name=f"qqbot-report-{state.value}")
        return self._report_task

    async def _report(self, state: State, **kwargs: Any) -> None:
        await self._report_later(state, **kwargs)


class _ProtocolError(Exception):
    pass


@dataclass(eq=False)
class _Item:
    """A message in the inbox, with the dispatch (session, seq) that brought it."""

    message: ChatMessage
    session_id: str | None
    seq: int | None


def _decode(raw: str | bytes) -> dict[str, Any]:
    try:
        payload = json.loads(raw)
    except ValueError:
        raise _ProtocolError("the gateway sent a frame that is not JSON") from None
    if not isinstance(payload, dict):
        raise _ProtocolError("the gateway sent a frame that is not a JSON object")
    return payload


async def _link(source: asyncio.Event, target: asyncio.Event) -> None:
    await source.wait()
    target.set()


async def _until_stopped(work: Awaitable[_Outcome], stop: asyncio.Event) -> _Outcome | None:
    """Run ``work``; None (and ``work`` cancelled, its cleanup done) if ``stop`` is set first."""
    task = asyncio.ensure_future(work)
    stopper = asyncio.create_task(stop.wait())
    try:
        await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
        if task.done():
            return task.result()
        return None
    finally:
        stopper.cancel()
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


def _auth(token: str) -> dict[str, str]:
    return {"Authorization": f"QQBot {token}"}


def _describe(exc: BaseException) -> str:
    return redact(str(exc) or type(exc).__name__)


def _rfc3339(timestamp: str) -> str:
    """The platform's timestamp (ISO 8601 with offset) in UTC; now if it is missing or odd."""
    try:
        return datetime.fromisoformat(timestamp).astimezone(UTC).isoformat().replace(
            "+00:00", "Z")
    except ValueError:
        return datetime.now(UTC).isoformat().replace("+00:00", "Z")


def _secs(seconds: float) -> str:
    return f"{seconds:g}s"
