"""Relays: hand an inbound message to the backend and return its reply text (docs/relay.md).

HttpRelay POSTs the JSON body below; EchoRelay is the built-in echo backend (`backend.echo`).

    {"connection": "<namespace>/<name>", "platform": "telegram",
     "chat": {"id": "42"}, "sender": {"id": "42", "name": "Test User"},
     "text": "hi", "messageId": "100000001", "time": "2026-01-01T12:00:00Z"}

A 2xx answer ``{"text": "..."}`` is the reply (``null``, a missing ``text``, an empty body or 204:
no reply). Anything else (non-2xx, timeout, refused connection, not JSON) raises BackendError,
and the adapter keeps the message and retries.
"""

from __future__ import annotations

import json
import time
from typing import Any

import aiohttp

from switchboard_gateway import metrics
from switchboard_gateway.adapter import BackendError, InboundMessage, Relay
from switchboard_gateway.config import GatewayConfig
from switchboard_gateway.redact import describe


def message_body(message: InboundMessage) -> dict[str, Any]:
    return {
        "connection": message.connection,
        "platform": message.platform,
        "chat": {"id": message.chat_id},
        "sender": {"id": message.sender_id, "name": message.sender_name},
        "text": message.text,
        "messageId": message.message_id,
        "time": message.time,
    }


def echo_reply(text: str) -> str:
    return f"echo: {text}"


class EchoRelay:
    """The built-in echo backend: always accepts, replies ``echo: <text>``."""

    async def start(self) -> None:
        pass

    async def close(self) -> None:
        pass

    async def deliver(self, message: InboundMessage) -> str | None:
        with metrics.BACKEND_LATENCY.labels(platform=message.platform).time():
            return echo_reply(message.text)


class HttpRelay:
    def __init__(self, url: str, timeout: float = 10.0) -> None:
        self.url = url
        self.timeout = timeout
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self.timeout),
                headers={"User-Agent": "switchboard-gateway"},
            )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def deliver(self, message: InboundMessage) -> str | None:
        await self.start()
        assert self._session is not None
        started = time.perf_counter()
        try:
            async with self._session.post(self.url, json=message_body(message)) as response:
                raw = await response.read()
                if not 200 <= response.status < 300:
                    raise BackendError(f"backend answered HTTP {response.status}")
        except BackendError:
            raise
        except TimeoutError:
            raise BackendError(f"backend did not answer within {self.timeout:g}s") from None
        except aiohttp.ClientError as exc:
            raise BackendError(f"backend unreachable: {describe(exc)}") from None
        finally:
            metrics.BACKEND_LATENCY.labels(platform=message.platform).observe(
                time.perf_counter() - started)
        if response.status == 204 or not raw.strip():
            return None
        try:
            answer = json.loads(raw)
        except ValueError:
            raise BackendError("backend answer is not JSON") from None
        if not isinstance(answer, dict):
            raise BackendError("backend answer is not a JSON object")
        text = answer.get("text")
        if text is None:
            return None
        if not isinstance(text, str):
            raise BackendError("backend answer's text is not a string")
        return text or None


def make_relay(config: GatewayConfig) -> EchoRelay | HttpRelay:
    if config.backend_echo:
        return EchoRelay()
    assert config.backend_url is not None
    return HttpRelay(config.backend_url, config.backend_timeout)


__all__ = ["EchoRelay", "HttpRelay", "Relay", "echo_reply", "make_relay", "message_body"]
