"""Whether the adapter's loop is getting anywhere: the watchdog of a gateway that says
`connected`.

A connection can look up while the loop behind it is wedged (an await that never returns, a
task starved): the state stays `connected` and nothing moves. Adapters stamp ``Progress`` each
time their loop gets somewhere (the platform answered a poll or a heartbeat, a message went to
the backend or a reply to the platform, even a failed attempt); ``watch`` reports a retryable
fatal ``gateway_stalled`` when a connected gateway has no stamp for ``stall_after`` seconds, and
the operator restarts it. The decision (``stalled``) is pure; times are the gateway's own
monotonic clock, injected for tests.

Status shows the wall-clock side for people (``status.lastActivity``: when the platform last
answered and when a message was last delivered), at a coarse resolution so that an idle bot
costs about one lazy write every few minutes, never one per message.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from collections.abc import Callable

from switchboard_contract import ErrorCode
from switchboard_contract import Field as F
from switchboard_gateway.adapter import FatalAdapterError, FieldStore

# Seconds without progress before a connected gateway counts as stalled (SWITCHBOARD_STALL_AFTER).
DEFAULT_STALL_AFTER = 300.0
# status.lastActivity is rewritten only when a time moved by at least this much (seconds).
ACTIVITY_RESOLUTION = 120.0


def stalled(now: float, last: float, stall_after: float, connected: bool) -> bool:
    """A gateway is stalled when it claims `connected` and its loop has not moved for
    ``stall_after`` seconds."""
    return connected and now - last > stall_after


def _stamp() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class Progress:
    def __init__(self, store: FieldStore | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._store, self._clock = store, clock
        self.last = clock()
        self._shown: dict[str, float] = {}  # lastActivity key -> monotonic time written

    def moved(self, idle_for: float = 0.0) -> None:
        """The loop got somewhere (an attempt counts, failed or not); ``idle_for``: it now
        waits that long by design (a back-off, flood control), which is no stall either."""
        self.last = self._clock() + idle_for

    def answered(self) -> None:
        """The platform answered (a poll, a heartbeat ACK)."""
        self.moved()
        self._show("platformAnsweredAt")

    def delivered(self) -> None:
        """A message reached the backend."""
        self.moved()
        self._show("messageDeliveredAt")

    def _show(self, key: str) -> None:
        if self._store is None:
            return
        now = self._clock()
        if now - self._shown.get(key, -ACTIVITY_RESOLUTION - 1) < ACTIVITY_RESOLUTION:
            return
        self._shown[key] = now
        current = dict(self._store.field(F.LAST_ACTIVITY) or {})
        current[key] = _stamp()
        self._store.set_field(F.LAST_ACTIVITY, current)

    async def watch(self, stall_after: float, connected: Callable[[], bool],
                    on_stall: Callable[[FatalAdapterError], None],
                    every: float = 0.5) -> None:
        """Until cancelled: call ``on_stall`` once when the gateway stalls."""
        while True:
            await asyncio.sleep(every)
            if stalled(self._clock(), self.last, stall_after, connected()):
                on_stall(FatalAdapterError(
                    ErrorCode.GATEWAY_STALLED,
                    f"connected, but the gateway made no progress for {stall_after:g}s "
                    "(no platform answer, no message handled)", True))
                return
