"""A protocol-faithful fake of the Telegram Bot API, for tests and demos.

Real clients (python-telegram-bot with ``base_url=fake.base_url``) talk to it exactly as to
api.telegram.org: ``POST {base_url}{token}/{method}``, answers ``{"ok": ...}`` with the real HTTP
status, because PTB maps errors by status (401/404 -> InvalidToken, 409 -> Conflict,
``parameters.retry_after`` -> RetryAfter, anything else non-2xx -> NetworkError).

This module also holds :class:`FakeServer`, the plumbing shared with ``fake_qq`` (listener that can
be closed and reopened on the same port, an always-up control listener, the ``/_fake/...``
remote-control API, wait helpers and the CLI runner).

Run standalone: ``python -m switchboard_testkit.fake_telegram --port P --token T`` prints
``READY <base_url>`` then ``CONTROL <control_url>`` and serves until SIGTERM/SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import inspect
import itertools
import json
import math
import re
import signal
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any, Generic, Self, TypeVar

from aiohttp import web

from switchboard_testkit import netns
from switchboard_testkit.fake_telegram_webhook import WebhookPusher, WebhookRefused

LOOPBACK = "127.0.0.1"  # the fakes never listen anywhere else

SentT = TypeVar("SentT")


def jsonable(value: Any) -> Any:
    """Turn dataclasses, counters and tuples into plain JSON values for the control API."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | deque):
        return [jsonable(v) for v in value]
    return value


