"""Executes due restarts: deletes the pod of the failure record, once per due time.

decide.py says *when* a restart is due and which pod failed; this module does the deletion and
its bookkeeping. The timer's fast path (the due moment) and the reconcile share one deletion
per due time; a failed deletion may be tried again. While deletions are in flight, reconciles
wait (``deletions_first``): in a burst of restarts due in the same second every deletion goes
first, instead of sharing the connections and the apiserver with the follow-up status writes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Coroutine, Mapping
from datetime import datetime
from typing import Any

from switchboard_operator import children, metrics
from switchboard_operator.circuit import Event, format_time
from switchboard_operator.decide import Plan, after_restart
from switchboard_operator.kube import Kube
from switchboard_operator.restarts import Clock, Key

log = logging.getLogger(__name__)

# Longest a reconcile waits for due restarts' pod deletions in flight to finish (seconds).
DELETIONS_FIRST = 2.0

Deletion = asyncio.Task[tuple[datetime, list[str]]]


class RestartExecutor:
    def __init__(self, clock: Clock,
                 spawn: Callable[[Coroutine[Any, Any, Any]], asyncio.Task[Any]]) -> None:
        self.clock, self._spawn = clock, spawn
        self.kube: Kube | None = None
        # key -> (due time, the pod deletion of that restart), kept until the status
        # recording it (restarts, lastRestartTime) is written.
        self._started: dict[Key, tuple[datetime, Deletion]] = {}
        self._deleting = 0
        self._done: asyncio.Event | None = None

    def _idle(self) -> asyncio.Event:
        if self._done is None:
            self._done = asyncio.Event()
            self._done.set()
        return self._done

    async def deletions_first(self) -> None:
        """Wait (a little) while deletions are in flight: a priority, not a lock, so a
        hanging deletion holds nothing up for long."""
        if self._deleting:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._idle().wait(), DELETIONS_FIRST)

    def start(self, key: Key, body: Mapping[str, Any], plan: Plan) -> Deletion:
        """The pod deletion of the restart due at ``plan.restart_due``, started at most once;
        a failed one may be tried again."""
        assert plan.restart_due is not None
        entry = self._started.get(key)
        if entry is not None and entry[0] == plan.restart_due and not (
                entry[1].done() and (entry[1].cancelled() or entry[1].exception())):
            return entry[1]
        task: Deletion = self._spawn(self._delete_gateway(body, plan))
        self._started[key] = (plan.restart_due, task)
        return task

    async def execute(self, key: Key, body: Mapping[str, Any], plan: Plan) -> Plan:
        """The plan once its due restart is executed (or found executed), with its Event."""
        now, deleted = await self.start(key, body, plan)
        new = after_restart(plan, now)
        done = "Restarted the gateway" if deleted else \
            "The gateway pod that failed was already replaced (its replacement is kept)"
        new.events = [*plan.events, Event(
            "Normal", "GatewayRestarted",
            f"{done} after a retryable fatal error ({plan.restart_reason}); "
            f"restart {new.schedule.restarts}, consecutive failures "
            f"{plan.circuit.consecutive_failures}, back-off {plan.backoff_seconds:.0f}s.")]
        return new

    def recorded(self, key: Key) -> None:
        """Status records the restart (or nothing is due): its deletion is done with."""
        self._started.pop(key, None)

    def clear(self) -> None:
        self._started.clear()

    async def _delete_gateway(self, body: Mapping[str, Any],
                              plan: Plan) -> tuple[datetime, list[str]]:
        """Delete the gateway pod; the Deployment creates a fresh one."""
        assert self.kube is not None and plan.restart_due is not None
        ns, name = body["metadata"]["namespace"], body["metadata"]["name"]
        due: datetime = plan.restart_due
        # The pod of the failure record is the one to restart (never the pod reporting now,
        # which may be its replacement), and only while it has the uid it reported with;
        # without a name, whatever gateway pod runs. If that pod is gone already, the restart
        # has happened: this operator deleted it and died before recording that, or someone
        # else removed it. Its replacement is fresh and is kept.
        pod, uid = plan.schedule.failed_pod, plan.schedule.failed_pod_uid
        done = self._idle()
        self._deleting += 1
        done.clear()
        try:
            deleted = await self.kube.delete_pods(ns, children.pod_selector(name), pod, uid=uid)
        finally:
            self._deleting -= 1
            if not self._deleting:
                done.set()
        now = self.clock()
        lateness = (now - due).total_seconds()
        metrics.RESTART_DELAY.observe(max(0.0, lateness))
        metrics.RESTARTS.labels(plan.restart_reason).inc()
        if plan.backoff_seconds:
            metrics.RESTART_BACKOFF.observe(plan.backoff_seconds)
        if deleted:
            log.info("%s/%s: restarted gateway (deleted %s) %.3fs after due time %s", ns, name,
                     ", ".join(deleted), lateness, format_time(due))
        else:
            log.info("%s/%s: restart due %s: gateway pod %s already gone, replacement kept",
                     ns, name, format_time(due), pod or "(none)")
        return now, deleted
