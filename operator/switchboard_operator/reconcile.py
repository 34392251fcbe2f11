"""The controller: one reconcile per connection, from the caches, in its parts.

The parts, one concern each: the cache of what the watches saw (cache.py), the work queue
(workqueue.py), the children reconciler (children_reconciler.py), the status writer
(status_writer.py), the restart executor (restart_executor.py) and the timers (restarts.py).
This module wires them: a watch event updates the cache and queues the connection; a reconcile
decides (decide.py, pure) and then executes a due restart, applies the children, writes status,
posts Events and arms the connection's next timer.

Why not kopf's on.create/on.update handlers: they ignore status (where the gateway reports),
field handlers on status would write kopf's diff-base annotation on every gateway write, and
TemporaryError retries are fixed-delay. Level-triggered reconciles from our own caches write
only what changed, so an idle connection costs no API request.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import quote

import aiohttp

from switchboard_contract import Field
from switchboard_operator import children, metrics, pod_problems
from switchboard_operator import policy as pol
from switchboard_operator import secrets as sec
from switchboard_operator import status as st
from switchboard_operator import webhook_children as wh
from switchboard_operator.cache import Cache, resource_version
from switchboard_operator.children_reconciler import ChildrenReconciler
from switchboard_operator.circuit import Event, parse_time
from switchboard_operator.decide import Plan, decide
from switchboard_operator.kube import ApiError, Kube, NotLeading, connection_path
from switchboard_operator.restart_executor import RestartExecutor
from switchboard_operator.restarts import Clock, Key, Timers, utcnow
from switchboard_operator.status_writer import StatusWriter
from switchboard_operator.workqueue import WorkQueue

log = logging.getLogger(__name__)

# While a connection's Secret is missing or unlabelled, how often its metadata is looked at
# again (seconds): a Secret created without the label is not watched, so only this notices it.
SECRET_RECHECK = 30
# While a gateway has neither reported nor become available, its pods are listed this often.
POD_RECHECK = 15
# A fresh report comes within a second; the readiness probe (period 5 s, the gateway's own
# "connected") marks the pod available a few seconds later.
UNAVAILABLE_GRACE = 30


class Controller:
    def __init__(self, clock: Clock = utcnow) -> None:
        # Every time a decision uses is read here (tests inject a fake clock).
        self.clock = clock
        self.policy = pol.Policy()
        self.cache = Cache()
        self.queue = WorkQueue(self._reconcile_guarded, before=self._deletions_first)
        # Every watch has listed once (readiness: decisions now see the whole cluster).
        self.listed = False
        # How long a connected report may stand while the Deployment has no available pod.
        self.unavailable_grace = timedelta(seconds=UNAVAILABLE_GRACE)
        self.timers = Timers(self._wake, clock)
        self.restarts = RestartExecutor(clock, self.queue.spawn)
        self.children = ChildrenReconciler(self.cache)
        self.status = StatusWriter(self.cache, self.queue.spawn)
        self._kube: Kube | None = None

    @property
    def kube(self) -> Kube | None:
        return self._kube

    @kube.setter
    def kube(self, kube: Kube | None) -> None:
        """The one API client every part writes with (set once credentials are known)."""
        self._kube = self.restarts.kube = self.children.kube = self.status.kube = kube

    @property
    def connections(self) -> dict[Key, dict[str, Any]]:
        return self.cache.connections

    @property
    def leading(self) -> bool:
        return self.queue.active

    # -- feeding from the watches ------------------------------------------------------------

    def observe_connection(self, kind: str | None, obj: Mapping[str, Any]) -> None:
        key = self.cache.connection(kind, obj)
        if key is None:
            return
        if kind == "DELETED":
            self.children.forget(key)
            self.status.forget(key)
            self.queue.forget(key)
            self.restarts.recorded(key)
            self.timers.cancel(key)
            return
        self.poke(key)

    def observe_deployment(self, kind: str | None, obj: Mapping[str, Any]) -> None:
        key = self.cache.deployment(kind, obj)
        if key is not None:
            self.poke(key)

    def observe_child(self, kind: str, event: str | None, obj: Mapping[str, Any]) -> None:
        key = self.cache.child(kind, event, obj)
        if key is not None:
            self.poke(key)

    def observe_secret(self, kind: str | None, obj: Mapping[str, Any]) -> None:
        for key in self.cache.secret(kind, obj):
            self.poke(key)

    def caches_listed(self) -> None:
        """Every watch has listed its objects: held reconciles run. Until then a reconcile
        would see every Secret as missing (and scale gateways to 0) or a Deployment as
        absent."""
        self.listed = True
        self.queue.release_held()

    # -- leadership ----------------------------------------------------------------------------

    def start_leading(self) -> None:
        self.queue.active = True
        for key in list(self.cache.connections):
            self.poke(key)

    def stop_leading(self) -> None:
        """Stop acting at once: timers, retries and every task in flight (reconciles, pod
        deletions, Events) are cancelled; a new leader takes over from the state in the API."""
        self.queue.stop()
        self.timers.cancel_all()
        self.restarts.clear()

    # -- scheduling ----------------------------------------------------------------------------

    def poke(self, key: Key) -> None:
        """Reconcile ``key`` soon."""
        if self._kube is not None:
            self.queue.add(key)

    async def _deletions_first(self) -> None:
        await self.restarts.deletions_first()

    def _wake(self, key: Key) -> None:
        """A connection's timer expired. A due restart is executed right here, not behind the
        reconcile queue: with many restarts due in the same second, every pod deletion is sent
        at once, and the reconciles (status writes, Events) follow."""
        if not self.queue.active or self._kube is None:
            return
        if not self.queue.ready:
            self.queue.add(key)  # held until the caches are listed
            return
        body = self.cache.connections.get(key)
        if body is not None and not body["metadata"].get("deletionTimestamp"):
            plan = self._decide(key, body, self.clock())[0]
            if plan.restart_due is not None:
                self.queue.spawn(self._restart_then_reconcile(key, body, plan))
                return
        self.poke(key)

    async def _restart_then_reconcile(self, key: Key, body: Mapping[str, Any],
                                      plan: Plan) -> None:
        try:
            await self.restarts.start(key, body, plan)
        except NotLeading:
            return
        except Exception as exc:  # the reconcile retries (and reports) it
            log.info("restart of %s/%s from its timer failed: %s", *key, exc)
        self.poke(key)

    async def _reconcile_guarded(self, key: Key) -> None:
        metrics.RECONCILES.inc()
        try:
            await self.reconcile(key)
            self.queue.succeeded(key)
        except NotLeading:
            return  # stepped down meanwhile: the new leader does it
        except ApiError as exc:
            if exc.status in (404, 409) and key in self.cache.connections:
                # Gone, or replaced by a new object of the same name (the status write's uid
                # precondition): the cache may be stale. Ask the API, not the watch.
                with contextlib.suppress(ApiError, aiohttp.ClientError, TimeoutError):
                    await self._refresh_connection(key)
            self._failed(key, exc)
        except (TimeoutError, aiohttp.ClientError) as exc:
            self._failed(key, exc)
        except Exception as exc:
            log.exception("reconcile of %s/%s crashed", *key)
            self._failed(key, exc)

    async def _refresh_connection(self, key: Key) -> None:
        """Replace the cached connection with the API's (or forget it if the API has none)."""
        assert self.kube is not None
        try:
            fresh = await self.kube.request("GET", connection_path(*key))
        except ApiError as exc:
            if exc.status != 404:
                raise
            log.info("%s/%s: gone from the API although cached: forgotten", *key)
            self.observe_connection("DELETED", {"metadata": {"namespace": key[0],
                                                             "name": key[1]}})
            return
        cached = self.cache.connections.get(key) or {}
        if fresh["metadata"].get("uid") != (cached.get("metadata") or {}).get("uid"):
            self.observe_connection("DELETED", cached or {"metadata": fresh["metadata"]})
            self.observe_connection("MODIFIED", fresh)
        elif resource_version(fresh) > resource_version(cached):
            self.observe_connection("MODIFIED", fresh)

    def _failed(self, key: Key, exc: BaseException) -> None:
        metrics.RECONCILE_ERRORS.inc()
        if isinstance(exc, ApiError) and exc.status in (404, 409) \
                and key not in self.cache.connections:
            return  # deleted meanwhile
        delay = self.queue.failed(key)
        log.warning("reconcile of %s/%s failed (retry in %ss): %s", *key, delay, exc)

    # -- the reconcile -------------------------------------------------------------------------

    async def reconcile(self, key: Key) -> None:
        cached = self.cache.connections.get(key)
        if cached is None or cached["metadata"].get("deletionTimestamp"):
            self.timers.cancel(key)
            return
        body: Mapping[str, Any] = cached
        ns, name = key
        body = await self._remove_foreign_fields(key, body)
        await self._look_at_unwatched_secret(ns, body)
        await self._ensure_webhook_token(key, body)
        plan, ref, missing, refused, secret_hash, applied_hash = self._decide(key, body,
                                                                             self.clock())
        restarted = plan.restart_due is not None
        if restarted:
            # First, before any other work: a due restart is the time-critical part (usually
            # done already by the timer's fast path; then this only picks up its result).
            plan = await self.restarts.execute(key, body, plan)
        else:
            # Nothing (or something else) is due now: a recorded deletion is stale.
            self.restarts.recorded(key)

        # Children before status: the status below describes what was applied (or the API
        # server's refusal of it).
        outcome = await self.children.reconcile(key, body, ref, plan, secret_hash, refused)
        live = outcome.live
        if outcome.apply_failed is not None:
            # status.appliedHash keeps naming what was last applied.
            applied_hash = (body.get("status") or {}).get("appliedHash") or ""

        waiting = self._waiting_for_a_pod(body, plan, live)
        pod_problem = await self._pod_problem(key) if waiting else None
        want = st.desired(body, plan, secret_missing=missing,
                          rollout_in_progress=self.cache.rolling_out(key, live),
                          applied_hash=applied_hash, now=self.clock(),
                          policy_violation=refused, apply_failed=outcome.apply_failed,
                          replica_failure=(live or {}).get("replicaFailure")
                          if plan.replicas else None,
                          available_replicas=None if live is None
                          else int(live["status"].get("availableReplicas") or 0),
                          unavailable_since=parse_time((live or {}).get("unavailableSince")),
                          unavailable_grace=self.unavailable_grace, pod_problem=pod_problem)
        body, warnings = await self.status.write(key, body, want)
        if restarted:
            self.restarts.recorded(key)  # recorded in status (or nothing changed)
        self.status.post(body, [*plan.events, *warnings])

        metrics.CIRCUIT_STATE.labels(ns, name).set(
            metrics.CIRCUIT_VALUES[plan.circuit.state.value])
        wakes = [w for w in (*plan.wake, want.wake) if w is not None]
        if ref is not None and self.cache.secrets.get(ns, ref.name) is None:
            wakes.append(self.clock() + timedelta(seconds=SECRET_RECHECK))
        if waiting:  # pods are not watched: look again for a pod that cannot start
            wakes.append(self.clock() + timedelta(seconds=POD_RECHECK))
        self.timers.arm(key, min(wakes) if wakes else None)
        if outcome.retry_error is not None:
            raise outcome.retry_error

    def _waiting_for_a_pod(self, body: Mapping[str, Any], plan: Plan,
                           live: Mapping[str, Any] | None) -> bool:
        """No current report from the gateway and no pod available, though one is wanted."""
        if live is None or not plan.replicas or live["status"].get("availableReplicas"):
            return False
        return plan.superseded or not (body.get("status") or {}).get(Field.STATE)

    async def _pod_problem(self, key: Key) -> str | None:
        assert self.kube is not None
        try:
            pods = await self.kube.list_pods(key[0], children.pod_selector(key[1]))
        except ApiError as exc:  # e.g. an older chart's RBAC without pods list: just less said
            log.debug("%s/%s: cannot list gateway pods: %s", *key, exc)
            return None
        return pod_problems.problem(pods)

    async def _remove_foreign_fields(self, key: Key,
                                     body: Mapping[str, Any]) -> Mapping[str, Any]:
        """Operator fields written by another manager are removed before anything is decided
        from them (a Warning Event says who wrote what); the apply below then sets its own."""
        foreign = st.foreign_fields(body)
        if not foreign:
            return body
        assert self.kube is not None
        ns, name = key
        result = await self.kube.remove_status_fields(
            ns, name, body["metadata"].get("resourceVersion", ""), foreign)
        self.observe_connection("MODIFIED", result)
        who = ", ".join(f"{field} (by {manager})" for field, manager in sorted(foreign.items()))
        log.warning("%s/%s: removed status fields the operator owns, written by others: %s",
                    ns, name, who)
        self.status.post(result, [Event(
            "Warning", "StatusFieldRemoved",
            f"Removed status fields only the operator writes: {who}. Change the spec (or "
            "the reset-circuit annotation) instead.")])
        fresh: Mapping[str, Any] = self.cache.connections.get(key, result)
        return fresh

    async def _look_at_unwatched_secret(self, ns: str, body: Mapping[str, Any]) -> None:
        """A referenced Secret the watch does not hold: absent, or present without the label?
        Its metadata tells, without reading its data."""
        assert self.kube is not None
        ref = sec.reference(body.get("spec") or {})
        if ref is None or self.cache.secrets.get(ns, ref.name) is not None:
            return
        meta = await self.kube.metadata(f"/api/v1/namespaces/{quote(ns)}/secrets/"
                                        f"{quote(ref.name)}")
        labels = ((meta or {}).get("metadata") or {}).get("labels") or {}
        if meta is not None and labels.get(sec.CREDENTIALS_LABEL) != sec.CREDENTIALS_VALUE:
            self.cache.unlabelled.add((ns, ref.name))
        else:
            self.cache.unlabelled.discard((ns, ref.name))

    async def _ensure_webhook_token(self, key: Key, body: Mapping[str, Any]) -> None:
        """A webhook connection's secret token: generated once, in a Secret the operator
        creates and owns (webhook_children.py). Never applied again: that would replace it."""
        assert self.kube is not None
        if not wh.needs_token(body.get("spec") or {}):
            return
        name = wh.secret_name(key[1])
        if self.cache.secrets.get(key[0], name) is not None:
            return
        created = await self.kube.create(wh.token_secret(body, wh.new_token()))
        if created is None:  # exists, yet not in the watch: it lacks the credentials label
            self.cache.unlabelled.add((key[0], name))
            return
        self.cache.secret("ADDED", created)
        log.info("%s/%s: created Secret %s with the webhook's secret token", *key, name)

    def _decide(self, key: Key, body: Mapping[str, Any], now: datetime
                ) -> tuple[Plan, sec.SecretRef | None, str | None, str | None, str, str]:
        """decide() on the cached state; also what the children and status need: the Secret
        reference, what is missing of it, what the policy refuses, and the hashes."""
        ns = key[0]
        spec = body.get("spec") or {}
        ref = sec.reference(spec)
        used = [r for r in (ref, wh.token_ref(key[1]) if wh.needs_token(spec) else None) if r]
        self.cache.secrets.refer(key, *(r.name for r in used))
        if ref is None:
            missing = sec.missing(None, None)
        else:
            missing = "; ".join(m for r in used if (m := sec.missing(
                r, self.cache.secrets.get(ns, r.name),
                unlabelled=(ns, r.name) in self.cache.unlabelled))) or None
        secret_hash = "" if missing else ":".join(
            sec.referenced_hash(r, self.cache.secrets.get(ns, r.name)) for r in used)
        applied_hash = f"{children.spec_hash(spec)}:{secret_hash}"
        previous_hash = (body.get("status") or {}).get("appliedHash")
        rolled = bool(previous_hash) and previous_hash != applied_hash
        refused = "; ".join(pol.violations(spec, self.policy, children.DEFAULT_IMAGE)) or None
        plan = decide(body, blocked=refused or missing, rolled=rolled, now=now)
        return plan, ref, missing, refused, secret_hash, applied_hash

    async def close(self) -> None:
        self.stop_leading()
        if self._kube is not None:
            await self._kube.close()