class FakeServer(Generic[SentT]):
    """Shared plumbing of the fakes.

    Two listeners serve the same aiohttp app: the main one (``port``), which
    ``refuse_connections()`` really closes so clients get ECONNREFUSED, and a control one
    (``control_url``) that stays up so another process can still say ``accept_connections``.
    """

    def __init__(self, *, port: int = 0, control_port: int = 0,
                 node_holder: int | None = None) -> None:
        self._port = port
        # On the real node, pods reach the platform at the node address inside its network
        # namespace (netns.py); the control listener stays on host loopback for the tests.
        self._node_holder = node_holder
        self._host = netns.NODE_IP if node_holder else LOOPBACK
        self._control_port = control_port
        self._runner: web.AppRunner | None = None
        self._listener: asyncio.Server | None = None
        self._control_listener: asyncio.Server | None = None
        self._reaccept_task: asyncio.Task[None] | None = None
        self._change = asyncio.Event()  # set on every change, for wait_until
        self._wakeup = asyncio.Event()  # set on changes long-lived handlers must react to
        self._stopping = False
        self.sent_messages: list[SentT] = []
        self.calls: Counter[str] = Counter()

    # ---------------------------------------------------------------- lifecycle

    async def start(self) -> Self:
        app = web.Application()
        self._add_routes(app)
        app.router.add_route("*", "/_fake/{action}", self._handle_control)
        # handler_cancellation: a client that hangs up cancels its long poll / stalled request,
        # so an abandoned request can never answer later and disturb the next one.
        self._runner = web.AppRunner(
            app, access_log=None, handler_cancellation=True, shutdown_timeout=2.0
        )
        await self._runner.setup()
        await self._listen()
        loop = asyncio.get_running_loop()
        assert self._runner.server is not None
        self._control_listener = await loop.create_server(
            self._runner.server, LOOPBACK, self._control_port, reuse_address=True
        )
        self._control_port = self._control_listener.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        if self._runner is None:
            return
        self._stopping = True
        self._bump()
        if self._reaccept_task is not None:
            self._reaccept_task.cancel()
        await self._before_stop()
        for listener in (self._listener, self._control_listener):
            if listener is not None:
                listener.close()
        self._listener = self._control_listener = None
        await self._runner.cleanup()
        self._runner = None

    async def __aenter__(self) -> Self:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    @property
    def port(self) -> int:
        return self._port

    @property
    def root_url(self) -> str:
        return f"http://{self._host}:{self._port}"

    @property
    def control_url(self) -> str:
        """Base of the remote-control API on the listener that refuse_connections() spares."""
        return f"http://{LOOPBACK}:{self._control_port}/_fake"

    @property
    def base_url(self) -> str:
        raise NotImplementedError

    @property
    def accepting(self) -> bool:
        return self._listener is not None

    # ------------------------------------------------------------ network faults

    async def refuse_connections(
        self, *, drop_existing: bool = True, duration: float | None = None
    ) -> None:
        """Close the main listening socket: new connections get ECONNREFUSED.

        ``drop_existing`` also resets open connections (in-flight polls, websockets), as a
        crashed server would. ``duration`` re-opens the same port automatically afterwards.
        """
        await self._refuse(drop_existing=drop_existing, duration=duration, spare=None)

    async def accept_connections(self) -> None:
        """Listen again on the same port."""
        if self._reaccept_task is not None and self._reaccept_task is not asyncio.current_task():
            self._reaccept_task.cancel()
        self._reaccept_task = None
        if self._listener is None and not self._stopping:
            await self._listen()
            self._bump()

    async def _refuse(
        self, *, drop_existing: bool, duration: float | None, spare: asyncio.BaseTransport | None
    ) -> None:
        if self._listener is not None:
            # No wait_closed(): from Python 3.12 it also waits for every open connection.
            self._listener.close()
            self._listener = None
        if drop_existing:
            self._drop_connections(spare)
        if self._reaccept_task is not None:
            self._reaccept_task.cancel()
            self._reaccept_task = None
        if duration is not None:
            self._reaccept_task = asyncio.create_task(self._reaccept_after(duration))
        self._bump()

    async def _reaccept_after(self, delay: float) -> None:
        await asyncio.sleep(delay)
        await self.accept_connections()

    async def _listen(self) -> None:
        assert self._runner is not None and self._runner.server is not None
        loop = asyncio.get_running_loop()
        # reuse_address lets us re-bind the same port while old sockets sit in TIME_WAIT.
        if self._node_holder is None:
            self._listener = await loop.create_server(
                self._runner.server, LOOPBACK, self._port, reuse_address=True
            )
        else:
            self._listener = await loop.create_server(
                self._runner.server, sock=netns.listen(self._node_holder, self._host, self._port)
            )
        self._port = self._listener.sockets[0].getsockname()[1]

    def _drop_connections(self, spare: asyncio.BaseTransport | None) -> None:
        """Reset (RST, no close frame) every open connection on the main port."""
        if self._runner is None or self._runner.server is None:
            return
        for handler in self._runner.server.connections:
            transport = handler.transport
            if transport is None or transport is spare:
                continue
            sockname = transport.get_extra_info("sockname")
            if sockname and sockname[1] == self._port:
                transport.abort()

    # ------------------------------------------------------------------- waiting

    def _bump(self) -> None:
        """Wake everything waiting for a state change: long-lived handlers and wait_until."""
        self._wakeup.set()
        self._wakeup = asyncio.Event()
        self._notify()

    def _notify(self) -> None:
        """Wake only wait_until callers. Handlers use this to announce that they parked:
        waking the other parked handlers too would have them wake each other forever."""
        self._change.set()
        self._change = asyncio.Event()

    # A timeout argument (not asyncio.timeout around the call) keeps the test-side API short.
    async def wait_until(
        self,
        predicate: Callable[[], bool],
        timeout: float = 5.0,  # noqa: ASYNC109
        what: str = "condition",
    ) -> None:
        """Wait until ``predicate()`` is true; it is re-checked on every state change."""
        try:
            async with asyncio.timeout(timeout):
                while True:
                    change = self._change
                    if predicate():
                        return
                    await change.wait()
        except TimeoutError:
            raise TimeoutError(f"{what} not met within {timeout}s") from None

    async def wait_for_sent(
        self,
        predicate: Callable[[SentT], bool] | None = None,
        timeout: float = 5.0,  # noqa: ASYNC109
    ) -> SentT:
        """Return the first sent message (already sent or still to come) matching ``predicate``."""
        found: list[SentT] = []

        def match() -> bool:
            for message in self.sent_messages:
                if predicate is None or predicate(message):
                    found.append(message)
                    return True
            return False

        await self.wait_until(match, timeout, what="sent message matching predicate")
        return found[0]

    # ------------------------------------------------------------ remote control

    async def _handle_control(self, request: web.Request) -> web.StreamResponse:
        action = request.match_info["action"]
        if request.method == "GET":
            views: dict[str, Callable[[], Any]] = {
                "sent": lambda: self.sent_messages,
                "calls": self._calls_view,
                "state": self._state,
            }
            if action not in views:
                return web.json_response({"ok": False, "error": f"no GET {action}"}, status=404)
            return web.json_response({"ok": True, "result": jsonable(views[action]())})
        if request.method != "POST":
            return web.json_response({"ok": False, "error": "use GET or POST"}, status=405)
        try:
            body = await request.json() if request.can_read_body else {}
        except ValueError:
            return web.json_response({"ok": False, "error": "body must be JSON"}, status=400)
        if not isinstance(body, dict):
            return web.json_response({"ok": False, "error": "body must be an object"}, status=400)
        if action == "refuse_connections":
            # Spare the connection carrying this request so the caller gets its answer, then
            # close it (force_close) so it is not reused as if the port were still open.
            try:
                await self._refuse(
                    drop_existing=bool(body.get("drop_existing", True)),
                    duration=body.get("duration"),
                    spare=request.transport,
                )
            except (TypeError, ValueError) as exc:
                return web.json_response({"ok": False, "error": str(exc)}, status=400)
            response = web.json_response({"ok": True, "result": None})
            response.force_close()
            return response
        if action == "wait_for_sent":
            return await self._remote_wait_for_sent(body)
        actions = self._control_actions()
        actions["refuse_connections"] = self.refuse_connections
        actions["accept_connections"] = self.accept_connections
        function = actions.get(action)
        if function is None:
            return web.json_response({"ok": False, "error": f"no action {action}"}, status=404)
        try:
            result = function(**body)
            if inspect.isawaitable(result):
                result = await result
        except (TypeError, ValueError) as exc:
            return web.json_response({"ok": False, "error": str(exc)}, status=400)
        return web.json_response({"ok": True, "result": jsonable(result)})

    async def _remote_wait_for_sent(self, body: dict[str, Any]) -> web.StreamResponse:
        """``{"timeout": s, "match": {field: value}, "contains": "text"}`` -> message or 408."""
        match = body.get("match") or {}
        contains = body.get("contains")

        def predicate(message: SentT) -> bool:
            fields = jsonable(message)
            if any(fields.get(k) != v for k, v in match.items()):
                return False
            return contains is None or contains in str(getattr(message, "text", ""))

        try:
            message = await self.wait_for_sent(predicate, float(body.get("timeout", 5.0)))
        except TimeoutError as exc:
            return web.json_response({"ok": False, "error": str(exc)}, status=408)
        return web.json_response({"ok": True, "result": jsonable(message)})

    def _calls_view(self) -> Any:
        return {"counts": dict(self.calls)}

    # ----------------------------------------------------------- subclass hooks

    def _add_routes(self, app: web.Application) -> None:
        raise NotImplementedError

    def _control_actions(self) -> dict[str, Callable[..., Any]]:
        return {}

    def _state(self) -> dict[str, Any]:
        return {"accepting": self.accepting, "calls": dict(self.calls)}

    async def _before_stop(self) -> None:
        """Let long-lived handlers finish before the runner waits for them."""


