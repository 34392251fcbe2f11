"""A protocol-faithful fake of the QQ Bot open platform (token, REST and websocket gateway).

One loopback port serves what the real platform spreads over bots.qq.com (access token) and
api.sgroup.qq.com (REST and ``/websocket``), so a single base URL override reaches all of it.

The websocket side uses aiohttp's own websocket support rather than the ``websockets`` server:
REST and gateway then share one listener (the ``/gateway`` URL points at the same port and
``refuse_connections()`` takes both down together), and aiohttp lets us turn off automatic
protocol-level pongs, which a believable dead peer (``stop_acking()``) must not send either.

Run standalone: ``python -m switchboard_testkit.fake_qq --port P --app-id A --client-secret S``
prints ``READY <base_url>`` then ``CONTROL <control_url>`` and serves until SIGTERM/SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import secrets
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any, Literal

from aiohttp import WSMsgType, web

from switchboard_testkit.fake_qq_callback import CallbackPusher
from switchboard_testkit.fake_telegram import FakeServer, serve_cli

# Opcodes of the QQ Bot gateway.
OP_DISPATCH, OP_HEARTBEAT, OP_IDENTIFY, OP_RESUME = 0, 1, 2, 6
OP_RECONNECT, OP_INVALID_SESSION, OP_HELLO, OP_HEARTBEAT_ACK = 7, 9, 10, 11

INTENT_GROUP_AND_C2C = 1 << 25  # C2C_MESSAGE_CREATE, GROUP_AT_MESSAGE_CREATE, ...
DEFAULT_APP_ID = "102000001"
DEFAULT_CLIENT_SECRET = "fakeClientSecret0123456789abcdef"
DEFAULT_USER_OPENID = "7C1A3F0E9B2D4C6E8A0B1C2D3E4F5A6B"
_CN = timezone(timedelta(hours=8))  # the platform stamps events in Beijing time
# Closes after which the session may still be resumed; any other 4xxx drops the session
# (4006/4007/4900-4913 ask for a new Identify, 4914/4915 and friends are fatal anyway).
_RESUMABLE_CLOSES = frozenset({4008, 4009})

CloseWhen = Literal["now", "connect", "identify"]


@dataclass
class SentMessage:
    """One reply posted to /v2/users/{openid}/messages or /v2/groups/{group_openid}/messages."""

    scene: str  # "c2c" or "group"
    target: str  # user openid or group openid
    content: str
    msg_type: int
    msg_id: str | None  # the message replied to (passive reply), if any
    msg_seq: int | None
    id: str
    body: dict[str, Any]

    @property
    def text(self) -> str:
        return self.content


@dataclass
class _Close:
    code: int | None  # None: reset the TCP connection without a close frame
    reason: str = ""


@dataclass(eq=False)
class _Conn:
    id: int
    ws: web.WebSocketResponse
    transport: asyncio.BaseTransport | None
    outbox: asyncio.Queue[dict[str, Any] | _Close] = field(default_factory=asyncio.Queue)
    session: _Session | None = None
    deaf: bool = False  # a dead peer: reads everything, answers nothing
    closing: bool = False
    heartbeat_deadline: float | None = None

    def send(self, payload: dict[str, Any]) -> None:
        # One writer task per connection keeps frames in order and lets sync methods send.
        if not self.closing:
            self.outbox.put_nowait(payload)

    def close(self, code: int | None, reason: str = "") -> None:
        if not self.closing:
            self.closing = True
            self.outbox.put_nowait(_Close(code, reason))


@dataclass(eq=False)
class _Session:
    id: str
    intents: int
    shard: list[int]
    seq: int = 0
    events: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=1000))
    conn: _Conn | None = None
    detached_at: float | None = None
    valid: bool = True


class FakeQQ(FakeServer[SentMessage]):
    """Fake QQ Bot platform for one app (appId + clientSecret)."""

    def __init__(
        self,
        app_id: str = DEFAULT_APP_ID,
        client_secret: str = DEFAULT_CLIENT_SECRET,
        *,
        port: int = 0,
        control_port: int = 0,
        token_ttl: float = 7200.0,
        heartbeat_interval_ms: int = 41250,
        heartbeat_timeout_factor: float | None = 2.0,
        resume_window: float = 300.0,
        replay_limit: int = 1000,
        bot_name: str = "Switchboard Fake Bot",
        dedupe_msg_seq: bool = True,
        node_holder: int | None = None,
    ) -> None:
        super().__init__(port=port, control_port=control_port, node_holder=node_holder)
        self.app_id = app_id
        self.client_secret = client_secret
        self.token_ttl = token_ttl
        self.heartbeat_interval_ms = heartbeat_interval_ms
        # The server closes (4009) a connection that sends no heartbeat for interval x factor;
        # None disables that.
        self.heartbeat_timeout_factor = heartbeat_timeout_factor
        self.resume_window = resume_window
        # Dispatches a session keeps for Resume; older ones are not replayed (the real
        # platform's buffer is bounded too; its size is not documented).
        self.replay_limit = replay_limit
        self.bot_user = {"id": str(6 * 10**18 + secrets.randbelow(10**18)),
                         "username": bot_name, "bot": True, "status": 1}
        # The platform rejects a second reply with the same (msg_id, msg_seq).
        self.dedupe_msg_seq = dedupe_msg_seq
        self._tokens: dict[str, float] = {}  # access token -> expiry (time.monotonic)
        self._current_token: str | None = None
        self._token_failures: deque[int] = deque()
        self._quick_drops: deque[int | None] = deque()
        self._armed_closes: deque[tuple[str, int, str]] = deque()
        self._deaf_new = False
        self._conns: list[_Conn] = []
        self._sessions: list[_Session] = []
        self._next_conn_id = 1
        self._reply_keys: set[tuple[str, str, str, int]] = set()
        self.identify_count = 0
        self.resume_count = 0
        # (session_id, seq) of every Resume received, accepted or not (never the token).
        self.resume_requests: list[tuple[Any, Any]] = []
        self.current_session_id: str | None = None
        # HTTP callbacks (fake_qq_callback.py): once a URL is configured, events go there.
        self.callbacks = CallbackPusher(app_id=app_id, bot_secret=client_secret,
                                        changed=self._bump, node_holder=node_holder)

    @property
    def base_url(self) -> str:
        """API base: token at /app/getAppAccessToken, gateway at /gateway, replies at /v2/..."""
        return self.root_url

    @property
    def websocket_url(self) -> str:
        return f"ws://{self._host}:{self.port}/websocket"

    @property
    def connection_count(self) -> int:
        """Websocket connections accepted so far."""
        return self.calls["websocket"]

    @property
    def live_connections(self) -> int:
        return len(self._conns)

    @property
    def heartbeat_count(self) -> int:
        return self.calls["heartbeat"]

    def session_seq(self, session_id: str | None = None) -> int:
        """The seq of the last dispatch of ``session_id`` (default: the current session)."""
        wanted = session_id or self.current_session_id
        return next((s.seq for s in self._sessions if s.id == wanted), 0)

    @property
    def access_token(self) -> str | None:
        """The newest access token issued (None before the first request or after expiry)."""
        return self._current_token if self._token_valid(self._current_token) else None

    # ------------------------------------------------------------ test-side API

    def inject_message(
        self,
        openid: str = DEFAULT_USER_OPENID,
        content: str = "hello",
        *,
        group_openid: str | None = None,
    ) -> str:
        """Dispatch a user's message; returns its message id (the ``msg_id`` to reply to).

        Without ``group_openid`` it is a C2C_MESSAGE_CREATE from user ``openid``; with it, a
        GROUP_AT_MESSAGE_CREATE from member ``openid`` (content keeps the leading space the
        platform leaves where the @mention was).
        """
        message_id = "ROBOT1.0_" + secrets.token_urlsafe(48)
        timestamp = datetime.now(_CN).isoformat(timespec="seconds")
        if group_openid is None:
            event = "C2C_MESSAGE_CREATE"
            d: dict[str, Any] = {
                "author": {"id": openid, "user_openid": openid},
                "content": content,
                "id": message_id,
                "timestamp": timestamp,
            }
        else:
            event = "GROUP_AT_MESSAGE_CREATE"
            d = {
                "author": {"id": openid, "member_openid": openid},
                "content": content if content.startswith(" ") else " " + content,
                "group_id": group_openid,
                "group_openid": group_openid,
                "id": message_id,
                "timestamp": timestamp,
            }
        self.inject_event(event, d, intent=INTENT_GROUP_AND_C2C)
        return message_id

    def inject_event(self, event_type: str, d: Any, intent: int | None = None) -> int:
        """Dispatch any event to every session subscribed to ``intent`` (None: all).

        Sessions without a live connection buffer it for Resume. Returns how many sessions got it.
        """
        if self.callbacks.active:
            self.callbacks.push({"op": OP_DISPATCH, "id": f"{event_type}:{uuid.uuid4()}",
                                 "t": event_type, "d": d})
            self._bump()
            return 1
        delivered = 0
        for session in self._resumable_sessions():
            if intent is not None and not session.intents & intent:
                continue  # the platform only pushes what the Identify asked for
            session.seq += 1
            payload = {"op": OP_DISPATCH, "s": session.seq, "t": event_type,
                       "id": f"{event_type}:{uuid.uuid4()}", "d": d}
            session.events.append(payload)
            if session.conn is not None and not session.conn.deaf:
                session.conn.send(payload)
            delivered += 1
        self._bump()
        return delivered

    def close_next(self, code: int, reason: str = "", on: CloseWhen = "now") -> int:
        """Close with a close ``code`` (4009 resume, 4006 re-identify, 4914 fatal, ...).

        ``on="now"`` closes every open gateway connection, or the next one if none is open;
        ``"connect"`` closes the next connection right after Hello; ``"identify"`` answers the
        next Identify or Resume with the close instead of READY/RESUMED. Returns how many
        connections were closed right away.
        """
        if on not in ("now", "connect", "identify"):
            raise ValueError("on must be now, connect or identify")
        if on == "now":
            live = [c for c in self._conns if not c.closing]
            for conn in live:
                self._close(conn, code, reason)
            if live:
                return len(live)
            on = "connect"
        self._armed_closes.append((on, code, reason))
        return 0

    def send_reconnect(self) -> int:
        """Op 7 Reconnect to every open connection; returns how many got it."""
        return self._broadcast({"op": OP_RECONNECT})

    def send_invalid_session(self, resumable: bool = False) -> int:
        """Op 9 Invalid Session (``d`` = resumable); not resumable also forgets the session."""
        if not resumable:
            for conn in self._conns:
                if conn.session is not None:
                    conn.session.valid = False
        return self._broadcast({"op": OP_INVALID_SESSION, "d": resumable})

    def stop_acking(self, include_new: bool = False) -> None:
        """Open connections go silent: no heartbeat ACKs, pongs, dispatches or close replies,
        while the socket stays open (a dead peer). ``include_new``: later connections too
        (not even Hello). Dispatches still reach the sessions' buffers for a later Resume."""
        for conn in self._conns:
            conn.deaf = True
        self._deaf_new = include_new
        self._bump()

    def resume_acking(self) -> None:
        """Undo stop_acking() for open and future connections (silenced dispatches stay lost
        on those connections, a Resume replays them)."""
        self._deaf_new = False
        for conn in self._conns:
            if conn.deaf:
                conn.deaf = False
                self._arm_heartbeat_watchdog(conn)  # silence was ours, not the client's
        self._bump()

    def fail_token_next(self, n: int = 1, status: int = 500) -> None:
        """The next ``n`` getAppAccessToken calls fail with ``status`` and the platform's
        ``{"code":100002,"message":"internal err"}`` body (status 200 is allowed: it happens)."""
        if n < 1:
            raise ValueError("n must be at least 1")
        self._token_failures.extend([status] * n)

    def drop_quickly(self, n: int = 1, code: int | None = None) -> None:
        """The next ``n`` connections get Hello and are dropped at once: with close ``code``,
        or by a TCP reset (the client sees 1006) when ``code`` is None."""
        if n < 1:
            raise ValueError("n must be at least 1")
        self._quick_drops.extend([code] * n)

    def expire_tokens(self) -> None:
        """Every access token issued so far expires now (REST answers 401, Identify 4004)."""
        self._tokens.clear()
        self._current_token = None
        self._bump()

    def clear_faults(self) -> None:
        self._token_failures.clear()
        self._quick_drops.clear()
        self._armed_closes.clear()
        self.resume_acking()

    # ------------------------------------------------------------------ serving

    def _add_routes(self, app: web.Application) -> None:
        app.router.add_post("/app/getAppAccessToken", self._handle_token)
        app.router.add_get("/gateway", self._handle_gateway)
        app.router.add_get("/gateway/bot", self._handle_gateway)
        app.router.add_get("/users/@me", self._handle_me)
        app.router.add_get("/websocket", self._handle_websocket)
        app.router.add_post("/v2/users/{target}/messages", self._handle_c2c_reply)
        app.router.add_post("/v2/groups/{target}/messages", self._handle_group_reply)

    def _control_actions(self) -> dict[str, Callable[..., Any]]:
        return {
            "inject_message": self.inject_message,
            "inject_event": self.inject_event,
            "close_next": self.close_next,
            "send_reconnect": self.send_reconnect,
            "send_invalid_session": self.send_invalid_session,
            "stop_acking": self.stop_acking,
            "resume_acking": self.resume_acking,
            "fail_token_next": self.fail_token_next,
            "drop_quickly": self.drop_quickly,
            "expire_tokens": self.expire_tokens,
            "clear_faults": self.clear_faults,
            "route_callback": self.callbacks.route,
            "configure_callback": self.callbacks.configure,
            "post_callback": self.callbacks.post,
        }

    def _state(self) -> dict[str, Any]:
        return {
            **super()._state(),
            "connection_count": self.connection_count,
            "live_connections": self.live_connections,
            "identify_count": self.identify_count,
            "resume_count": self.resume_count,
            "heartbeat_count": self.heartbeat_count,
            "current_session_id": self.current_session_id,
            "sessions": [
                {"id": s.id, "seq": s.seq, "attached": s.conn is not None, "valid": s.valid}
                for s in self._sessions
            ],
            "sent": len(self.sent_messages),
            "callback": {"url": self.callbacks.url, "validation": self.callbacks.validation,
                         "queued": len(self.callbacks.queue),
                         "pushes": list(self.callbacks.pushes)},
        }

    async def _before_stop(self) -> None:
        await self.callbacks.stop()
        for conn in list(self._conns):
            if conn.deaf and conn.transport is not None:
                conn.transport.abort()  # a dead peer would never finish a close handshake
            else:
                self._close(conn, 1001, "server shutting down")

    # ------------------------------------------------------------------- REST

    async def _handle_token(self, request: web.Request) -> web.Response:
        self.calls["getAppAccessToken"] += 1
        self._bump()
        if self._token_failures:
            status = self._token_failures.popleft()
            return _json({"code": 100002, "message": "internal err"}, status=status)
        try:
            # The real endpoint only understands a JSON body; anything else reads as a bad appid.
            body = await request.json()
        except ValueError:
            body = None
        if not isinstance(body, dict) or body.get("appId") != self.app_id:
            # Credential errors come back with HTTP 200 and no access_token.
            return _json({"code": 100007, "message": "appid invalid"})
        if body.get("clientSecret") != self.client_secret:
            return _json({"code": 100016, "message": "invalid appsecret"})
        token, remaining = self._issue_token()
        return _json(
            {"access_token": token, "expires_in": str(max(1, round(remaining)))}
        )

    async def _handle_gateway(self, request: web.Request) -> web.Response:
        self.calls["gateway"] += 1
        self._bump()
        if not self._authorized(request):
            return self._unauthorized()
        body: dict[str, Any] = {"url": self.websocket_url}
        if request.path.endswith("/bot"):
            body |= {"shards": 1, "session_start_limit": {
                "total": 1000, "remaining": 999, "reset_after": 86_400_000, "max_concurrency": 1}}
        return _json(body)

    async def _handle_me(self, request: web.Request) -> web.Response:
        self.calls["me"] += 1
        if not self._authorized(request):
            return self._unauthorized()
        return _json({**self.bot_user, "avatar": "", "union_openid": "",
                                  "union_user_account": ""})

    async def _handle_c2c_reply(self, request: web.Request) -> web.Response:
        return await self._reply(request, "c2c")

    async def _handle_group_reply(self, request: web.Request) -> web.Response:
        return await self._reply(request, "group")

    async def _reply(self, request: web.Request, scene: str) -> web.Response:
        self.calls[f"{scene}_message"] += 1
        self._bump()
        if not self._authorized(request):
            return self._unauthorized()
        try:
            body = await request.json()
        except ValueError:
            body = None
        if not isinstance(body, dict):
            return _api_error(400, 40034001, "invalid request body")
        target = request.match_info["target"]
        msg_id = body.get("msg_id")
        msg_seq = body.get("msg_seq")
        try:
            msg_type = int(body.get("msg_type", 0))
        except (TypeError, ValueError):
            return _api_error(400, 40034001, "invalid msg_type")
        if self.dedupe_msg_seq and msg_id:
            key = (scene, target, str(msg_id), int(msg_seq or 1))
            if key in self._reply_keys:
                # The platform's own wording, fullwidth comma included.
                return _api_error(400, 40054005, "消息被去重\uff0c请检查请求msgseq")
            self._reply_keys.add(key)
        sent = SentMessage(scene, target, str(body.get("content", "")), msg_type,
                           str(msg_id) if msg_id else None,
                           int(msg_seq) if msg_seq is not None else None,
                           str(uuid.uuid4()), body)
        self.sent_messages.append(sent)
        self._bump()
        return _json(
            {"id": sent.id, "timestamp": datetime.now(_CN).isoformat(timespec="seconds")}
        )

    def _issue_token(self) -> tuple[str, float]:
        """Same token until close to expiry (like the platform), then a new one; the old one
        stays valid until its own expiry."""
        now = time.monotonic()
        window = min(60.0, self.token_ttl / 2)
        current = self._current_token
        if current is not None and self._tokens.get(current, 0) - now > window:
            return current, self._tokens[current] - now
        token = secrets.token_urlsafe(32)
        self._tokens[token] = now + self.token_ttl
        self._current_token = token
        return token, self.token_ttl

    def _token_valid(self, token: str | None) -> bool:
        if token is None:
            return False
        expiry = self._tokens.get(token)
        return expiry is not None and expiry > time.monotonic()

    def _authorized(self, request: web.Request) -> bool:
        return self._qqbot_token_valid(request.headers.get("Authorization"))

    def _qqbot_token_valid(self, value: Any) -> bool:
        return (
            isinstance(value, str)
            and value.startswith("QQBot ")
            and self._token_valid(value.removeprefix("QQBot "))
        )

    @staticmethod
    def _unauthorized() -> web.Response:
        return _api_error(401, 11244, "token not exist or expire")

    # -------------------------------------------------------------- websocket

    async def _handle_websocket(self, request: web.Request) -> web.StreamResponse:
        self.calls["websocket"] += 1
        # autoping off: pongs are ours to send (or withhold); autoclose off: same for close replies.
        ws = web.WebSocketResponse(autoping=False, autoclose=False, timeout=2.0)
        await ws.prepare(request)
        conn = _Conn(self._next_conn_id, ws, request.transport, deaf=self._deaf_new)
        self._next_conn_id += 1
        self._conns.append(conn)
        sender = asyncio.create_task(self._sender(conn))
        self._bump()
        try:
            if not conn.deaf:
                conn.send({"op": OP_HELLO, "d": {"heartbeat_interval": self.heartbeat_interval_ms}})
                self._arm_heartbeat_watchdog(conn)
            if self._quick_drops:
                self._close(conn, self._quick_drops.popleft())
            elif (armed := self._take_armed("connect")) is not None:
                self._close(conn, armed[0], armed[1])
            await self._read_loop(conn)
        finally:
            self._conns.remove(conn)
            self._detach(conn)
            if not sender.done() and conn.closing:
                # Let a close handshake we started finish before aiohttp ends the response.
                await asyncio.wait({sender}, timeout=3.0)
            sender.cancel()
            self._bump()
        return ws

    async def _read_loop(self, conn: _Conn) -> None:
        loop = asyncio.get_running_loop()
        while True:
            timeout = None
            if conn.heartbeat_deadline is not None and not conn.deaf and not conn.closing:
                timeout = max(conn.heartbeat_deadline - loop.time(), 0.001)
            try:
                msg = await conn.ws.receive(timeout=timeout)
            except TimeoutError:
                if conn.heartbeat_deadline is not None and loop.time() >= conn.heartbeat_deadline:
                    conn.heartbeat_deadline = None
                    self._close(conn, 4009, "heartbeat timeout")
                continue
            if msg.type is WSMsgType.TEXT:
                self._on_text(conn, msg.data)
            elif msg.type is WSMsgType.PING:
                if not conn.deaf:
                    await conn.ws.pong(msg.data)
            elif msg.type is WSMsgType.PONG:
                continue
            elif msg.type is WSMsgType.CLOSE:
                if conn.deaf:
                    # Never answer: the client must give up on its own (TCP loss cancels us).
                    await loop.create_future()
                conn.closing = True
                code = msg.data if isinstance(msg.data, int) else 1000
                if not (1000 <= code < 5000) or code in (1005, 1006):
                    code = 1000
                await conn.ws.close(code=code)  # echo, as RFC 6455 wants
                return
            else:  # CLOSING (we closed), CLOSED, ERROR
                return

    async def _sender(self, conn: _Conn) -> None:
        try:
            while True:
                item = await conn.outbox.get()
                if isinstance(item, _Close):
                    if item.code is None:
                        if conn.transport is not None:
                            conn.transport.abort()
                    else:
                        await conn.ws.close(code=item.code, message=item.reason.encode())
                    return
                await conn.ws.send_str(json.dumps(item, ensure_ascii=False))
        except (ConnectionError, RuntimeError):
            return  # the peer is gone; the read loop notices too

    def _on_text(self, conn: _Conn, data: str) -> None:
        try:
            payload = json.loads(data)
        except ValueError:
            payload = None
        op = payload.get("op") if isinstance(payload, dict) else None
        d = payload.get("d") if isinstance(payload, dict) else None
        name = {OP_HEARTBEAT: "heartbeat", OP_IDENTIFY: "identify", OP_RESUME: "resume"}.get(op)
        if name is not None:
            self.calls[name] += 1  # counted even when deaf: it did arrive on the wire
        if conn.deaf:
            self._bump()
            return
        if not isinstance(payload, dict):
            self._close(conn, 4002, "invalid payload")
            return
        if op == OP_HEARTBEAT:
            self._arm_heartbeat_watchdog(conn)
            conn.send({"op": OP_HEARTBEAT_ACK})
        elif op == OP_IDENTIFY:
            self._identify(conn, d)
        elif op == OP_RESUME:
            self._resume(conn, d)
        else:
            self._close(conn, 4001, "invalid opcode")
        self._bump()

    def _identify(self, conn: _Conn, d: Any) -> None:
        if not isinstance(d, dict):
            self._close(conn, 4002, "invalid payload")
            return
        if not self._qqbot_token_valid(d.get("token")):
            self._close(conn, 4004, "invalid token")
            return
        intents = d.get("intents")
        if not isinstance(intents, int) or isinstance(intents, bool) or intents < 0:
            self._close(conn, 4013, "invalid intent")
            return
        shard = d.get("shard", [0, 1])
        if not (isinstance(shard, list) and len(shard) == 2
                and all(isinstance(x, int) for x in shard) and 0 <= shard[0] < shard[1]):
            self._close(conn, 4010, "invalid shard")
            return
        if (armed := self._take_armed("identify")) is not None:
            self._close(conn, armed[0], armed[1])
            return
        self._detach(conn)
        session = _Session(str(uuid.uuid4()), intents, shard,
                           events=deque(maxlen=self.replay_limit))
        self._sessions.append(session)
        self._attach(conn, session)
        session.seq += 1
        conn.send({"op": OP_DISPATCH, "s": session.seq, "t": "READY", "d": {
            "version": 1, "session_id": session.id, "user": self.bot_user, "shard": shard}})
        self.identify_count += 1
        self.current_session_id = session.id

    def _resume(self, conn: _Conn, d: Any) -> None:
        if not isinstance(d, dict):
            self._close(conn, 4002, "invalid payload")
            return
        self.resume_requests.append((d.get("session_id"), d.get("seq")))
        if not self._qqbot_token_valid(d.get("token")):
            self._close(conn, 4004, "invalid token")
            return
        if (armed := self._take_armed("identify")) is not None:
            self._close(conn, armed[0], armed[1])
            return
        session = next(
            (s for s in self._resumable_sessions() if s.id == d.get("session_id")), None
        )
        if session is None:
            self._close(conn, 4006, "invalid session id, cannot resume")
            return
        seq = d.get("seq")
        if seq is None:
            seq = 0
        if not isinstance(seq, int) or isinstance(seq, bool) or not 0 <= seq <= session.seq:
            self._close(conn, 4007, "invalid seq")
            return
        old = session.conn
        if old is not None and old is not conn:
            old.session = None
            self._close(old, 4009, "session resumed elsewhere")
        self._detach(conn)
        self._attach(conn, session)
        # The platform replays what was missed first, then says RESUMED.
        for event in session.events:
            if event["s"] > seq:
                conn.send(event)
        session.seq += 1
        conn.send({"op": OP_DISPATCH, "s": session.seq, "t": "RESUMED", "d": ""})
        self.resume_count += 1
        self.current_session_id = session.id

    # ---------------------------------------------------------------- helpers

    def _close(self, conn: _Conn, code: int | None, reason: str = "") -> None:
        if code is not None and code >= 4000 and code not in _RESUMABLE_CLOSES:
            if conn.session is not None:
                conn.session.valid = False
        conn.close(code, reason)
        self._bump()

    def _broadcast(self, payload: dict[str, Any]) -> int:
        live = [c for c in self._conns if not c.closing and not c.deaf]
        for conn in live:
            conn.send(payload)
        self._bump()
        return len(live)

    def _take_armed(self, when: str) -> tuple[int, str] | None:
        for item in self._armed_closes:
            if item[0] == when:
                self._armed_closes.remove(item)
                return item[1], item[2]
        return None

    def _arm_heartbeat_watchdog(self, conn: _Conn) -> None:
        if self.heartbeat_timeout_factor is None:
            return
        timeout = self.heartbeat_interval_ms / 1000 * self.heartbeat_timeout_factor
        conn.heartbeat_deadline = asyncio.get_running_loop().time() + timeout

    def _attach(self, conn: _Conn, session: _Session) -> None:
        conn.session = session
        session.conn = conn
        session.detached_at = None

    def _detach(self, conn: _Conn) -> None:
        session = conn.session
        if session is not None and session.conn is conn:
            session.conn = None
            session.detached_at = time.monotonic()
        conn.session = None

    def _resumable_sessions(self) -> list[_Session]:
        """Sessions still worth buffering for; forgets the rest."""
        now = time.monotonic()
        self._sessions = [
            s for s in self._sessions
            if s.valid and (s.detached_at is None or now - s.detached_at <= self.resume_window)
        ]
        return list(self._sessions)


