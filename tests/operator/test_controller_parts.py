"""The Controller's parts, each alone on a fake Kube and a fake clock: the work queue, the
restart executor, the children reconciler, the status writer. The same behaviours run on the
real control plane in test_restarts.py, test_apply_failures.py, test_children.py and
test_status_events.py."""

from __future__ import annotations

import asyncio
import json
from datetime import timedelta
from typing import Any

import pytest
from fakekube import FakeKube
from test_decide import T0, _body, _fatal, _merge, _persist

from switchboard_operator import children as ch
from switchboard_operator import restart_executor
from switchboard_operator import status as st
from switchboard_operator.cache import Cache
from switchboard_operator.children_reconciler import ChildrenReconciler
from switchboard_operator.decide import Plan, decide
from switchboard_operator.kube import ApiError
from switchboard_operator.restart_executor import RestartExecutor
from switchboard_operator.restarts import Key
from switchboard_operator.status_writer import StatusWriter
from switchboard_operator.workqueue import WorkQueue

K: Key = ("n", "c")


async def _drain(*tasks: set[asyncio.Task[Any]] | None) -> None:
    for _ in range(100):
        await asyncio.sleep(0)


# -- the work queue ----------------------------------------------------------------------------

class FakeTimers:
    """call_later for the queue's retries: records the delays, fires on demand."""

    def __init__(self) -> None:
        self.pending: list[tuple[float, Any, Key, asyncio.TimerHandle]] = []

    def __call__(self, delay: float, callback: Any, key: Key) -> asyncio.TimerHandle:
        handle = asyncio.get_running_loop().call_later(3600, lambda: None)
        self.pending.append((delay, callback, key, handle))
        return handle

    def fire(self) -> None:
        entries, self.pending = self.pending, []
        for _delay, callback, key, handle in entries:
            if not handle.cancelled():
                handle.cancel()
                callback(key)


def _queue(handle: Any, **kw: Any) -> WorkQueue:
    q = WorkQueue(handle, **kw)
    q.active = True
    q.release_held()
    return q


async def test_a_key_poked_while_it_runs_runs_once_more_never_twice_at_once() -> None:
    running, runs, gate = 0, [], asyncio.Event()

    async def handle(key: Key) -> None:
        nonlocal running
        running += 1
        assert running == 1
        runs.append(key)
        await gate.wait()
        running -= 1

    q = _queue(handle)
    q.add(K)
    await _drain()
    q.add(K)
    q.add(K)  # coalesced with the one before
    gate.set()
    await _drain()
    assert runs == [K, K] and q.idle()


async def test_at_most_concurrency_reconciles_run_at_once() -> None:
    running, peak, gate = 0, 0, asyncio.Event()

    async def handle(key: Key) -> None:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await gate.wait()
        running -= 1

    q = _queue(handle, concurrency=2)
    for i in range(5):
        q.add(("n", str(i)))
    await _drain()
    assert peak == 2
    gate.set()
    await _drain()
    assert q.idle()


async def test_failures_back_off_doubling_and_a_forgotten_key_is_not_retried() -> None:
    timers = FakeTimers()
    calls: list[Key] = []

    async def handle(key: Key) -> None:
        calls.append(key)

    q = _queue(handle, call_later=timers)
    assert [q.failed(K) for _ in range(8)] == [1, 2, 4, 8, 16, 32, 60, 60]
    assert len([t for t in timers.pending if not t[3].cancelled()]) == 1  # one retry per key
    timers.fire()
    await _drain()
    assert calls == [K]
    q.succeeded(K)
    assert q.failed(K) == 1  # success resets the ladder
    q.forget(K)
    timers.fire()
    await _drain()
    assert calls == [K] and not q.pending(K)


async def test_keys_wait_for_the_caches_and_nothing_runs_unless_leading() -> None:
    calls: list[Key] = []

    async def handle(key: Key) -> None:
        calls.append(key)

    q = WorkQueue(handle)
    q.add(K)  # not leading: dropped
    q.active = True
    q.add(("n", "held"))
    await _drain()
    assert calls == []
    q.release_held()
    await _drain()
    assert calls == [("n", "held")]


