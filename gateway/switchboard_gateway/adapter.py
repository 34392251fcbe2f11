"""The contract between platform adapters and the rest of the gateway.

An adapter (telegram.py, qqbot.py) connects to its platform, tells a StatusSink every state
change, hands inbound messages to a Relay and sends the replies back. It returns only when asked
to stop; when its own reconnect ladder is exhausted, or the platform says the credentials are
wrong, it raises FatalAdapterError and the gateway reports `fatal` for the operator to act on.

Construction (main.make_adapter imports the module lazily)::

    adapter = TelegramAdapter(config, sink, relay)   # switchboard_gateway.telegram
    adapter = QQBotAdapter(config, sink, relay)      # switchboard_gateway.qqbot
    await adapter.run(stop)                          # returns soon after `stop` is set

- ``config``: config.GatewayConfig (credentials are config.Secret: call ``.reveal()``; the values
  are registered with redact.py, so ``redact.describe(exc)`` scrubs them from any message);
- ``sink``: a StatusSink (status.StatusReporter in production). It also keeps the `state` metric;
- ``relay``: a Relay, already started by main (relay.HttpRelay or relay.EchoRelay);
- QQ only, optional ``store``: a FieldStore for state that outlives the process (the QQ session
  in status.qqSession); defaults to the sink when the sink is one, as the StatusReporter is.
Metrics the adapter updates itself (metrics.py): RECONNECT_ATTEMPTS, ERRORS, MESSAGES_IN,
MESSAGES_OUT, DUPLICATES, DEAD_LETTERS. On stop the adapter just returns: main writes the final
state. Every background task an adapter starts is supervised (``supervise``): its death ends
the adapter with a retryable fatal ``gateway_internal_error``, never silence.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from switchboard_contract import ErrorCode, State
from switchboard_gateway.redact import describe

# The states are the status contract's (switchboard_contract), re-exported for the adapters.
__all__ = ["AdapterError", "FatalAdapterError", "State", "StatusSink", "supervise"]


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

    def record(self, state: State, *, attempt: int = 0, max_attempts: int = 0,
               error: AdapterError | None = None) -> object:
        """Record the state without waiting for the write (it still lands, coalesced, and is
        never dropped). For `connected`: relaying messages must not wait on the API server."""


@runtime_checkable
class FieldStore(Protocol):
    """Auxiliary gateway-owned status fields an adapter keeps across restarts (status.py's
    StatusReporter implements it; main passes the reporter as both sink and store).

    - ``restore``: the values a previous process left (call before the first report);
    - ``field``: the value held now (restored or set);
    - ``set_field``: the new value (``None`` removes it), written lazily within the status write
      budget and carried in every later write, the final one on shutdown included.
    """

    async def restore(self, names: tuple[str, ...], timeout: float) -> dict[str, Any]: ...  # noqa: ASYNC109

    def set_field(self, name: str, value: Any) -> object: ...

    def field(self, name: str) -> Any: ...


@dataclass(frozen=True)
class InboundMessage:
    """One platform message, in the JSON body the backend receives (docs/relay.md)."""

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
    async def run(self, stop: asyncio.Event) -> None:
        """Connect, relay, reconnect; return once `stop` is set (within a few seconds).
        Raise FatalAdapterError when giving up. Report every state change to the sink, with
        `retrying` (attempt N/MAX, error) awaited *before* each back-off sleep and `connected`
        only after the platform really answered."""


def supervise(task: asyncio.Task[Any], on_death: Callable[[FatalAdapterError], None], *,
              may_return: bool = False) -> asyncio.Task[Any]:
    """Call ``on_death`` when ``task`` dies: ends by an exception, or (unless ``may_return``:
    a task with a natural end, like a connection's heartbeat) by returning although it was
    meant to run as long as its owner. Cancelling it (the owner stopping) is not a death."""
    def done(finished: asyncio.Task[Any]) -> None:
        if finished.cancelled():
            return
        exc = finished.exception()
        if exc is None and may_return:
            return
        what = describe(exc) if exc is not None else "it returned"
        on_death(FatalAdapterError(
            ErrorCode.INTERNAL_ERROR,
            f"background task {finished.get_name()} stopped: {what}", True))
    task.add_done_callback(done)
    return task