async def run_until_signalled(fake: FakeServer[Any]) -> None:
    """CLI body shared by the fakes: start, announce, serve until SIGTERM/SIGINT."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await fake.start()
    try:
        # The first line is the contract (`READY <base_url>`); readers may ignore the second.
        print(f"READY {fake.base_url}", flush=True)
        print(f"CONTROL {fake.control_url}", flush=True)
        await stop.wait()
    finally:
        await fake.stop()


def serve_cli(fake: FakeServer[Any]) -> None:
    """Run ``fake`` as a process; a second Ctrl-C racing the shutdown is not an error."""
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(run_until_signalled(fake))


# =============================================================================== Telegram

DEFAULT_TOKEN = "123456789:AAFakeTokenForSwitchboardTests0123"
# The gateway tests' token: its secret part is what they check never leaks.
GATEWAY_TEST_TOKEN = "777000111:AAsecretTOKENofTHEgatewayTESTS_abcdef"
# Telegram answers 404 (not 401) when the token does not even look like `<bot id>:<secret>`.
_TOKEN_SHAPE = re.compile(r"^\d+:[A-Za-z0-9_-]+$")
CONFLICT_DESCRIPTION = (
    "Conflict: terminated by other getUpdates request; "
    "make sure that only one bot instance is running"
)
WEBHOOK_CONFLICT_DESCRIPTION = (
    "Conflict: can't use getUpdates method while webhook is active; "
    "use deleteWebhook to delete the webhook first"
)
# What Telegram's nginx front returns when the Bot API backend is away.
_NGINX_ERROR_PAGE = (
    "<html>\r\n<head><title>{code} {phrase}</title></head>\r\n<body>\r\n"
    "<center><h1>{code} {phrase}</h1></center>\r\n<hr><center>nginx/1.18.0</center>\r\n"
    "</body>\r\n</html>\r\n"
)
_MAX_TEXT = 4096


@dataclass
class SentMessage:
    """One successful sendMessage call."""

    chat_id: int
    text: str
    message_id: int
    params: dict[str, Any]
    message: dict[str, Any]


@dataclass
class CallRecord:
    """One Bot API request as the fake saw it (status is what it answered)."""

    method: str
    status: int
    params: dict[str, Any]
    at: float = field(default_factory=time.monotonic)


@dataclass
class _Fault:
    kind: str  # fail | rate_limit | conflict | stall
    remaining: int
    method: str | None  # lower-case method name, None = any
    status: int = 502
    body: str = "auto"
    description: str | None = None
    retry_after: int = 0
    seconds: float = 0.0


class _BadRequest(Exception):
    """Raised by parameter parsing; answered as 400 Bad Request like Telegram does."""


class _Refused(Exception):
    """A method call Telegram refuses: HTTP status, description and ResponseParameters."""

    def __init__(self, status: int, description: str,
                 parameters: dict[str, Any] | None = None) -> None:
        super().__init__(description)
        self.status, self.description, self.parameters = status, description, parameters


class FakeTelegram(FakeServer[SentMessage]):
    """Fake Bot API server holding one valid bot token.

    Implemented methods: getMe, setWebhook, deleteWebhook, getWebhookInfo, getUpdates,
    sendMessage, sendChatAction (webhook delivery: fake_telegram_webhook.py). Anything else
    answers 404 "Not Found", as Telegram does for unknown methods.
    """

    def __init__(
        self,
        token: str = DEFAULT_TOKEN,
        *,
        port: int = 0,
        control_port: int = 0,
        bot_username: str = "switchboard_fake_bot",
        bot_first_name: str = "Switchboard Fake Bot",
        first_update_id: int = 100_000_001,
        terminate_concurrent_polls: bool = True,
        node_holder: int | None = None,
        allow_http_webhooks: bool = False,
    ) -> None:
        super().__init__(port=port, control_port=control_port, node_holder=node_holder)
        self._token: str | None = token
        self.bot_username = bot_username
        self.bot_first_name = bot_first_name
        # Telegram lets a newer getUpdates terminate an older in-flight one with 409; that is
        # how two instances sharing a token notice each other.
        self.terminate_concurrent_polls = terminate_concurrent_polls
        self._bot_id = int(token.split(":", 1)[0]) if _TOKEN_SHAPE.match(token) else 123456789
        self._next_update_id = first_update_id
        self._updates: list[dict[str, Any]] = []
        self._chats: dict[int, dict[str, Any]] = {}
        # Groups upgraded to supergroups (old id -> new id), and chats that refuse the bot.
        self._migrated: dict[int, int] = {}
        self._refusing: dict[int, tuple[int, str]] = {}
        # chat id -> monotonic time its flood control ends (sendMessage answers 429 until then)
        self._flooded: dict[int, float] = {}
        self._next_message_id: Counter[int] = Counter()
        self._faults: list[_Fault] = []
        self._poll_generation = 0
        self._parked_polls = 0
        self.allowed_updates: list[str] | None = None
        self.call_log: deque[CallRecord] = deque(maxlen=10_000)
        # (start, end, peer) of every getUpdates, ended by an answer or by the client hanging
        # up: two pollers overlap when one starts before the other ended.
        self.poll_spans: deque[tuple[float, float, str]] = deque(maxlen=10_000)
        # Webhook delivery (fake_telegram_webhook.py).
        self.webhook = WebhookPusher(pending=lambda: self._updates, confirm=self._confirm_one,
                                     changed=self._bump, node_holder=node_holder,
                                     allow_http=allow_http_webhooks)
        self._methods: dict[str, tuple[str, Callable[[dict[str, Any]], Any]]] = {
            name.lower(): (name, handler)
            for name, handler in {
                "getMe": self._get_me,
                "setWebhook": self._set_webhook,
                "deleteWebhook": self._delete_webhook,
                "getWebhookInfo": self._get_webhook_info,
                "getUpdates": self._get_updates,
                "sendMessage": self._send_message,
                "sendChatAction": self._send_chat_action,
            }.items()
        }

    @property
    def base_url(self) -> str:
        """Pass as PTB's ``base_url``: requests go to ``{base_url}{token}/{method}``."""
        return f"{self.root_url}/bot"

    @property
    def token(self) -> str | None:
        """The currently valid token (None after revoke_token())."""
        return self._token

    @property
    def bot_user(self) -> dict[str, Any]:
        return {
            "id": self._bot_id,
            "is_bot": True,
            "first_name": self.bot_first_name,
            "username": self.bot_username,
        }

    @property
    def active_polls(self) -> int:
        """getUpdates requests currently parked in a long poll."""
        return self._parked_polls

    @property
    def pending_updates(self) -> list[dict[str, Any]]:
        """Updates not yet confirmed by an offset."""
        return list(self._updates)

    # ------------------------------------------------------------ test-side API

    def inject_message(
        self,
        chat_id: int,
        text: str,
        *,
        from_user: dict[str, Any] | None = None,
        chat: dict[str, Any] | None = None,
    ) -> int:
        """Queue a `message` Update as a user would create it; returns its update_id."""
        chat = chat or self._chat(chat_id)
        self._chats[chat_id] = chat
        if from_user is None:
            user_id = chat_id if chat["type"] == "private" else 424242
            from_user = {
                "id": user_id,
                "is_bot": False,
                "first_name": "Test",
                "last_name": "User",
                "username": f"user{user_id}",
                "language_code": "en",
            }
        message: dict[str, Any] = {
            "message_id": self._new_message_id(chat_id),
            "from": from_user,
            "chat": chat,
            "date": int(time.time()),
            "text": text,
        }
        if text.startswith("/"):
            # Telegram marks commands; PTB's CommandHandler relies on this entity.
            command = text.split()[0]
            message["entities"] = [{"offset": 0, "length": len(command), "type": "bot_command"}]
        return self.inject_update({"message": message})

    def inject_update(self, update: dict[str, Any]) -> int:
        """Queue any Update body (without update_id); returns the update_id given to it."""
        update_id = self._next_update_id
        self._next_update_id += 1
        self._updates.append({"update_id": update_id, **update})
        self._bump()
        if self.webhook.active:
            self.webhook.kick()
        return update_id

    def call_count(self, method: str) -> int:
        return self.calls[self._canonical(method)]

    def fail_next(
        self,
        n: int = 1,
        status: int = 502,
        method: str | None = "getUpdates",
        *,
        body: str = "auto",
        description: str | None = None,
    ) -> None:
        """Answer the next ``n`` calls of ``method`` (None: any) with HTTP ``status``.

        ``body``: "html" is nginx's error page (what 502/503/504 really look like), "json" is
        ``{"ok":false,...}``; "auto" picks html for 502-504 and json otherwise.
        """
        if body not in ("auto", "html", "json"):
            raise ValueError("body must be auto, html or json")
        self._add_fault(
            _Fault("fail", n, _lower(method), status=status, body=body, description=description)
        )

    def rate_limit_next(
        self, n: int = 1, retry_after: int = 5, method: str | None = "getUpdates"
    ) -> None:
        """429 Too Many Requests with ``parameters.retry_after`` (PTB raises RetryAfter)."""
        self._add_fault(_Fault("rate_limit", n, _lower(method), retry_after=retry_after))

    def conflict_next(self, n: int = 1, method: str | None = "getUpdates") -> None:
        """409 "Conflict: terminated by other getUpdates request; ..." (PTB raises Conflict)."""
        self._add_fault(_Fault("conflict", n, _lower(method)))

    def stall_next(
        self, n: int = 1, seconds: float = 30.0, method: str | None = "getUpdates"
    ) -> None:
        """Accept the request but start handling it only after ``seconds`` (a deaf link).

        A client that gives up meanwhile cancels it, so the request is lost as on a dead link.
        """
        self._add_fault(_Fault("stall", n, _lower(method), seconds=seconds))

    def clear_faults(self) -> None:
        self._faults.clear()

    def migrate_chat(self, chat_id: int, new_chat_id: int) -> None:
        """The group became a supergroup: sendMessage to the old id answers 400 "group chat
        was upgraded to a supergroup chat" with ``parameters.migrate_to_chat_id`` (PTB raises
        ChatMigrated), as the Bot API's ResponseParameters describe."""
        self._migrated[int(chat_id)] = int(new_chat_id)

    def flood_chat(self, chat_id: int, retry_after: int) -> None:
        """Flood control for one chat, as Telegram applies it: every sendMessage to
        ``chat_id`` in the next ``retry_after`` seconds answers 429 "Too Many Requests: retry
        after N" with ``parameters.retry_after`` (the seconds still left); other chats are
        not affected."""
        self._flooded[int(chat_id)] = time.monotonic() + retry_after

    def refuse_chat(self, chat_id: int, status: int = 403,
                    description: str = "Forbidden: bot was blocked by the user") -> None:
        """Every sendMessage to ``chat_id`` is refused (403 blocked, 400 chat not found...)."""
        self._refusing[int(chat_id)] = (int(status), description)

    def revoke_token(self) -> None:
        """Every further call answers 401; an in-flight long poll ends with 401 at once."""
        self._token = None
        self._bump()

    def set_token(self, token: str) -> None:
        """Make ``token`` the only valid one (in-flight polls with another token get 401)."""
        self._token = token
        self._bump()

    # ------------------------------------------------------------------ serving

    async def _before_stop(self) -> None:
        await self.webhook.stop()

    def _add_routes(self, app: web.Application) -> None:
        app.router.add_route("*", "/bot{token}/{method}", self._handle_bot)

    def _control_actions(self) -> dict[str, Callable[..., Any]]:
        return {
            "inject_message": self.inject_message,
            "inject_update": self.inject_update,
            "fail_next": self.fail_next,
            "rate_limit_next": self.rate_limit_next,
            "conflict_next": self.conflict_next,
            "stall_next": self.stall_next,
            "clear_faults": self.clear_faults,
            "migrate_chat": self.migrate_chat,
            "refuse_chat": self.refuse_chat,
            "flood_chat": self.flood_chat,
            "revoke_token": self.revoke_token,
            "set_token": self.set_token,
            "route_webhook": self.webhook.route,
            "post_to_webhook": self.webhook.post,
        }

    def _state(self) -> dict[str, Any]:
        return {
            **super()._state(),
            "token_valid": self._token is not None,
            "pending_updates": len(self._updates),
            "faults": [dataclasses.asdict(f) for f in self._faults],
            "sent": len(self.sent_messages),
            "webhook": self.webhook.info(len(self._updates)),
            "webhook_deliveries": list(self.webhook.deliveries),
        }

    def _calls_view(self) -> Any:
        return {"counts": dict(self.calls), "log": list(self.call_log),
                "polls": list(self.poll_spans), "overlapping_polls": self.overlapping_polls()}

    def overlapping_polls(self) -> list[tuple[tuple[float, float, str], tuple[float, float, str]]]:
        """Pairs of getUpdates calls that were in flight at the same time (one poller never
        has two: each poll starts after the previous one ended)."""
        spans = sorted(self.poll_spans)
        return [(a, b) for a, b in itertools.pairwise(spans) if b[0] < a[1]]

    async def _handle_bot(self, request: web.Request) -> web.StreamResponse:
        token = request.match_info["token"]
        method = self._canonical(request.match_info["method"])
        self.calls[method] += 1
        params: dict[str, Any] = {}
        try:
            params = await _read_params(request)
            started = time.monotonic()
            try:
                response = await self._answer(token, method, params)
            finally:
                if method == "getUpdates":
                    self.poll_spans.append((started, time.monotonic(), request.remote or ""))
        except _BadRequest as exc:
            response = _error(400, f"Bad Request: {exc}")
        except _Refused as exc:
            response = _error(exc.status, exc.description, exc.parameters)
        self.call_log.append(CallRecord(method, response.status, params))
        self._bump()
        return response

    async def _answer(self, token: str, method: str, params: dict[str, Any]) -> web.Response:
        fault = self._take_fault(method)
        if fault is not None:
            # Faults come from the front (nginx, flood control) before the token is looked at.
            if fault.kind == "stall":
                await asyncio.sleep(fault.seconds)
            elif fault.kind == "fail":
                return _failure(fault)
            elif fault.kind == "rate_limit":
                return _error(
                    429,
                    f"Too Many Requests: retry after {fault.retry_after}",
                    {"retry_after": fault.retry_after},
                )
            elif fault.kind == "conflict":
                return _error(409, CONFLICT_DESCRIPTION)
        if token != self._token:
            return self._token_error(token)
        entry = self._methods.get(method.lower())
        if entry is None:
            return _error(404, "Not Found")
        result = entry[1](params)
        if inspect.isawaitable(result):
            result = await result
        if isinstance(result, web.Response):
            return result
        return web.json_response({"ok": True, "result": result})

    @staticmethod
    def _token_error(token: str) -> web.Response:
        if _TOKEN_SHAPE.match(token):
            return _error(401, "Unauthorized")
        return _error(404, "Not Found")

    # ------------------------------------------------------------------ methods

    def _get_me(self, params: dict[str, Any]) -> dict[str, Any]:
        return {
            **self.bot_user,
            "can_join_groups": True,
            "can_read_all_group_messages": False,
            "supports_inline_queries": False,
            "can_connect_to_business": False,
            "has_main_web_app": False,
        }

    def _set_webhook(self, params: dict[str, Any]) -> bool:
        if "allowed_updates" in params:
            params = {**params, "allowed_updates": _list_param(params, "allowed_updates")}
            self.allowed_updates = params["allowed_updates"]
        try:
            self.webhook.set(params)
        except WebhookRefused as exc:
            raise _BadRequest(str(exc)) from None
        if _bool_param(params, "drop_pending_updates"):
            self._updates.clear()
        self._poll_generation += 1  # an in-flight getUpdates ends (409 below)
        self._bump()
        return True

    def _delete_webhook(self, params: dict[str, Any]) -> bool:
        if _bool_param(params, "drop_pending_updates"):
            self._updates.clear()
        self.webhook.delete()
        return True

    def _get_webhook_info(self, params: dict[str, Any]) -> dict[str, Any]:
        return self.webhook.info(len(self._updates))

    def _confirm_one(self, update_id: int) -> None:
        """A webhook delivery was answered 2xx: that update is done."""
        self._updates = [u for u in self._updates if u["update_id"] != update_id]
        self._bump()

    async def _get_updates(self, params: dict[str, Any]) -> web.Response:
        if self.webhook.active:
            return _error(409, WEBHOOK_CONFLICT_DESCRIPTION)
        token = self._token
        offset = _int_param(params, "offset", 0)
        limit = _int_param(params, "limit", 100)
        if not 1 <= limit <= 100:
            limit = 100
        timeout = max(_float_param(params, "timeout", 0.0), 0.0)
        if "allowed_updates" in params:
            self.allowed_updates = _list_param(params, "allowed_updates")
        self._confirm(offset)
        self._poll_generation += 1
        generation = self._poll_generation
        self._bump()  # terminates an older in-flight poll (it sees a newer generation)
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            wakeup = self._wakeup
            if self._stopping:
                return web.json_response({"ok": True, "result": []})
            if self._token != token:
                return self._token_error(token or "")
            if self.webhook.active:
                return _error(409, WEBHOOK_CONFLICT_DESCRIPTION)
            if self.terminate_concurrent_polls and generation != self._poll_generation:
                return _error(409, CONFLICT_DESCRIPTION)
            if self._updates:
                return web.json_response({"ok": True, "result": self._updates[:limit]})
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0:
                return web.json_response({"ok": True, "result": []})
            self._parked_polls += 1
            self._notify()
            try:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(remaining):
                        await wakeup.wait()
            finally:
                self._parked_polls -= 1
                self._notify()

    def _send_message(self, params: dict[str, Any]) -> dict[str, Any]:
        chat_id = self._chat_id(params)
        if chat_id in self._migrated:
            raise _Refused(400, "Bad Request: group chat was upgraded to a supergroup chat",
                           {"migrate_to_chat_id": self._migrated[chat_id]})
        if chat_id in self._refusing:
            raise _Refused(*self._refusing[chat_id])
        left = self._flooded.get(chat_id, 0.0) - time.monotonic()
        if left > 0:
            wait = math.ceil(left)
            raise _Refused(429, f"Too Many Requests: retry after {wait}", {"retry_after": wait})
        text = params.get("text")
        if not text:
            raise _BadRequest("message text is empty")
        text = str(text)
        if len(text) > _MAX_TEXT:
            raise _BadRequest("message is too long")
        message = {
            "message_id": self._new_message_id(chat_id),
            "from": self.bot_user,
            "chat": self._chats.get(chat_id) or self._chat(chat_id),
            "date": int(time.time()),
            "text": text,
        }
        self.sent_messages.append(
            SentMessage(chat_id, text, message["message_id"], dict(params), message)
        )
        return message

    def _send_chat_action(self, params: dict[str, Any]) -> bool:
        self._chat_id(params)
        if not params.get("action"):
            raise _BadRequest("action is empty")
        return True

    # ------------------------------------------------------------------ helpers

    def _canonical(self, method: str) -> str:
        """Bot API method names are case-insensitive; count them under their documented name."""
        entry = self._methods.get(method.lower())
        return entry[0] if entry else method

    def _add_fault(self, fault: _Fault) -> None:
        if fault.remaining < 1:
            raise ValueError("n must be at least 1")
        self._faults.append(fault)
        self._bump()

    def _take_fault(self, method: str) -> _Fault | None:
        """Scripted faults are served in the order they were scripted."""
        for fault in self._faults:
            if fault.method is None or fault.method == method.lower():
                fault.remaining -= 1
                if fault.remaining <= 0:
                    self._faults.remove(fault)
                return fault
        return None

    def _confirm(self, offset: int) -> None:
        """Telegram semantics: updates with update_id < offset are confirmed and forgotten;
        a negative offset keeps only the last -offset updates."""
        if offset > 0:
            self._updates = [u for u in self._updates if u["update_id"] >= offset]
        elif offset < 0:
            self._updates = self._updates[offset:]

    def _new_message_id(self, chat_id: int) -> int:
        self._next_message_id[chat_id] += 1
        return self._next_message_id[chat_id]

    @staticmethod
    def _chat(chat_id: int) -> dict[str, Any]:
        if chat_id > 0:
            return {"id": chat_id, "first_name": "Test", "last_name": "User",
                    "username": f"user{chat_id}", "type": "private"}
        kind = "supergroup" if str(chat_id).startswith("-100") else "group"
        return {"id": chat_id, "title": f"Test group {chat_id}", "type": kind}

    @staticmethod
    def _chat_id(params: dict[str, Any]) -> int:
        value = params.get("chat_id")
        if value is None or value == "":
            raise _BadRequest("chat_id is empty")
        try:
            return int(value)
        except (TypeError, ValueError):
            # "@channelname": the fake knows no public chats.
            raise _BadRequest("chat not found") from None