async def test_stop_cancels_the_work_in_flight() -> None:
    cancelled = asyncio.Event()

    async def handle(key: Key) -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise

    q = _queue(handle)
    q.add(K)
    await _drain()
    q.stop()
    await _drain()
    assert cancelled.is_set() and q.idle()
    q.add(K)
    assert q.idle()  # stopped: nothing new starts


# -- the restart executor ----------------------------------------------------------------------

def _due_plan() -> tuple[dict[str, Any], Plan]:
    """A connection whose restart of pod p1 is due at T0 + 30 s, and its plan then."""
    first = decide(_body(_fatal()), blocked=None, rolled=False, now=T0)
    body = _body(_merge(_persist(first), {**_fatal(), "gatewayPodUID": "uid-p1"}))
    plan = decide(body, blocked=None, rolled=False, now=T0 + timedelta(seconds=30))
    assert plan.restart_due is not None
    return body, plan


def _executor(kube: FakeKube) -> tuple[RestartExecutor, set[asyncio.Task[Any]]]:
    tasks: set[asyncio.Task[Any]] = set()

    def spawn(coro: Any) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro)
        tasks.add(task)
        return task

    ex = RestartExecutor(lambda: T0 + timedelta(seconds=30, milliseconds=5), spawn)
    ex.kube = kube  # type: ignore[assignment]
    return ex, tasks


async def test_a_due_restart_deletes_the_failed_pod_once_however_often_it_is_asked() -> None:
    kube = FakeKube()
    ex, _ = _executor(kube)
    body, plan = _due_plan()
    first = ex.start(K, body, plan)
    assert ex.start(K, body, plan) is first  # the timer's fast path and the reconcile share it
    done = await ex.execute(K, body, plan)
    assert kube.calls.count(("delete_pods", "p1")) == 1
    assert done.schedule.restarts == 1
    assert [e.reason for e in done.events][-1] == "GatewayRestarted"
    assert "Restarted the gateway" in done.events[-1].message


async def test_a_failed_deletion_is_tried_again_and_a_gone_pod_counts_as_restarted() -> None:
    kube = FakeKube()
    ex, _ = _executor(kube)
    body, plan = _due_plan()
    kube.fail["delete_pods"] = ApiError(500, "{}", "delete")
    with pytest.raises(ApiError):
        await ex.start(K, body, plan)
    del kube.fail["delete_pods"]
    done = await ex.execute(K, body, plan)  # a new attempt, not the failed task again
    assert kube.calls.count(("delete_pods", "p1")) == 2
    assert done.schedule.restarts == 1


