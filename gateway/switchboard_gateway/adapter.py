"""The contract between platform adapters and the rest of the gateway.

An adapter (telegram.py, qqbot.py) connects to its platform, tells a StatusSink every state
change, hands inbound messages to a Relay and sends the replies back. It returns only when asked
to stop; when its own reconnect ladder is exhausted, or the platform says the credentials are
wrong, it raises FatalAdapterError and the gateway reports `fatal` for the operator to act on.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol


class State(StrEnum):
    CONNECTING = "connecting"
    CONNECTED = "connected"
    RETRYING = "retrying"
    FATAL = "fatal"
    DISCONNECTED = "disconnected"


@dataclass(frozen=True)
class AdapterError:
    """What went wrong, safe to show: `message` is already redacted (no token, no secret)."""

    code: str
    message: str
    retryable: bool


class FatalAdapterError(Exception):
    def __init__(self, code: str, message: str, retryable: bool) -> None:
        super().__init__(f"{code}: {message}")
        self.error = AdapterError(code, message, retryable)


class StatusSink(Protocol):
    async def report(self, state: State, *, attempt: int = 0, max_attempts: int = 0,
                     error: AdapterError | None = None) -> None:
        """Record the state; returns once it reached the API server (or a short bound passed),
        so a `retrying` report lands before the adapter starts its back-off sleep."""


@dataclass(frozen=True)
class InboundMessage:
    """One platform message, in the JSON body the backend receives (see README: Relay)."""

    connection: str
    platform: str
    chat_id: str
    sender_id: str
    sender_name: str
    text: str
    message_id: str
    time: str  # RFC 3339


class BackendError(Exception):
    """The backend did not accept a message; the adapter keeps it and tries again."""


class Relay(Protocol):
    async def deliver(self, message: InboundMessage) -> str | None:
        """Send to the backend; return the reply text (None: no reply). Raise BackendError."""


class Adapter(Protocol):
    async def run(self, stop: asyncio.Event) -> None: ...