def _lower(method: str | None) -> str | None:
    return method.lower() if method else None


def _error(
    status: int, description: str, parameters: dict[str, Any] | None = None
) -> web.Response:
    body: dict[str, Any] = {"ok": False, "error_code": status, "description": description}
    if parameters:
        body["parameters"] = parameters
    return web.json_response(body, status=status)


def _failure(fault: _Fault) -> web.Response:
    try:
        phrase = HTTPStatus(fault.status).phrase
    except ValueError:
        phrase = "Error"
    html = fault.body == "html" or (fault.body == "auto" and 502 <= fault.status <= 504)
    if html:
        page = _NGINX_ERROR_PAGE.format(code=fault.status, phrase=phrase)
        return web.Response(status=fault.status, text=page, content_type="text/html")
    return _error(fault.status, fault.description or phrase)


async def _read_params(request: web.Request) -> dict[str, Any]:
    """Parameters as the Bot API accepts them: query string, JSON, urlencoded or multipart.

    PTB 22 sends ``application/x-www-form-urlencoded`` (multipart when uploading), with
    non-string values JSON-encoded inside the form fields; JSON bodies keep their types.
    """
    params: dict[str, Any] = dict(request.query)
    if not request.can_read_body:
        return params
    if request.content_type == "application/json":
        try:
            body = await request.json()
        except ValueError:
            raise _BadRequest("can't parse JSON object") from None
        if not isinstance(body, dict):
            raise _BadRequest("JSON body must be an object")
        params.update(body)
    else:
        form = await request.post()
        for key, value in form.items():
            params[key] = value if isinstance(value, str) else "<file>"
    return params


