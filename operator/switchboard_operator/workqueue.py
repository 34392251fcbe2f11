"""The work queue: at most one reconcile per key at a time, coalesced, bounded, retried.

client-go's workqueue in asyncio, in the few lines the operator needs: a key poked while its
reconcile runs is reconciled once more afterwards (never twice at once); at most
``concurrency`` reconciles run; a failed one is retried after 1, 2, 4, ... s (capped); and
every task it starts is tracked, so a crash is logged and stepping down cancels them all.
(kopf has no queue of its own that could be used apart from its handlers.)
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from switchboard_contract.backoff import doubling
from switchboard_operator import metrics
from switchboard_operator.restarts import Key

log = logging.getLogger(__name__)

# Reconciles in flight at once. Measured: 48 made a burst of 100 due restarts slower than 16
# (more concurrent TLS connections and apiserver contention on a small control plane).
MAX_CONCURRENT = 16
# Seconds before retrying a failed reconcile: 1, 2, 4, ... up to 60.
ERROR_BACKOFF_FIRST, ERROR_BACKOFF_MAX = 1.0, 60.0

CallLater = Callable[[float, Callable[[Key], None], Key], asyncio.TimerHandle]


def _call_later(delay: float, callback: Callable[[Key], None], key: Key) -> asyncio.TimerHandle:
    return asyncio.get_running_loop().call_later(delay, callback, key)


class WorkQueue:
    def __init__(self, handle: Callable[[Key], Awaitable[None]], *,
                 before: Callable[[], Awaitable[None]] | None = None,
                 concurrency: int = MAX_CONCURRENT, call_later: CallLater = _call_later) -> None:
        """``handle(key)`` reconciles one key and raises to be retried; ``before()`` is
        awaited before each (a priority, see restart_executor); ``call_later`` schedules the
        retries (a fake in tests)."""
        self._handle, self._before = handle, before
        self._concurrency = concurrency
        self._call_later = call_later
        self.active = False  # only the leader works; pokes meanwhile are dropped
        self.ready = False  # until the caches are listed, pokes are held
        self._held: set[Key] = set()
        self._running: set[Key] = set()
        self._dirty: set[Key] = set()
        self._errors: dict[Key, int] = {}
        self._retry: dict[Key, asyncio.TimerHandle] = {}
        self._sem: asyncio.Semaphore | None = None
        self.tasks: set[asyncio.Task[Any]] = set()

    def add(self, key: Key) -> None:
        """Reconcile ``key`` soon; coalesces with a running reconcile of the same key."""
        if not self.active:
            return
        if not self.ready:
            self._held.add(key)
            return
        if key in self._running:
            self._dirty.add(key)
            return
        self._running.add(key)
        self.spawn(self._run(key))

    def release_held(self) -> None:
        """The caches are listed: held keys are reconciled."""
        self.ready = True
        held, self._held = self._held, set()
        for key in held:
            self.add(key)

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        """Run ``coro`` as tracked work: cancelled by stop(), its crash logged and counted."""
        task = asyncio.get_running_loop().create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self.tasks.discard(task)
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            metrics.RECONCILE_ERRORS.inc()
            log.error("background task %s failed: %s",
                      getattr(task.get_coro(), "__qualname__", task.get_name()),
                      exc, exc_info=exc)

    async def _run(self, key: Key) -> None:
        if self._sem is None:
            self._sem = asyncio.Semaphore(self._concurrency)
        try:
            while True:
                self._dirty.discard(key)
                if self._before is not None:
                    await self._before()
                async with self._sem:
                    if not self.active:
                        return
                    await self._handle(key)
                if key not in self._dirty:
                    return
        finally:
            self._running.discard(key)

    def succeeded(self, key: Key) -> None:
        self._errors.pop(key, None)

    def failed(self, key: Key) -> float:
        """Retry ``key`` after its next back-off delay (seconds, returned)."""
        n = self._errors.get(key, 0) + 1
        self._errors[key] = n
        delay = doubling(ERROR_BACKOFF_FIRST, n, ERROR_BACKOFF_MAX)
        old = self._retry.pop(key, None)
        if old is not None:
            old.cancel()
        self._retry[key] = self._call_later(delay, self._retry_now, key)
        return delay

    def _retry_now(self, key: Key) -> None:
        self._retry.pop(key, None)
        self.add(key)

    def forget(self, key: Key) -> None:
        """The key is gone: no retry, no error count."""
        self._errors.pop(key, None)
        retry = self._retry.pop(key, None)
        if retry is not None:
            retry.cancel()

    def pending(self, key: Key) -> bool:
        """Whether ``key`` is being reconciled or waits for a retry."""
        return key in self._running or key in self._retry or key in self._errors

    def idle(self) -> bool:
        return not self._running and not any(not t.done() for t in self.tasks)

    def stop(self) -> None:
        """Drop everything queued and cancel every task in flight (stepping down)."""
        self.active = False
        for handle in self._retry.values():
            handle.cancel()
        self._retry.clear()
        self._dirty.clear()
        for task in list(self.tasks):
            task.cancel()
