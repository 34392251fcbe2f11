"""The fake QQ platform's HTTP callbacks (event-emit.md and sign.md of QQ's bot-docs).

- ``configure(url)`` is what saving a callback URL in QQ's console does: the platform posts
  op 13 ``{"plain_token", "event_ts"}`` and accepts the URL only if the answer is
  ``{"plain_token", "signature"}`` with the Ed25519 signature of event_ts + plain_token under
  the key derived from the bot secret. Accepted, every event goes to the URL instead of the
  websocket;
- every callback is signed: ``X-Signature-Ed25519`` (hex) over ``X-Signature-Timestamp`` +
  body, plus ``X-Bot-Appid``; the bot acknowledges with op 12 (200, or 204). A callback not
  acknowledged (another status, no answer) is posted again, in order, after 0.5, 1, 2, 4 s
  and then every 4 s: QQ documents the 3-second answer but not its retries, so the fake
  retries as Telegram does rather than drop (a deviation a test can rely on: nothing lost).
The keys are made with ``cryptography`` here too, independently of the gateway's code.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from switchboard_testkit.fake_telegram_webhook import RETRY_PAUSES, Pusher, RoutedClient


def platform_key(bot_secret: str) -> Ed25519PrivateKey:
    seed = bot_secret.encode()
    while len(seed) < 32:
        seed = seed * 2
    return Ed25519PrivateKey.from_private_bytes(seed[:32])


@dataclass
class Callback:
    """One push: the event id and what came of it."""

    event_id: str
    status: int | None
    error: str | None
    at: float = field(default_factory=time.time)


class CallbackPusher(Pusher):
    def __init__(self, *, app_id: str, bot_secret: str, changed: Callable[[], None],
                 node_holder: int | None = None) -> None:
        self.app_id = app_id
        self._key = platform_key(bot_secret)
        self._changed = changed
        self.client = RoutedClient(node_holder)
        self.url: str | None = None
        self.validation: dict[str, Any] | None = None
        self.queue: deque[dict[str, Any]] = deque()
        self.pushes: deque[Callback] = deque(maxlen=10_000)
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    @property
    def active(self) -> bool:
        return self.url is not None

    def route(self, host: str, address: str) -> None:
        self.client.routes[host.lower()] = address

    def signed(self, body: bytes, timestamp: str | None = None) -> dict[str, str]:
        ts = timestamp or str(int(time.time()))
        return {"Content-Type": "application/json", "X-Bot-Appid": self.app_id,
                "X-Signature-Timestamp": ts,
                "X-Signature-Ed25519": self._key.sign(ts.encode() + body).hex()}

    async def configure(self, url: str) -> dict[str, Any]:
        """Validate ``url`` (op 13) and, if it answers right, deliver events there."""
        token = secrets.token_urlsafe(15)
        event_ts = str(int(time.time()))
        body = json.dumps({"op": 13, "d": {"plain_token": token,
                                           "event_ts": event_ts}}).encode()
        status, text, error = await self.client.post(url, body, self.signed(body))
        result: dict[str, Any] = {"url": url, "status": status, "error": error,
                                  "validated": False}
        try:
            answer = json.loads(text) if text else {}
            signature = bytes.fromhex(str(answer.get("signature", "")))
            self._key.public_key().verify(signature, (event_ts + token).encode())
            result["validated"] = status == 200 and answer.get("plain_token") == token
        except (ValueError, InvalidSignature, AttributeError):
            result["validated"] = False
        self.validation = result
        if result["validated"]:
            self.url = url
            self.kick()
        self._changed()
        return result

    def push(self, payload: dict[str, Any]) -> None:
        self.queue.append(payload)
        self.kick()

    async def post(self, payload: dict[str, Any], signature: str | None = None,
                   timestamp: str | None = None, sign: bool = True) -> int | str:
        """One POST to the callback URL as anyone could make it (forged, replayed)."""
        if self.url is None:
            raise ValueError("no callback URL is configured")
        body = json.dumps(payload).encode()
        headers = self.signed(body, timestamp) if sign else {"Content-Type": "application/json"}
        if signature is not None:
            headers["X-Signature-Ed25519"] = signature
        status, _, error = await self.client.post(self.url, body, headers)
        return status if status is not None else str(error)

    async def _run(self) -> None:
        failures = 0
        while True:
            self._wake.clear()
            if self.url is None or not self.queue:
                await self._wake.wait()
                continue
            payload = self.queue[0]
            body = json.dumps(payload).encode()
            status, text, error = await self.client.post(self.url, body, self.signed(body))
            acked = status in (200, 204) and (status == 204 or _is_ack(text))
            self.pushes.append(Callback(str(payload.get("id")), status, error))
            if acked:
                failures = 0
                self.queue.popleft()
            else:
                failures += 1
                self._changed()
                await asyncio.sleep(RETRY_PAUSES[min(failures, len(RETRY_PAUSES)) - 1])
            self._changed()


def _is_ack(text: str) -> bool:
    try:
        return bool(json.loads(text).get("op") == 12)
    except (ValueError, AttributeError):
        return False
