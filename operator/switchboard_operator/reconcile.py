"""The controller: caches fed by kopf's watches, one serialized reconcile per connection.

Why not kopf's on.create/on.update handlers: they ignore status (where the gateway reports),
field handlers on status would write kopf's diff-base annotation on every gateway write, and
TemporaryError retries are fixed-delay. Instead kopf only watches (raw events and indexes, which
never write), and this module reconciles level-triggered from its caches: children by
server-side apply when their hash changed, restarts and the circuit by our own timers, status
by SSA only when it changed. An idle connection therefore costs no API request.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from datetime import datetime
from typing import Any

import aiohttp

from switchboard_operator import children, metrics
from switchboard_operator import secrets as sec
from switchboard_operator import status as st
from switchboard_operator.circuit import Event, format_time
from switchboard_operator.conditions import rollout_in_progress
from switchboard_operator.decide import Plan, after_restart, decide
from switchboard_operator.kube import ApiError, Kube
from switchboard_operator.restarts import Key, Timers, utcnow

log = logging.getLogger(__name__)

# Reconciles in flight at once. Measured: 48 made a burst of 100 due restarts slower than 16
# (more concurrent TLS connections and apiserver contention on a small control plane).
MAX_CONCURRENT = 16
ERROR_BACKOFF = (1, 2, 5, 10, 30, 60)


def _rv(obj: Mapping[str, Any]) -> int:
    """resourceVersion as a number: etcd revisions, so a stale watch event never wins over
    the object our own write returned."""
    value = (obj.get("metadata") or {}).get("resourceVersion") or "0"
    return int(value) if value.isdigit() else 0


def _deployment_summary(obj: Mapping[str, Any]) -> dict[str, Any]:
    """The few fields of a Deployment the operator needs (keeps memory small at scale)."""
    meta, spec, status = obj.get("metadata") or {}, obj.get("spec") or {}, obj.get("status") or {}
    return {
        "metadata": {"generation": meta.get("generation", 0),
                     "resourceVersion": meta.get("resourceVersion", "0"),
                     "annotations": {children.ANN_APPLIED_HASH: (meta.get("annotations") or {})
                                     .get(children.ANN_APPLIED_HASH)}},
        "spec": {"replicas": spec.get("replicas", 1)},
        "status": {k: status.get(k, 0) for k in ("observedGeneration", "replicas",
                                                  "updatedReplicas")},
    }


def _without_rv(summary: Mapping[str, Any]) -> dict[str, Any]:
    meta = {k: v for k, v in summary["metadata"].items() if k != "resourceVersion"}
    return {**summary, "metadata": meta}


class Controller:
    def __init__(self) -> None:
        self.kube: Kube | None = None
        self.connections: dict[Key, dict[str, Any]] = {}
        self.deployments: dict[Key, dict[str, Any]] = {}
        self.secrets = sec.SecretCache()
        self.states: dict[Key, str | None] = {}
        self.timers = Timers(self.poke)
        self.leading = False
        self._running: set[Key] = set()
        self._dirty: set[Key] = set()
        self._errors: dict[Key, int] = {}
        self._retry: dict[Key, asyncio.TimerHandle] = {}
        self._sem: asyncio.Semaphore | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        # key -> ((resourceVersion, secret hash, replicas), applied hash) of the last build.
        self._built: dict[Key, tuple[tuple[Any, str, int], str]] = {}

    # -- feeding from the watches ------------------------------------------------------------

    def observe_connection(self, kind: str | None, obj: Mapping[str, Any]) -> None:
        meta = obj["metadata"]
        key = (meta["namespace"], meta["name"])
        if kind == "DELETED":
            self.connections.pop(key, None)
            self._built.pop(key, None)
            self.secrets.unrefer(key)
            self.states.pop(key, None)
            self.timers.cancel(key)
            metrics.forget_connection(*key)
            self._update_state_gauge()
            return
        old = self.connections.get(key)
        if old is not None and old["metadata"].get("uid") == meta.get("uid") \
                and _rv(old) > _rv(obj):
            return  # older than what our own write returned
        self.connections[key] = dict(obj)
        state = (obj.get("status") or {}).get("state")
        if self.states.get(key, "-") != state:
            self.states[key] = state
            self._update_state_gauge()
        self.poke(key)

    def observe_deployment(self, kind: str | None, obj: Mapping[str, Any]) -> None:
        meta = obj["metadata"]
        connection = (meta.get("labels") or {}).get(children.LABEL_CONNECTION)
        if not connection:
            return
        key = (meta["namespace"], connection)
        if kind == "DELETED":
            self.deployments.pop(key, None)
            self.poke(key)
            return
        summary = _deployment_summary(obj)
        old = self.deployments.get(key)
        if old is not None and _rv(old) > _rv(summary):
            return
        self.deployments[key] = summary
        if old is None or _without_rv(old) != _without_rv(summary):
            self.poke(key)

    def observe_secret(self, kind: str | None, obj: Mapping[str, Any]) -> None:
        meta = obj["metadata"]
        ns, name = meta["namespace"], meta["name"]
        if kind == "DELETED":
            self.secrets.drop(ns, name)
            changed = True
        else:
            changed = self.secrets.store(ns, name, obj)
        if changed:
            for key in self.secrets.users(ns, name):
                self.poke(key)

    def _update_state_gauge(self) -> None:
        metrics.set_connection_states(self.states)

    # -- leadership ----------------------------------------------------------------------------

    def start_leading(self) -> None:
        self.leading = True
        for key in list(self.connections):
            self.poke(key)

    def stop_leading(self) -> None:
        self.leading = False
        self.timers.cancel_all()
        for handle in self._retry.values():
            handle.cancel()
        self._retry.clear()

    # -- scheduling of reconciles --------------------------------------------------------------

    def poke(self, key: Key) -> None:
        """Reconcile ``key`` soon; coalesces with a running reconcile of the same key."""
        if not self.leading or self.kube is None:
            return
        if key in self._running:
            self._dirty.add(key)
            return
        self._running.add(key)
        self._spawn(self._run(key))

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(self, key: Key) -> None:
        if self._sem is None:
            self._sem = asyncio.Semaphore(MAX_CONCURRENT)
        try:
            while True:
                self._dirty.discard(key)
                async with self._sem:
                    if not self.leading:
                        return
                    await self._reconcile_guarded(key)
                if key not in self._dirty:
                    return
        finally:
            self._running.discard(key)

    async def _reconcile_guarded(self, key: Key) -> None:
        metrics.RECONCILES.inc()
        try:
            await self.reconcile(key)
            self._errors.pop(key, None)
        except (TimeoutError, ApiError, aiohttp.ClientError) as exc:
            self._failed(key, exc)
        except Exception as exc:
            log.exception("reconcile of %s/%s crashed", *key)
            self._failed(key, exc)

    def _failed(self, key: Key, exc: BaseException) -> None:
        metrics.RECONCILE_ERRORS.inc()
        if isinstance(exc, ApiError) and exc.status in (404, 409) \
                and key not in self.connections:
            return  # deleted meanwhile
        n = self._errors.get(key, 0)
        self._errors[key] = n + 1
        delay = ERROR_BACKOFF[min(n, len(ERROR_BACKOFF) - 1)]
        log.warning("reconcile of %s/%s failed (retry in %ss): %s", *key, delay, exc)
        old = self._retry.pop(key, None)
        if old is not None:
            old.cancel()
        self._retry[key] = asyncio.get_running_loop().call_later(delay, self._retry_now, key)

    def _retry_now(self, key: Key) -> None:
        self._retry.pop(key, None)
        self.poke(key)

    # -- the reconcile -------------------------------------------------------------------------

    async def reconcile(self, key: Key) -> None:
        body = self.connections.get(key)
        if body is None or body["metadata"].get("deletionTimestamp"):
            self.timers.cancel(key)
            return
        assert self.kube is not None
        now = utcnow()
        spec = body.get("spec") or {}
        ns, name = key

        ref = sec.reference(spec)
        self.secrets.refer(key, ref)
        cached = self.secrets.get(ns, ref.name) if ref else None
        missing = sec.missing(ref, cached)
        secret_hash = "" if missing else sec.referenced_hash(ref, cached)
        applied_hash = f"{children.spec_hash(spec)}:{secret_hash}"
        previous_hash = (body.get("status") or {}).get("appliedHash")
        rolled = bool(previous_hash) and previous_hash != applied_hash

        plan = decide(body, secret_missing=missing, rolled=rolled, now=now)
        if plan.restart_due is not None:
            # First, before any other work: a due restart is the time-critical part.
            plan = await self._restart(body, plan)

        # Children before status: the status below describes what was applied. Building and
        # hashing the manifests is skipped when nothing they depend on changed.
        live = self.deployments.get(key)
        memo = (body["metadata"].get("resourceVersion"), secret_hash, plan.replicas)
        cached_want = self._built.get(key)
        if cached_want is not None and cached_want[0] == memo and live is not None \
                and live["metadata"]["annotations"].get(children.ANN_APPLIED_HASH) \
                == cached_want[1]:
            pass
        else:
            objs = children.build(body, ref, replicas=plan.replicas, secret_hash=secret_hash)
            want = objs[-1]["metadata"]["annotations"][children.ANN_APPLIED_HASH]
            if live is None \
                    or live["metadata"]["annotations"].get(children.ANN_APPLIED_HASH) != want:
                for obj in objs:
                    result = await self.kube.apply(obj)
                self.observe_deployment("MODIFIED", result)
                live = self.deployments.get(key)
                log.info("applied children of %s/%s (replicas %s)", ns, name, plan.replicas)
            self._built[key] = (memo, want)

        want_status = st.desired(body, plan, secret_missing=missing,
                                 rollout_in_progress=rollout_in_progress(live),
                                 applied_hash=applied_hash, now=utcnow())
        if st.changed(body, want_status.status):
            result = await self.kube.apply_status(ns, name, body["metadata"]["uid"],
                                                  want_status.status)
            self.observe_connection("MODIFIED", result)
            body = self.connections.get(key, body)
            log.info("%s/%s: Ready=%s %s", ns, name, want_status.ready.status,
                     want_status.ready.reason)
        for event in plan.events:
            # Best effort and off the reconcile's path: a burst of due restarts must not wait
            # for Events to be posted.
            self._spawn(self.kube.post_event(body, event.type, event.reason, event.message))

        metrics.CIRCUIT_STATE.labels(ns, name).set(
            metrics.CIRCUIT_VALUES[plan.circuit.state.value])
        wakes = [w for w in (*plan.wake, want_status.wake) if w is not None]
        self.timers.arm(key, min(wakes) if wakes else None)

    async def _restart(self, body: Mapping[str, Any], plan: Plan) -> Plan:
        """Delete the gateway pod(s); the Deployment creates a fresh one."""
        assert self.kube is not None and plan.restart_due is not None
        ns, name = body["metadata"]["namespace"], body["metadata"]["name"]
        due: datetime = plan.restart_due
        # The pod that reported is the one to restart (cheapest for the apiserver); without a
        # name, or if that pod is gone already, whatever gateway pod runs.
        selector = children.pod_selector(name)
        pod = (body.get("status") or {}).get("gatewayPod")
        deleted = await self.kube.delete_pods(ns, selector, pod) if pod else []
        if not deleted:
            deleted = await self.kube.delete_pods(ns, selector)
        now = utcnow()
        lateness = (now - due).total_seconds()
        metrics.RESTART_DELAY.observe(max(0.0, lateness))
        metrics.RESTARTS.labels(plan.restart_reason).inc()
        if plan.backoff_seconds:
            metrics.RESTART_BACKOFF.observe(plan.backoff_seconds)
        log.info("%s/%s: restarted gateway (deleted %s) %.3fs after due time %s", ns, name,
                 ", ".join(deleted) or "no pods", lateness, format_time(due))
        new = after_restart(plan, now)
        new.events = [*plan.events, Event(
            "Normal", "GatewayRestarted",
            f"Restarted the gateway after a retryable fatal error ({plan.restart_reason}); "
            f"restart {new.schedule.restarts}, consecutive failures "
            f"{plan.circuit.consecutive_failures}, back-off {plan.backoff_seconds:.0f}s.")]
        return new

    async def close(self) -> None:
        self.stop_leading()
        for task in list(self._tasks):
            task.cancel()
        if self.kube is not None:
            await self.kube.close()