def _json(data: Any, *, status: int = 200) -> web.Response:
    """JSON as the QQ OpenAPI sends it: Content-Type exactly ``application/json``. qq-botpy
    parses a body as JSON only then; aiohttp's json_response adds ``; charset=utf-8``."""
    return web.Response(body=json.dumps(data).encode(), status=status,
                        content_type="application/json")


def _api_error(status: int, code: int, message: str) -> web.Response:
    """The OpenAPI error shape: message, code, err_code, trace_id."""
    return _json(
        {"message": message, "code": code, "err_code": code, "trace_id": uuid.uuid4().hex},
        status=status,
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Fake QQ Bot platform on 127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--control-port", type=int, default=0)
    parser.add_argument("--app-id", default=DEFAULT_APP_ID)
    parser.add_argument("--client-secret", default=DEFAULT_CLIENT_SECRET)
    parser.add_argument("--token-ttl", type=float, default=7200.0, help="access token seconds")
    parser.add_argument("--heartbeat-interval-ms", type=int, default=41250)
    parser.add_argument("--node-holder", type=int, help="serve inside this real node")
    args = parser.parse_args(argv)
    fake = FakeQQ(
        args.app_id, args.client_secret, port=args.port, control_port=args.control_port,
        token_ttl=args.token_ttl, heartbeat_interval_ms=args.heartbeat_interval_ms,
        node_holder=args.node_holder,
    )
    serve_cli(fake)


if __name__ == "__main__":
    main()
