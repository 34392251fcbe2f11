"""Writes the operator's part of a connection's status, and the Events of a reconcile.

status.py computes the fields (pure); this module writes them with server-side apply only
when they differ from what is stored (an idle connection costs no request), feeds the result
back to the cache, and posts the Events off the reconcile's path.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine, Mapping, Sequence
from typing import Any

from switchboard_operator import conditions as cond
from switchboard_operator import status as st
from switchboard_operator.cache import Cache
from switchboard_operator.circuit import Event
from switchboard_operator.kube import Kube
from switchboard_operator.restarts import Key

log = logging.getLogger(__name__)


class StatusWriter:
    def __init__(self, cache: Cache,
                 spawn: Callable[[Coroutine[Any, Any, Any]], asyncio.Task[Any]]) -> None:
        self.cache, self._spawn = cache, spawn
        self.kube: Kube | None = None
        # key -> (status last applied, resourceVersion the apply returned).
        self._last: dict[Key, tuple[dict[str, Any], str]] = {}

    def forget(self, key: Key) -> None:
        self._last.pop(key, None)

    async def write(self, key: Key, body: Mapping[str, Any],
                    want: st.Desired) -> tuple[Mapping[str, Any], list[Event]]:
        """Apply ``want`` if it changes anything; the connection after, and the Warning Event
        of a new failure a person must fix (posted once, by the write that makes it)."""
        assert self.kube is not None
        if not st.changed(body, want.status):
            return body, []
        ns, name = key
        last = self._last.get(key)
        if last is not None and last[0] == want.status \
                and last[1] == body["metadata"].get("resourceVersion"):
            # Applied already and nobody wrote since, yet status still differs: something the
            # apply cannot change is in the way. Applying again would only loop.
            log.warning("%s/%s: status still differs from the one just applied; not applying "
                        "it again until the object changes", ns, name)
            return body, []
        events = st.failure_events(body, want)
        result = await self.kube.apply_status(ns, name, body["metadata"]["uid"], want.status)
        self._last[key] = (dict(want.status),
                           str((result.get("metadata") or {}).get("resourceVersion")))
        self.cache.connection("MODIFIED", result)
        # INFO when Ready changes; every other write (a new attempt count in the message, a
        # gateway's report) only at DEBUG: a busy cluster's log stays readable.
        conditions = (body.get("status") or {}).get("conditions") or []
        before: Mapping[str, Any] = next(
            (c for c in conditions if c.get("type") == cond.READY), {})
        changed = (before.get("status"), before.get("reason")) != (want.ready.status,
                                                                   str(want.ready.reason))
        log.log(logging.INFO if changed else logging.DEBUG, "%s/%s: Ready=%s %s", ns, name,
                want.ready.status, want.ready.reason)
        return self.cache.connections.get(key, body), events

    def post(self, body: Mapping[str, Any], events: Sequence[Event]) -> None:
        """Best effort and in the background: a burst of due restarts must not wait for
        Events to be posted."""
        assert self.kube is not None
        for event in events:
            self._spawn(self.kube.post_event(body, event.type, event.reason, event.message))