async def test_reconciles_wait_while_deletions_are_in_flight_but_not_for_long(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(restart_executor, "DELETIONS_FIRST", 0.05)
    kube = FakeKube()
    kube.hang.add("delete_pods")
    ex, tasks = _executor(kube)
    body, plan = _due_plan()
    await ex.deletions_first()  # nothing in flight: no wait
    ex.start(K, body, plan)
    await _drain()
    waiter = asyncio.create_task(ex.deletions_first())
    await _drain()
    assert not waiter.done()  # waits while the deletion hangs ...
    await asyncio.wait_for(waiter, 1)  # ... but only DELETIONS_FIRST
    for task in tasks:
        task.cancel()
    await _drain()
    assert kube.hanging == 0


# -- the children reconciler -------------------------------------------------------------------

def _conn(generation: int = 1, rv: str = "1") -> dict[str, Any]:
    return {"apiVersion": "switchboard.dev/v1alpha1", "kind": "PlatformConnection",
            "metadata": {"name": "c", "namespace": "n", "uid": "u1", "generation": generation,
                         "resourceVersion": rv},
            "spec": {"platform": "telegram", "backend": {"echo": True}}}


def _children() -> tuple[ChildrenReconciler, FakeKube, Cache]:
    cache, kube = Cache(), FakeKube()
    rec = ChildrenReconciler(cache)
    rec.kube = kube  # type: ignore[assignment]
    return rec, kube, cache


def _plan(body: dict[str, Any]) -> Plan:
    return decide(body, blocked=None, rolled=False, now=T0)


def _applies(kube: FakeKube) -> list[str]:
    return [what for method, what in kube.calls if method == "apply"]


async def test_children_are_applied_once_and_a_deleted_one_alone_again() -> None:
    rec, kube, cache = _children()
    body = _conn()
    out = await rec.reconcile(K, body, None, _plan(body), "", None)
    assert [a.split()[0] for a in _applies(kube)] == \
        ["ServiceAccount", "Role", "RoleBinding", "Lease", "Deployment"]
    assert out.live is not None and out.apply_failed is None
    kube.calls.clear()
    await rec.reconcile(K, body, None, _plan(body), "", None)
    assert _applies(kube) == []  # nothing changed: no request
    sa = kube.objects[("ServiceAccount", "n", "c-gateway")]
    cache.child("ServiceAccount", "DELETED", sa)  # deleted by hand
    await rec.reconcile(K, body, None, _plan(body), "", None)
    assert _applies(kube) == ["ServiceAccount c-gateway"]


async def test_an_invalid_apply_waits_for_a_new_generation_other_failures_are_retried() -> None:
    rec, kube, _ = _children()
    body = _conn()
    message = "Deployment.apps \"c-gateway\" is invalid: spec.template...: Unsupported value"
    kube.fail["apply"] = ApiError(422, json.dumps({"message": message}), "apply")
    out = await rec.reconcile(K, body, None, _plan(body), "", None)
    assert out.apply_failed == message and out.retry_error is None
    tried = len(_applies(kube))
    out = await rec.reconcile(K, body, None, _plan(body), "", None)
    assert out.apply_failed == message and len(_applies(kube)) == tried  # not sent again
    newer = _conn(generation=2, rv="2")
    kube.fail["apply"] = ApiError(503, "{}", "apply")
    out = await rec.reconcile(K, newer, None, _plan(newer), "", None)
    assert len(_applies(kube)) == tried + 1  # a new generation is tried
    assert out.retry_error is not None and out.retry_error.status == 503


async def test_a_spec_the_policy_refuses_is_not_applied_and_its_gateway_scaled_to_zero() -> None:
    rec, kube, _ = _children()
    body = _conn()
    await rec.reconcile(K, body, None, _plan(body), "", None)
    kube.calls.clear()
    out = await rec.reconcile(K, body, None, _plan(body), "", "image not allowed")
    assert ("scale", "c-gateway") in kube.calls and _applies(kube) == []
    assert out.apply_failed is None


# -- the status writer -------------------------------------------------------------------------

def _status_writer() -> tuple[Cache, FakeKube, StatusWriter, dict[str, Any]]:
    """A writer on a fake Kube that holds one connection (cached too)."""
    cache, kube = Cache(), FakeKube()
    writer = StatusWriter(cache, asyncio.get_running_loop().create_task)
    writer.kube = kube  # type: ignore[assignment]
    body = _conn()
    kube.objects[("PlatformConnection", "n", "c")] = body
    cache.connection("ADDED", body)
    return cache, kube, writer, body

async def test_status_is_written_only_when_it_changes_and_a_new_failure_warns_once() -> None:
    cache, kube, writer, body = _status_writer()

    def want(current: dict[str, Any], missing: str | None) -> st.Desired:
        return st.desired(current, _plan(current), secret_missing=missing,
                          rollout_in_progress=False, applied_hash="h", now=T0)

    after, warnings = await writer.write(K, body, want(body, "Secret tg is missing"))
    assert kube.calls.count(("apply_status", "c")) == 1
    assert [w.reason for w in warnings] == ["SecretMissing"]
    again, warnings = await writer.write(K, after, want(dict(after), "Secret tg is missing"))
    assert kube.calls.count(("apply_status", "c")) == 1 and warnings == []
    assert cache.connections[K]["status"] == again["status"]


async def test_only_a_change_of_ready_is_logged_at_info(caplog: pytest.LogCaptureFixture) -> None:
    _, _, writer, body = _status_writer()

    def want(current: dict[str, Any], attempt: int) -> st.Desired:
        current = {**current, "status": {**(current.get("status") or {}), **{
            "state": "retrying", "attempt": attempt, "maxAttempts": 10,
            "attempts": f"{attempt}/10", "gatewayPod": "p1"}}}
        return st.desired(current, _plan(current), secret_missing=None,
                          rollout_in_progress=False, applied_hash="h", now=T0)

    with caplog.at_level("DEBUG", logger="switchboard_operator.status_writer"):
        after, _ = await writer.write(K, body, want(body, 1))
        await writer.write(K, after, want(dict(after), 2))  # only the attempt count moved
    levels = [r.levelname for r in caplog.records if "Ready=" in r.getMessage()]
    assert levels == ["INFO", "DEBUG"]


async def test_a_deployment_scaled_by_hand_is_set_back() -> None:
    rec, kube, cache = _children()
    body = _conn()
    await rec.reconcile(K, body, None, _plan(body), "", None)
    live = kube.objects[("Deployment", "n", "c-gateway")]
    scaled = {**live, "metadata": {**live["metadata"], "resourceVersion": "99999"},
              "spec": {**live["spec"], "replicas": 3}}
    assert cache.deployment("MODIFIED", scaled) == K  # the watch sees `kubectl scale`
    kube.calls.clear()
    await rec.reconcile(K, body, None, _plan(body), "", None)
    assert "Deployment c-gateway" in _applies(kube)
    assert kube.objects[("Deployment", "n", "c-gateway")]["spec"]["replicas"] == 1


def test_operator_fields_another_manager_wrote_are_found() -> None:
    body = {**_conn(), "metadata": {**_conn()["metadata"], "managedFields": [
        {"manager": "switchboard-operator", "subresource": "status",
         "fieldsV1": {"f:status": {"f:restarts": {}, "f:conditions": {}}}},
        {"manager": "switchboard-gateway", "subresource": "status",
         "fieldsV1": {"f:status": {"f:state": {}}}},
        {"manager": "kubectl-edit", "subresource": "status",
         "fieldsV1": {"f:status": {"f:nextRestartTime": {}, "f:state": {}}}}]}}
    assert st.foreign_fields(body) == {"nextRestartTime": "kubectl-edit"}


async def test_the_same_status_is_never_applied_twice_in_a_row() -> None:
    """A field the apply cannot remove keeps status different from what was applied: one
    apply, not one per echo (it was 195 PATCH/s)."""
    cache, kube = Cache(), FakeKube()
    writer = StatusWriter(cache, asyncio.get_running_loop().create_task)
    writer.kube = kube  # type: ignore[assignment]
    body = _conn()
    kube.objects[("PlatformConnection", "n", "c")] = body

    async def stubborn(namespace: str, name: str, uid: str,
                       status: dict[str, Any]) -> dict[str, Any]:
        kube.calls.append(("apply_status", name))
        # What the API server returns when someone else owns a field we leave out.
        return {**body, "metadata": {**body["metadata"], "resourceVersion": "7"},
                "status": {**status, "nextRestartTime": "2099-01-01T00:00:00Z"}}

    kube.apply_status = stubborn  # type: ignore[method-assign]
    want = st.desired(body, _plan(body), secret_missing=None, rollout_in_progress=False,
                      applied_hash="h", now=T0)
    after, _ = await writer.write(K, body, want)
    for _ in range(3):  # the echoes
        after, _ = await writer.write(K, after, st.desired(
            after, _plan(dict(after)), secret_missing=None, rollout_in_progress=False,
            applied_hash="h", now=T0))
    assert kube.calls.count(("apply_status", "c")) == 1


async def test_a_recreated_service_account_rolls_the_gateway() -> None:
    """Deleted by hand and recreated: the running pod's token belongs to the old one, so the
    pod template carries the uid and changes with it."""
    rec, kube, cache = _children()
    body = _conn()
    await rec.reconcile(K, body, None, _plan(body), "", None)
    template = kube.objects[("Deployment", "n", "c-gateway")]["spec"]["template"]
    first = template["metadata"]["annotations"][ch.ANN_SA_UID]
    assert first == kube.objects[("ServiceAccount", "n", "c-gateway")]["metadata"]["uid"]
    sa = kube.objects.pop(("ServiceAccount", "n", "c-gateway"))
    cache.child("ServiceAccount", "DELETED", sa)  # `kubectl delete sa c-gateway`
    await rec.reconcile(K, body, None, _plan(body), "", None)
    new_uid = kube.objects[("ServiceAccount", "n", "c-gateway")]["metadata"]["uid"]
    template = kube.objects[("Deployment", "n", "c-gateway")]["spec"]["template"]
    assert new_uid != first and template["metadata"]["annotations"][ch.ANN_SA_UID] == new_uid
    assert _applies(kube).count("ServiceAccount c-gateway") == 2  # not twice per reconcile
