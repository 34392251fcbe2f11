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
import contextlib
import logging
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import quote

import aiohttp

from switchboard_contract.backoff import doubling
from switchboard_operator import children, metrics
from switchboard_operator import policy as pol
from switchboard_operator import secrets as sec
from switchboard_operator import status as st
from switchboard_operator.circuit import Event, format_time
from switchboard_operator.conditions import rollout_in_progress
from switchboard_operator.decide import Plan, after_restart, decide
from switchboard_operator.kube import ApiError, Kube, NotLeading, connection_path
from switchboard_operator.restarts import Clock, Key, Timers, utcnow

log = logging.getLogger(__name__)

# HTTP statuses of an apply the API server refuses as invalid: applying the same objects again
# gets the same answer, so they wait for a change (the API conventions' 400 BadRequest and 422
# Invalid). Other failures (403, 409, 5xx, timeouts) are retried with back-off.
INVALID = (400, 422)
# Reconciles in flight at once. Measured: 48 made a burst of 100 due restarts slower than 16
# (more concurrent TLS connections and apiserver contention on a small control plane).
MAX_CONCURRENT = 16
# Seconds before retrying a failed reconcile: 1, 2, 4, ... up to 60.
ERROR_BACKOFF_FIRST, ERROR_BACKOFF_MAX = 1.0, 60.0
# Longest a reconcile waits for due restarts' pod deletions in flight to finish (seconds).
DELETIONS_FIRST = 2.0
# While a connection's Secret is missing or unlabelled, how often its metadata is looked at
# again (seconds): a Secret created without the label is not watched, so only this notices it.
SECRET_RECHECK = 30


def _rv(obj: Mapping[str, Any]) -> int:
    """resourceVersion as a number: etcd revisions, so a stale watch event never wins over
    the object our own write returned."""
    value = (obj.get("metadata") or {}).get("resourceVersion") or "0"
    return int(value) if value.isdigit() else 0


def _deployment_summary(obj: Mapping[str, Any]) -> dict[str, Any]:
    """The few fields of a Deployment the operator needs (keeps memory small at scale)."""
    meta, spec, status = obj.get("metadata") or {}, obj.get("spec") or {}, obj.get("status") or {}
    failure = next((c for c in status.get("conditions") or []
                    if c.get("type") == "ReplicaFailure" and c.get("status") == "True"), None)
    return {
        "metadata": {"generation": meta.get("generation", 0), "uid": meta.get("uid"),
                     "resourceVersion": meta.get("resourceVersion", "0"),
                     "annotations": {children.ANN_APPLIED_HASH: (meta.get("annotations") or {})
                                     .get(children.ANN_APPLIED_HASH)}},
        "spec": {"replicas": spec.get("replicas", 1)},
        "status": {k: status.get(k, 0) for k in ("observedGeneration", "replicas",
                                                  "updatedReplicas")},
        # The ReplicaSet could not create a pod (a quota, an admission webhook): "reason:
        # message", or None.
        "replicaFailure": f"{failure.get('reason')}: {failure.get('message')}"
        if failure is not None else None,
    }


def _without_rv(summary: Mapping[str, Any]) -> dict[str, Any]:
    meta = {k: v for k, v in summary["metadata"].items() if k != "resourceVersion"}
    return {**summary, "metadata": meta}


