"""The fake Telegram's webhook delivery (setWebhook / getWebhookInfo / the pushes themselves).

As the Bot API documents it (core.telegram.org/bots/api#setwebhook, #getwebhookinfo):
- setWebhook checks the URL: https (unless the fake was told to allow http, for tests
  without TLS), ports 443, 80, 88 or 8443, a host it can resolve; ``secret_token`` 1-256
  characters of A-Z a-z 0-9 _ -; ``max_connections`` 1-100 (default 40);
- while a webhook is set, getUpdates answers 409 "can't use getUpdates method while webhook is
  active; use deleteWebhook to delete the webhook first";
- every pending update is POSTed as JSON to the URL with X-Telegram-Bot-Api-Secret-Token;
  a 2xx answer confirms it, anything else (another status, a refused connection, no answer
  in time) is retried after a growing pause, and getWebhookInfo reports last_error_date and
  last_error_message ("Wrong response from the webhook: 503 Service Unavailable",
  "Connection refused", "Read timeout expired"), as Telegram's do.
Pushes go out as Telegram's do (as grammY's deployment guide describes them): a chat's updates
one at a time and in order (a failed one holds back the chat's later ones), different chats'
at once, up to max_connections in flight. Deviations, on purpose: a chat is retried after
0.5, 1, 2, 4 s, then every 4 s (Telegram's pauses are longer and undocumented), and never
given up (Telegram gives up "after a reasonable amount of attempts", which a test could not
wait for).

The URL's host is resolved through ``route(host, "ip:port")`` (RoutedClient below, shared with
the fake QQ's callbacks).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import socket
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import aiohttp

from switchboard_testkit import netns

SECRET_HEADER = "X-Telegram-Bot-Api-Secret-Token"
ALLOWED_PORTS = (80, 88, 443, 8443)
_SECRET_SHAPE = re.compile(r"[A-Za-z0-9_-]{1,256}")
RETRY_PAUSES = (0.5, 1.0, 2.0, 4.0)
DELIVERY_TIMEOUT = 10.0


class WebhookRefused(Exception):
    """setWebhook's 400 Bad Request, with Telegram's description."""


@dataclass
class Delivery:
    """One push to the webhook: the update id and what came of it (HTTP status or error)."""

    update_id: int
    status: int | None
    error: str | None
    at: float = field(default_factory=time.time)


@dataclass
class WebhookSettings:
    url: str
    secret_token: str | None
    max_connections: int
    allowed_updates: list[str] | None


class Pusher:
    """A platform's push loop: ``_run`` (the subclass's) runs while there is work, woken by
    ``kick``; ``stop`` ends it and closes the client."""

    client: RoutedClient
    _wake: asyncio.Event
    _task: asyncio.Task[None] | None = None

    def kick(self) -> None:
        self._wake.set()
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(
                self._run(), name=f"fake-{type(self).__name__}")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.client.close()

    async def _run(self) -> None:
        raise NotImplementedError


class WebhookPusher(Pusher):
    """Holds the webhook of one fake bot and pushes its pending updates to it."""

    def __init__(self, *, pending: Callable[[], list[dict[str, Any]]],
                 confirm: Callable[[int], None], changed: Callable[[], None],
                 node_holder: int | None = None, allow_http: bool = False) -> None:
        self._pending = pending
        self._confirm = confirm
        self._changed = changed
        self.client = RoutedClient(node_holder)
        self.routes = self.client.routes  # host -> "ip:port"
        self.allow_http = allow_http
        self.settings: WebhookSettings | None = None
        self.last_error_date: int | None = None
        self.last_error_message: str | None = None
        self.deliveries: deque[Delivery] = deque(maxlen=10_000)
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._flying: dict[Any, asyncio.Task[None]] = {}  # chat -> its push in flight
        self._failures: dict[Any, int] = {}  # chat -> failed pushes in a row
        self._retry_at: dict[Any, float] = {}  # chat -> when its next push may go (monotonic)

    # ------------------------------------------------------------------ Bot API side

    def set(self, params: dict[str, Any]) -> None:
        url = str(params.get("url") or "")
        if not url:
            self.delete()
            return
        parts = urlsplit(url)
        if parts.scheme != "https" and not (self.allow_http and parts.scheme == "http"):
            raise WebhookRefused("bad webhook: An HTTPS URL must be provided for webhook")
        port = parts.port or (443 if parts.scheme == "https" else 80)
        if port not in ALLOWED_PORTS:
            raise WebhookRefused("bad webhook: Webhook can be set up only on ports 80, 88, "
                                 "443 or 8443")
        if (parts.hostname or "").lower() not in self.routes:
            raise WebhookRefused("bad webhook: Failed to resolve host: Name or service not "
                                 "known")
        secret = params.get("secret_token")
        if secret is not None and not _SECRET_SHAPE.fullmatch(str(secret)):
            raise WebhookRefused("secret token contains unallowed characters")
        try:
            max_connections = int(params.get("max_connections") or 40)
        except (TypeError, ValueError):
            raise WebhookRefused("invalid max_connections specified") from None
        allowed = params.get("allowed_updates")
        self.settings = WebhookSettings(url, None if secret is None else str(secret),
                                        min(max(max_connections, 1), 100),
                                        None if allowed is None else list(allowed))
        self._retry_at.clear()  # a new webhook is tried at once
        self.kick()

    def delete(self) -> None:
        self.settings = None
        self.kick()

    def info(self, pending: int) -> dict[str, Any]:
        info: dict[str, Any] = {"url": self.settings.url if self.settings else "",
                                "has_custom_certificate": False,
                                "pending_update_count": pending}
        if self.settings is not None:
            info["max_connections"] = self.settings.max_connections
            if self.settings.allowed_updates is not None:
                info["allowed_updates"] = self.settings.allowed_updates
        if self.last_error_date is not None:
            info["last_error_date"] = self.last_error_date
            info["last_error_message"] = self.last_error_message or ""
        return info

    @property
    def active(self) -> bool:
        return self.settings is not None

    # ------------------------------------------------------------------ test side

    def route(self, host: str, address: str) -> None:
        """Resolve ``host`` to ``address`` ("ip:port"): where a push to the URL goes."""
        self.routes[host.lower()] = address
        self.kick()

    async def post(self, body: dict[str, Any], secret_token: str | None) -> int | str:
        """One POST to the webhook URL as anyone could make it (a forged request): the
        HTTP status, or the error."""
        if self.settings is None:
            raise ValueError("no webhook is set")
        status, error = await self._post(self.settings.url, body, secret_token)
        return status if status is not None else str(error)

    # ------------------------------------------------------------------ pushing

    async def _run(self) -> None:
        while True:
            self._wake.clear()
            settings, now = self.settings, time.monotonic()
            if settings is not None:
                for chat, update in self._due(now, settings.max_connections):
                    self._flying[chat] = asyncio.create_task(self._push(settings, chat, update))
            pauses = [at - now for at in self._retry_at.values() if at > now]
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(min(pauses) if pauses else None):
                    await self._wake.wait()

    def _due(self, now: float, room: int) -> list[tuple[Any, dict[str, Any]]]:
        """What to push now: each chat's first pending update (a chat's updates go in order),
        unless that chat has a push in flight or is pausing after a failure; at most
        max_connections pushes in flight."""
        due: list[tuple[Any, dict[str, Any]]] = []
        seen: set[Any] = set()
        room -= len(self._flying)
        for update in self._pending():
            chat = _chat_of(update)
            if chat in seen:
                continue
            seen.add(chat)
            if chat in self._flying or self._retry_at.get(chat, 0.0) > now:
                continue
            if len(due) >= room:
                break
            due.append((chat, update))
        return due

    async def _push(self, settings: WebhookSettings, chat: Any, update: dict[str, Any]) -> None:
        try:
            status, error = await self._post(settings.url, update, settings.secret_token)
            self.deliveries.append(Delivery(update["update_id"], status, error))
            if status is not None and 200 <= status < 300:
                self._failures.pop(chat, None)
                self._retry_at.pop(chat, None)
                self._confirm(update["update_id"])
            else:
                failures = self._failures[chat] = self._failures.get(chat, 0) + 1
                self.last_error_date = int(time.time())
                self.last_error_message = error or _wrong_response(status)
                self._retry_at[chat] = (time.monotonic()
                                        + RETRY_PAUSES[min(failures, len(RETRY_PAUSES)) - 1])
            self._changed()
        finally:
            self._flying.pop(chat, None)
            self._wake.set()

    async def stop(self) -> None:
        for push in list(self._flying.values()):
            push.cancel()
        await super().stop()

    async def _post(self, url: str, body: dict[str, Any],
                    secret_token: str | None) -> tuple[int | None, str | None]:
        headers = {"Content-Type": "application/json"}
        if secret_token is not None:
            headers[SECRET_HEADER] = secret_token
        status, _, error = await self.client.post(url, json.dumps(body).encode(), headers)
        return status, error


class RoutedClient:
    """The platform's side of a push: ``routes`` resolve a URL's host ("ip:port", the public
    DNS and load balancer of a real deployment); on the real node the sockets are made inside
    the node's network namespace (a socket keeps the namespace it was created in; aiohttp
    takes a socket factory), where the gateways' Services are."""

    def __init__(self, node_holder: int | None = None) -> None:
        self._node_holder = node_holder
        self.routes: dict[str, str] = {}  # host -> "ip:port"
        self.timeout = DELIVERY_TIMEOUT  # how long the platform waits for an answer
        self._session: aiohttp.ClientSession | None = None

    async def post(self, url: str, data: bytes, headers: dict[str, str]
                   ) -> tuple[int | None, str, str | None]:
        """(HTTP status, body, None) or (None, "", the error as the platform words it)."""
        parts = urlsplit(url)
        address = self.routes.get((parts.hostname or "").lower())
        if address is None:
            return None, "", "Failed to resolve host: Name or service not known"
        # The route plays the load balancer or Ingress that terminates TLS: it forwards plain
        # HTTP to the address, with the URL's host in the Host header.
        target = urlunsplit(("http", address, parts.path or "/", parts.query, ""))
        try:
            async with self._client().post(target, data=data,
                                           headers={"Host": parts.netloc, **headers},
                                           timeout=aiohttp.ClientTimeout(
                                               total=self.timeout)) as response:
                return response.status, await response.text(), None
        except TimeoutError:
            return None, "", "Read timeout expired"
        except aiohttp.ClientConnectorError as exc:
            refused = isinstance(exc.os_error, ConnectionRefusedError)
            return None, "", "Connection refused" if refused else f"Connection failed: {exc}"
        except aiohttp.ClientError as exc:
            return None, "", f"Connection failed: {exc}"

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            holder = self._node_holder

            def make_socket(addr_info: Any) -> socket.socket:
                family, kind, proto = addr_info[0], addr_info[1], addr_info[2]
                if holder is None:
                    return socket.socket(family, kind, proto)
                with netns.enter(holder):
                    return socket.socket(family, kind, proto)

            self._session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(
                socket_factory=make_socket, force_close=True))
        return self._session


def _chat_of(update: dict[str, Any]) -> Any:
    """The chat an update belongs to (Telegram keeps a chat's updates in order and sends
    different chats' at once); an update without one stands alone."""
    for value in update.values():
        if isinstance(value, dict):
            chat = value.get("chat") or (value.get("message") or {}).get("chat")
            if isinstance(chat, dict) and "id" in chat:
                return chat["id"]
    return ("update", update.get("update_id"))


def _wrong_response(status: int | None) -> str:
    try:
        phrase = HTTPStatus(status or 0).phrase
    except ValueError:
        phrase = "Unknown"
    return f"Wrong response from the webhook: {status} {phrase}"