def _int_param(params: dict[str, Any], name: str, default: int) -> int:
    value = params.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except (TypeError, ValueError):
        raise _BadRequest(f"invalid {name} specified") from None


def _float_param(params: dict[str, Any], name: str, default: float) -> float:
    value = params.get(name)
    if value is None or value == "":
        return default
    try:
        return float(value)
    except (TypeError, ValueError):
        raise _BadRequest(f"invalid {name} specified") from None


def _bool_param(params: dict[str, Any], name: str) -> bool:
    return params.get(name) in (True, 1, "true", "True", "1")


def _list_param(params: dict[str, Any], name: str) -> list[str]:
    value = params.get(name)
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            raise _BadRequest(f"can't parse {name} JSON array") from None
    if not isinstance(value, list):
        raise _BadRequest(f"{name} must be an array")
    return [str(v) for v in value]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Fake Telegram Bot API on 127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--control-port", type=int, default=0)
    parser.add_argument("--token", default=DEFAULT_TOKEN)
    parser.add_argument("--bot-username", default="switchboard_fake_bot")
    parser.add_argument("--node-holder", type=int, help="serve inside this real node")
    parser.add_argument("--allow-http-webhooks", action="store_true",
                        help="accept http:// webhook URLs (Telegram requires https)")
    args = parser.parse_args(argv)
    fake = FakeTelegram(
        args.token, port=args.port, control_port=args.control_port,
        bot_username=args.bot_username, node_holder=args.node_holder,
        allow_http_webhooks=args.allow_http_webhooks,
    )
    serve_cli(fake)


if __name__ == "__main__":
    main()