class Controller:
    def __init__(self, clock: Clock = utcnow) -> None:
        # Every time a decision uses is read here (tests inject a fake clock).
        self.clock = clock
        self.kube: Kube | None = None
        self.policy = pol.Policy()
        self.connections: dict[Key, dict[str, Any]] = {}
        self.deployments: dict[Key, dict[str, Any]] = {}
        # key -> (uid, generation) of the gateway Deployment last seen completely rolled out.
        self.completed: dict[Key, tuple[str | None, int]] = {}
        # key -> kind -> (resourceVersion, children.view_hash) of the live ServiceAccount, Role
        # and RoleBinding.
        self.aux: dict[Key, dict[str, tuple[int, str]]] = {}
        self.secrets = sec.SecretCache()
        # Referenced Secrets that exist without the credentials label (metadata seen only).
        self.unlabelled: set[Key] = set()
        # Until every watch has listed once, a reconcile would see every Secret as missing
        # (and scale gateways to 0) or a Deployment as absent: reconciles wait (held).
        self.caches_ready = False
        self._held: set[Key] = set()
        self.states: dict[Key, str | None] = {}
        self.timers = Timers(self._wake, clock)
        self.leading = False
        self._running: set[Key] = set()
        self._dirty: set[Key] = set()
        self._errors: dict[Key, int] = {}
        self._retry: dict[Key, asyncio.TimerHandle] = {}
        self._sem: asyncio.Semaphore | None = None
        # Pod deletions of due restarts in flight. Reconciles (status writes, applies, Events)
        # wait until there are none: in a burst of restarts due in the same second, every
        # deletion goes first, instead of sharing the connections and the apiserver with the
        # follow-up writes of the restarts done a moment earlier.
        self._deleting = 0
        self._deletions_done: asyncio.Event | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        # key -> (due time, the pod deletion of that restart): executed at most once per due
        # time, by whichever of the timer's fast path and the reconcile gets there first; kept
        # until the status recording it (restarts, lastRestartTime) is written.
        self._restarts: dict[Key, tuple[datetime, asyncio.Task[tuple[datetime, list[str]]]]] \
            = {}
        # key -> ((resourceVersion, secret hash, replicas), applied hash, view hashes of the
        # ServiceAccount, Role and RoleBinding) of the last build.
        self._built: dict[Key, tuple[tuple[Any, str, int], str, dict[str, str]]] = {}
        # key -> ((generation, secret hash, replicas), the API server's message) of children
        # the API server refused as invalid: not applied again until one of those changes.
        self._rejected: dict[Key, tuple[tuple[int, str, int], str]] = {}

    # -- feeding from the watches ------------------------------------------------------------

    def observe_connection(self, kind: str | None, obj: Mapping[str, Any]) -> None:
        meta = obj["metadata"]
        key = (meta["namespace"], meta["name"])
        if kind == "DELETED":
            self.connections.pop(key, None)
            self._built.pop(key, None)
            self._rejected.pop(key, None)
            self._errors.pop(key, None)
            retry = self._retry.pop(key, None)
            if retry is not None:
                retry.cancel()
            self.aux.pop(key, None)
            self.secrets.unrefer(key)
            if key in self.states:
                metrics.connection_removed(key, self.states.pop(key))
            else:
                metrics.forget_connection(*key)
            self._restarts.pop(key, None)
            self.timers.cancel(key)
            return
        old = self.connections.get(key)
        if old is not None and old["metadata"].get("uid") == meta.get("uid") \
                and _rv(old) > _rv(obj):
            return  # older than what our own write returned
        self.connections[key] = dict(obj)
        state = (obj.get("status") or {}).get("state")
        if key not in self.states or self.states[key] != state:
            metrics.connection_state_changed(key, self.states.get(key), state,
                                             known=key in self.states)
            self.states[key] = state
        self.poke(key)

    def observe_deployment(self, kind: str | None, obj: Mapping[str, Any]) -> None:
        meta = obj["metadata"]
        connection = (meta.get("labels") or {}).get(children.LABEL_CONNECTION)
        if not connection:
            return
        key = (meta["namespace"], connection)
        if kind == "DELETED":
            self.deployments.pop(key, None)
            self.completed.pop(key, None)
            self.poke(key)
            return
        summary = _deployment_summary(obj)
        old = self.deployments.get(key)
        if old is not None and _rv(old) > _rv(summary):
            return
        self.deployments[key] = summary
        if not rollout_in_progress(summary):
            self.completed[key] = (meta.get("uid"), summary["metadata"]["generation"])
        if old is None or _without_rv(old) != _without_rv(summary):
            self.poke(key)

    def observe_child(self, kind: str, event: str | None, obj: Mapping[str, Any]) -> None:
        """A ServiceAccount, Role or RoleBinding of a gateway was listed, changed or deleted.

        Only a deletion or a change of what the operator owns (children.view) pokes the
        connection, so our own applies (observed from their results first) and unrelated
        updates cost nothing.
        """
        meta = obj["metadata"]
        name = meta.get("name") or ""
        if not name.endswith(children.CHILD_SUFFIX):
            return
        # Identified by name: it is the object the operator applies for that connection,
        # whatever labels or owners someone left on it.
        key = (meta["namespace"], name.removesuffix(children.CHILD_SUFFIX))
        seen = self.aux.setdefault(key, {})
        old = seen.get(kind)
        if event == "DELETED":
            if old is not None and old[0] > _rv(obj):
                return  # an older incarnation; ours (re-applied) is newer
            seen.pop(kind, None)
            if not seen:
                self.aux.pop(key, None)
            if key in self.connections:
                log.info("%s/%s: %s %s deleted", *key, kind, meta["name"])
                self.poke(key)
            return
        if old is not None and old[0] > _rv(obj):
            return
        current = children.view_hash(kind, obj)
        seen[kind] = (_rv(obj), current)
        if old is None or old[1] != current:
            self.poke(key)

    def observe_secret(self, kind: str | None, obj: Mapping[str, Any]) -> None:
        meta = obj["metadata"]
        ns, name = meta["namespace"], meta["name"]
        if kind == "DELETED":
            self.secrets.drop(ns, name)
            changed = True
        else:
            self.unlabelled.discard((ns, name))
            changed = self.secrets.store(ns, name, obj)
        metrics.SECRETS_CACHED.set(len(self.secrets.digests))
        if changed:
            for key in self.secrets.users(ns, name):
                self.poke(key)

    def caches_listed(self) -> None:
        """Every watch has listed its objects: held reconciles run."""
        self.caches_ready = True
        held, self._held = self._held, set()
        for key in held:
            self.poke(key)

    # -- leadership ----------------------------------------------------------------------------

    def start_leading(self) -> None:
        self.leading = True
        for key in list(self.connections):
            self.poke(key)

    def stop_leading(self) -> None:
        """Stop acting at once: timers, retries and every task in flight (reconciles, pod
        deletions, Events) are cancelled; a new leader takes over from the state in the API."""
        self.leading = False
        self.timers.cancel_all()
        for handle in self._retry.values():
            handle.cancel()
        self._retry.clear()
        self._dirty.clear()
        self._restarts.clear()
        for task in list(self._tasks):
            task.cancel()

    # -- scheduling of reconciles --------------------------------------------------------------

    def poke(self, key: Key) -> None:
        """Reconcile ``key`` soon; coalesces with a running reconcile of the same key."""
        if not self.leading or self.kube is None:
            return
        if not self.caches_ready:
            self._held.add(key)
            return
        if key in self._running:
            self._dirty.add(key)
            return
        self._running.add(key)
        self._spawn(self._run(key))

    def _spawn(self, coro: Any) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        """Nothing running in the background fails unseen: a crash is logged and counted."""
        self._tasks.discard(task)
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            metrics.RECONCILE_ERRORS.inc()
            log.error("background task %s failed: %s",
                      getattr(task.get_coro(), "__qualname__", task.get_name()),
                      exc, exc_info=exc)

    def _wake(self, key: Key) -> None:
        """A connection's timer expired. A due restart is executed right here, not behind the
        reconcile queue: with many restarts due in the same second, every pod deletion is sent
        at once, and the reconciles (status writes, Events) follow."""
        if not self.leading or self.kube is None:
            return
        if not self.caches_ready:
            self._held.add(key)
            return
        body = self.connections.get(key)
        if body is not None and not body["metadata"].get("deletionTimestamp"):
            plan = self._decide(key, body, self.clock())[0]
            if plan.restart_due is not None:
                self._spawn(self._restart_then_reconcile(key, body, plan))
                return
        self.poke(key)

    def _idle_deletions(self) -> asyncio.Event:
        if self._deletions_done is None:
            self._deletions_done = asyncio.Event()
            self._deletions_done.set()
        return self._deletions_done

    async def _restart_then_reconcile(self, key: Key, body: Mapping[str, Any],
                                      plan: Plan) -> None:
        try:
            await self._restart_once(key, body, plan)
        except Exception as exc:  # the reconcile retries (and reports) it
            log.info("restart of %s/%s from its timer failed: %s", *key, exc)
        self.poke(key)

    async def _run(self, key: Key) -> None:
        if self._sem is None:
            self._sem = asyncio.Semaphore(MAX_CONCURRENT)
        try:
            while True:
                self._dirty.discard(key)
                if self._deleting:
                    # A priority, not a lock: a hanging deletion holds nothing up for long.
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._idle_deletions().wait(), DELETIONS_FIRST)
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
        except NotLeading:
            return  # stepped down meanwhile: the new leader does it
        except ApiError as exc:
            if exc.status in (404, 409) and key in self.connections:
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
        cached = self.connections.get(key) or {}
        if fresh["metadata"].get("uid") != (cached.get("metadata") or {}).get("uid"):
            self.observe_connection("DELETED", cached or {"metadata": fresh["metadata"]})
            self.observe_connection("MODIFIED", fresh)
        elif _rv(fresh) > _rv(cached):
            self.observe_connection("MODIFIED", fresh)

    def _failed(self, key: Key, exc: BaseException) -> None:
        metrics.RECONCILE_ERRORS.inc()
        if isinstance(exc, ApiError) and exc.status in (404, 409) \
                and key not in self.connections:
            return  # deleted meanwhile
        n = self._errors.get(key, 0) + 1
        self._errors[key] = n
        delay = doubling(ERROR_BACKOFF_FIRST, n, ERROR_BACKOFF_MAX)
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
        ns, name = key
        await self._look_at_unwatched_secret(ns, body)
        plan, ref, missing, refused, secret_hash, applied_hash = self._decide(key, body,
                                                                             self.clock())
        restarted = plan.restart_due is not None
        if restarted:
            # First, before any other work: a due restart is the time-critical part (usually
            # done already by the timer's fast path; then this only picks up its result).
            plan = await self._restart(key, body, plan)
        else:
            # Nothing (or something else) is due now: a recorded deletion is stale.
            self._restarts.pop(key, None)

        # Children before status: the status below describes what was applied (or the API
        # server's refusal of it).
        live = self.deployments.get(key)
        memo = (body["metadata"].get("resourceVersion"), secret_hash, plan.replicas)
        attempt = (int(body["metadata"].get("generation", 0)), secret_hash, plan.replicas)
        cached_want = self._built.get(key)
        rejected = self._rejected.get(key)
        apply_failed: str | None = None
        retry_error: ApiError | None = None
        if rejected is not None and rejected[0] != attempt:
            self._rejected.pop(key, None)  # something changed: try again
            rejected = None
        if refused:
            # Nothing of a refused spec is applied; a gateway of an earlier spec (the policy
            # may have been tightened since) is scaled to 0.
            self._built.pop(key, None)
            if live is not None and live["spec"]["replicas"]:
                result = await self.kube.scale(ns, children.child_name(name), 0)
                self.observe_deployment("MODIFIED", result)
                live = self.deployments.get(key)
                log.info("%s/%s: refused by the policy, gateway scaled to 0", ns, name)
        elif rejected is not None:
            apply_failed = rejected[1]  # invalid as it stands: retried when the spec changes
        elif cached_want is not None and cached_want[0] == memo and live is not None \
                and live["metadata"]["annotations"].get(children.ANN_APPLIED_HASH) \
                == cached_want[1] and not self._aux_drift(key, cached_want[2]):
            pass
        else:
            try:
                live = await self._apply_children(key, body, ref, plan, secret_hash, memo)
            except ApiError as exc:
                if exc.status not in INVALID:
                    retry_error = exc  # reported below, and retried with back-off
                else:
                    self._rejected[key] = (attempt, exc.message)
                    log.warning("%s/%s: the API server refused the gateway's objects: %s",
                                ns, name, exc.message)
                apply_failed = exc.message
                live = self.deployments.get(key)
        if apply_failed is not None:
            # status.appliedHash keeps naming what was last applied.
            applied_hash = (body.get("status") or {}).get("appliedHash") or ""

        want_status = st.desired(body, plan, secret_missing=missing,
                                 rollout_in_progress=self._rolling_out(key, live),
                                 applied_hash=applied_hash, now=self.clock(),
                                 policy_violation=refused, apply_failed=apply_failed,
                                 replica_failure=(live or {}).get("replicaFailure")
                                 if plan.replicas else None)
        if st.changed(body, want_status.status):
            plan.events = [*plan.events, *st.failure_events(body, want_status)]
            result = await self.kube.apply_status(ns, name, body["metadata"]["uid"],
                                                  want_status.status)
            self.observe_connection("MODIFIED", result)
            body = self.connections.get(key, body)
            log.info("%s/%s: Ready=%s %s", ns, name, want_status.ready.status,
                     want_status.ready.reason)
        if restarted:
            self._restarts.pop(key, None)  # recorded in status (or nothing changed)
        for event in plan.events:
            # Best effort and off the reconcile's path: a burst of due restarts must not wait
            # for Events to be posted.
            self._spawn(self.kube.post_event(body, event.type, event.reason, event.message))

        metrics.CIRCUIT_STATE.labels(ns, name).set(
            metrics.CIRCUIT_VALUES[plan.circuit.state.value])
        wakes = [w for w in (*plan.wake, want_status.wake) if w is not None]
        if ref is not None and self.secrets.get(ns, ref.name) is None:
            wakes.append(self.clock() + timedelta(seconds=SECRET_RECHECK))
        self.timers.arm(key, min(wakes) if wakes else None)
        if retry_error is not None:
            raise retry_error

    async def _apply_children(self, key: Key, body: Mapping[str, Any],
                              ref: sec.SecretRef | None, plan: Plan, secret_hash: str,
                              memo: tuple[Any, str, int]) -> dict[str, Any] | None:
        """Server-side apply what changed of the gateway's objects; the live Deployment after.

        Building and hashing the manifests is skipped by the caller when nothing they depend
        on changed. The ServiceAccount, Role and RoleBinding are compared by content with the
        live ones (watched): one deleted or edited by hand is re-applied alone."""
        assert self.kube is not None
        ns, name = key
        live = self.deployments.get(key)
        objs = children.build(body, ref, replicas=plan.replicas, secret_hash=secret_hash)
        want = objs[-1]["metadata"]["annotations"][children.ANN_APPLIED_HASH]
        views = {o["kind"]: children.view_hash(o["kind"], o) for o in objs[:-1]}
        if live is None \
                or live["metadata"]["annotations"].get(children.ANN_APPLIED_HASH) != want:
            todo = objs
        else:
            drift = self._aux_drift(key, views)
            todo = [o for o in objs[:-1] if o["kind"] in drift]
        for obj in todo:
            result = await self.kube.apply_or_recreate(obj)
            if obj["kind"] == "Deployment":
                self.observe_deployment("MODIFIED", result)
            else:
                self.observe_child(obj["kind"], "MODIFIED", result)
        if todo:
            log.info("applied %s of %s/%s (replicas %s)",
                     "children" if len(todo) == len(objs)
                     else ", ".join(o["kind"] for o in todo), ns, name, plan.replicas)
        self._built[key] = (memo, want, views)
        return self.deployments.get(key)

    async def _look_at_unwatched_secret(self, ns: str, body: Mapping[str, Any]) -> None:
        """A referenced Secret the watch does not hold: absent, or present without the label?
        Its metadata tells, without reading its data."""
        assert self.kube is not None
        ref = sec.reference(body.get("spec") or {})
        if ref is None or self.secrets.get(ns, ref.name) is not None:
            return
        meta = await self.kube.metadata(f"/api/v1/namespaces/{quote(ns)}/secrets/"
                                        f"{quote(ref.name)}")
        labels = ((meta or {}).get("metadata") or {}).get("labels") or {}
        if meta is not None and labels.get(sec.CREDENTIALS_LABEL) != sec.CREDENTIALS_VALUE:
            self.unlabelled.add((ns, ref.name))
        else:
            self.unlabelled.discard((ns, ref.name))

    def _rolling_out(self, key: Key, live: Mapping[str, Any] | None) -> bool:
        uid, generation = self.completed.get(key, (None, None))
        if live is None or uid != live["metadata"].get("uid"):
            generation = None
        return rollout_in_progress(live, generation)

    def _aux_drift(self, key: Key, views: Mapping[str, str]) -> list[str]:
        """Kinds among ServiceAccount, Role, RoleBinding that are missing or differ."""
        seen = self.aux.get(key) or {}
        return [kind for kind, want in views.items()
                if kind not in seen or seen[kind][1] != want]

    def _decide(self, key: Key, body: Mapping[str, Any], now: datetime
                ) -> tuple[Plan, sec.SecretRef | None, str | None, str | None, str, str]:
        """decide() on the cached state; also what the children and status need: the Secret
        reference, what is missing of it, what the policy refuses, and the hashes."""
        ns = key[0]
        spec = body.get("spec") or {}
        ref = sec.reference(spec)
        self.secrets.refer(key, ref)
        cached = self.secrets.get(ns, ref.name) if ref else None
        missing = sec.missing(ref, cached,
                              unlabelled=ref is not None and (ns, ref.name) in self.unlabelled)
        secret_hash = "" if missing else sec.referenced_hash(ref, cached)
        applied_hash = f"{children.spec_hash(spec)}:{secret_hash}"
        previous_hash = (body.get("status") or {}).get("appliedHash")
        rolled = bool(previous_hash) and previous_hash != applied_hash
        refused = "; ".join(pol.violations(spec, self.policy, children.DEFAULT_IMAGE)) or None
        plan = decide(body, blocked=refused or missing, rolled=rolled, now=now)
        return plan, ref, missing, refused, secret_hash, applied_hash

    def _restart_once(self, key: Key, body: Mapping[str, Any],
                      plan: Plan) -> asyncio.Task[tuple[datetime, list[str]]]:
        """The pod deletion of the restart due at ``plan.restart_due``, started at most once
        (the timer's fast path and a reconcile share it); a failed one may be tried again."""
        assert plan.restart_due is not None
        entry = self._restarts.get(key)
        if entry is not None and entry[0] == plan.restart_due and not (
                entry[1].done() and (entry[1].cancelled() or entry[1].exception())):
            return entry[1]
        task = self._spawn(self._delete_gateway(body, plan))
        self._restarts[key] = (plan.restart_due, task)
        return task

    async def _delete_gateway(self, body: Mapping[str, Any],
                              plan: Plan) -> tuple[datetime, list[str]]:
        """Delete the gateway pod(s); the Deployment creates a fresh one."""
        assert self.kube is not None and plan.restart_due is not None
        ns, name = body["metadata"]["namespace"], body["metadata"]["name"]
        due: datetime = plan.restart_due
        # The pod of the failure record is the one to restart (never the pod reporting now,
        # which may be its replacement), and only while it has the uid it reported with;
        # without a name, whatever gateway pod runs. If that pod is gone already, the restart
        # has happened: this operator deleted it and died before recording that, or someone
        # else removed it. Its replacement is fresh and is kept.
        selector = children.pod_selector(name)
        pod, uid = plan.schedule.failed_pod, plan.schedule.failed_pod_uid
        done = self._idle_deletions()
        self._deleting += 1
        done.clear()
        try:
            deleted = await self.kube.delete_pods(ns, selector, pod, uid=uid)
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

    async def _restart(self, key: Key, body: Mapping[str, Any], plan: Plan) -> Plan:
        """The plan once its due restart is executed (or found executed)."""
        now, deleted = await self._restart_once(key, body, plan)
        new = after_restart(plan, now)
        done = "Restarted the gateway" if deleted else \
            "The gateway pod that failed was already replaced (its replacement is kept)"
        new.events = [*plan.events, Event(
            "Normal", "GatewayRestarted",
            f"{done} after a retryable fatal error ({plan.restart_reason}); "
            f"restart {new.schedule.restarts}, consecutive failures "
            f"{plan.circuit.consecutive_failures}, back-off {plan.backoff_seconds:.0f}s.")]
        return new

    async def close(self) -> None:
        self.stop_leading()
        for task in list(self._tasks):
            task.cancel()
        if self.kube is not None:
            await self.kube.close()
