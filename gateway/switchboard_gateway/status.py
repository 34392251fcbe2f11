"""StatusReporter: the adapter's state, written into its own PlatformConnection's status.

Server-side apply on the status subresource, field manager ``switchboard-gateway``, force=true,
with only the fields the gateway owns (docs/design.md). Leaving ``lastError`` out of an apply
removes it, because this manager is its only owner.

Writes are coalesced by a token bucket: one write per ``min_interval`` (1 s) on average, with a
burst of ``burst`` (2), always carrying the latest state. A link flapping every 100 ms costs about
one write a second and the final state of a burst is never lost; the burst lets the first change
after a quiet spell (say `retrying` right after `connected`) go out at once instead of waiting
for the previous write's second to pass.

``report()`` returns once the write carrying its state landed, or after ``report_timeout`` (2 s):
a `retrying` report lands before the adapter's back-off sleep, and an API server that is
away slows the adapter by two seconds at most while the writer keeps retrying in the background.

Auxiliary gateway-owned fields (``qqSession``: the QQ Bot session to resume after a restart) are
set with :meth:`StatusReporter.set_field` and ride along in *every* apply (one left out would be
removed by server-side apply). A change of only such fields is lazy: it is written when the
bucket is full again (about one write a second under a steady stream of changes, never more than
the budget), so a state change arriving meanwhile still finds a token and goes out at once.
:meth:`StatusReporter.restore` reads the values a previous process left, before the first write,
so that write does not remove them. The final write on close carries the latest values.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import math
import os
import time
from collections.abc import Callable
from typing import Any, Protocol

from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from switchboard_contract import GATEWAY_FIELDS, GATEWAY_MANAGER, Field
from switchboard_contract.backoff import doubling
from switchboard_gateway import metrics
from switchboard_gateway.adapter import AdapterError, State
from switchboard_gateway.redact import describe, platform_text

log = logging.getLogger("switchboard.status")

GROUP = "switchboard.dev"
VERSION = "v1alpha1"
PLURAL = "platformconnections"
FIELD_MANAGER = GATEWAY_MANAGER
# Auxiliary gateway-owned fields a new process carries over from the previous one.
CARRIED_FIELDS = (Field.QQ_SESSION, Field.DEAD_LETTERS, Field.LAST_ACTIVITY)


class StatusWriter(Protocol):
    async def apply(self, status: dict[str, Any], resource_version: str | None = None) -> None:
        """Server-side apply ``status``; with ``resource_version``, only if unchanged since."""

    async def read(self) -> dict[str, Any]:
        """The whole PlatformConnection object."""


def load_api_client() -> client.ApiClient:
    """In-cluster credentials in a real pod; KUBECONFIG elsewhere (the local test node)."""
    configuration = client.Configuration()
    if os.environ.get("KUBERNETES_SERVICE_HOST") and os.path.exists(
            "/var/run/secrets/kubernetes.io/serviceaccount/token"):
        config.load_incluster_config(  # type: ignore[no-untyped-call]
            client_configuration=configuration)
    else:
        config.load_kube_config(  # type: ignore[no-untyped-call]
            client_configuration=configuration)
    return client.ApiClient(configuration)


class KubeStatusWriter:
    """The kubernetes sync client, run in a worker thread so the event loop never blocks."""

    def __init__(self, namespace: str, name: str, api_client: client.ApiClient | None = None,
                 request_timeout: tuple[float, float] = (3.0, 5.0)) -> None:
        self.namespace = namespace
        self.name = name
        self._api = client.CustomObjectsApi(api_client or load_api_client())
        self._timeout = request_timeout

    async def apply(self, status: dict[str, Any], resource_version: str | None = None) -> None:
        metadata: dict[str, Any] = {"name": self.name, "namespace": self.namespace}
        if resource_version is not None:
            metadata["resourceVersion"] = resource_version  # optimistic concurrency
        body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "PlatformConnection",
                "metadata": metadata, "status": status}
        await asyncio.to_thread(
            self._api.patch_namespaced_custom_object_status,
            GROUP, VERSION, self.namespace, PLURAL, self.name, body,
            field_manager=FIELD_MANAGER, force=True,
            _content_type="application/apply-patch+yaml", _request_timeout=self._timeout,
        )

    async def read(self) -> dict[str, Any]:
        obj: dict[str, Any] = await asyncio.to_thread(  # the client returns the parsed JSON
            self._api.get_namespaced_custom_object,  # type: ignore[arg-type]
            GROUP, VERSION, self.namespace, PLURAL, self.name, _request_timeout=self._timeout,
        )
        return obj


def rfc3339(at: float) -> str:
    return dt.datetime.fromtimestamp(at, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def build_status(state: State, *, attempt: int, max_attempts: int, error: AdapterError | None,
                 state_since: str, pod: str, pod_uid: str = "") -> dict[str, Any]:
    """The gateway-owned status fields, and nothing else."""
    status: dict[str, Any] = {
        Field.STATE: state.value,
        Field.ATTEMPT: attempt,
        Field.MAX_ATTEMPTS: max_attempts,
        # No ladder (a configuration error, a fatal before any attempt): "-", not "0/0".
        Field.ATTEMPTS: f"{attempt}/{max_attempts}" if max_attempts else "-",
        Field.STATE_SINCE: state_since,
    }
    if pod:
        status[Field.GATEWAY_POD] = pod
    if pod_uid:
        status[Field.GATEWAY_POD_UID] = pod_uid
    if error is not None:
        status[Field.LAST_ERROR] = {
            "code": error.code[:128],
            # Redacted again here: the status is the one place a leak would be public.
            "message": platform_text(error.message),
            "retryable": error.retryable,
        }
    return status


def describe_api_error(exc: BaseException) -> str:
    if isinstance(exc, ApiException):
        return f"HTTP {exc.status} {exc.reason}"
    return describe(exc)


class StatusReporter:
    """Implements adapter.StatusSink. Start with :meth:`start`, end with :meth:`close`."""

    def __init__(
        self,
        writer: StatusWriter,
        *,
        platform: str,
        pod_name: str = "",
        pod_uid: str = "",
        min_interval: float = 1.0,
        burst: int = 2,
        report_timeout: float = 2.0,
        max_backoff: float = 10.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._writer = writer
        self.platform = platform
        self.pod_name = pod_name
        self.pod_uid = pod_uid
        self.min_interval = min_interval
        self.burst = burst
        self.report_timeout = report_timeout
        self.max_backoff = max_backoff
        self._clock = clock
        self.state: State | None = None
        self.error: AdapterError | None = None
        self._key: tuple[Any, ...] | None = None
        self._since = ""
        self._status: dict[str, Any] | None = None  # the state fields (build_status)
        self._fields: dict[str, Any] = {}  # auxiliary gateway-owned fields (set_field)
        self._seq = 0  # version of the desired status
        self._urgent_seq = 0  # version of the last state change (not lazy)
        self._written_seq = 0  # version that reached the API server
        self._tokens = float(burst)  # write budget, refilled at 1 per min_interval
        self._refilled = -math.inf
        self._wake = asyncio.Event()
        self._written = asyncio.Event()  # replaced after every successful write
        self._task: asyncio.Task[None] | None = None
        self._inflight: asyncio.Future[None] | None = None
        self.writes_ok = 0
        self.writes_failed = 0

    async def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="status-writer")

    @property
    def task(self) -> asyncio.Task[None] | None:
        """The writer task (after start()): main makes it vital for liveness."""
        return self._task

    @property
    def connected(self) -> bool:
        return self.state is State.CONNECTED

    @property
    def attempts(self) -> tuple[int, int]:
        """(attempt, maxAttempts) of the last report: a fatal error keeps showing how far the
        ladder got."""
        return (self._key[1], self._key[2]) if self._key else (0, 0)

    @property
    def pending(self) -> bool:
        return self._written_seq < self._seq

    async def report(self, state: State, *, attempt: int = 0, max_attempts: int = 0,
                     error: AdapterError | None = None) -> None:
        seq = self.record(state, attempt=attempt, max_attempts=max_attempts, error=error)
        await self.wait_written(seq, self.report_timeout)

    def record(self, state: State, *, attempt: int = 0, max_attempts: int = 0,
               error: AdapterError | None = None) -> int:
        """Set the desired status without waiting; returns the version to wait for."""
        key = (state, attempt, max_attempts, error)
        if key == self._key:
            return self._seq  # nothing new; still wait for it if not written yet
        if state is not self.state or not self._since:
            self._since = rfc3339(self._clock())
        if state is not self.state:
            log.info("state %s -> %s%s", self.state.value if self.state else "-", state.value,
                     f" ({error.code}: {error.message})" if error else "")
        self.state, self.error, self._key = state, error, key
        self._status = build_status(state, attempt=attempt, max_attempts=max_attempts,
                                    error=error, state_since=self._since, pod=self.pod_name,
                                    pod_uid=self.pod_uid)
        self._seq += 1
        self._urgent_seq = self._seq
        metrics.set_state(self.platform, state)
        self._wake.set()
        return self._seq

    def set_field(self, name: str, value: Any) -> int:
        """Set (``None``: remove) an auxiliary gateway-owned status field. Included in every
        later write; the change itself is written lazily, within the write budget. Returns the
        version to wait for."""
        if name in _STATE_FIELDS:
            raise ValueError(f"{name} is a state field: use record()")
        if self._fields.get(name) == value:
            return self._seq
        if value is None:
            self._fields.pop(name, None)
        else:
            self._fields[name] = value
        if self._status is not None:  # before the first state there is nothing to write yet
            self._seq += 1
            self._wake.set()
        return self._seq

    def field(self, name: str) -> Any:
        return self._fields.get(name)

    async def restore(self, names: tuple[str, ...] = CARRIED_FIELDS,
                      timeout: float = 5.0) -> dict[str, Any]:  # noqa: ASYNC109
        """Read the auxiliary fields a previous process wrote and keep them in every write from
        now on (unless already set here). Call before the first report. Returns the values found
        ({} when the read did not succeed within ``timeout``)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            try:
                async with asyncio.timeout(max(deadline - loop.time(), 0.1)):
                    obj = await self._writer.read()
                break
            except Exception as exc:
                if loop.time() + 0.5 >= deadline:
                    log.warning("could not read the previous status (%s): starting without it",
                                describe_api_error(exc))
                    return {}
                await asyncio.sleep(0.5)
        status = obj.get("status") or {}
        found: dict[str, Any] = {}
        for name in names:
            value = status.get(name)
            if value is not None:
                found[name] = value
                if name not in self._fields:
                    self._fields[name] = value
        return found

    def _compose(self) -> dict[str, Any]:
        assert self._status is not None
        return {**self._status, **self._fields}

    async def wait_written(self, seq: int, timeout: float) -> bool:  # noqa: ASYNC109
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self._written_seq < seq:
            remaining = deadline - loop.time()
            if remaining <= 0 or self._task is None or self._task.done():
                return False
            written = self._written
            try:
                async with asyncio.timeout(remaining):
                    await written.wait()
            except TimeoutError:
                return False
        return True

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        failures = 0
        retry_at = -math.inf  # after a failed write: not before this (back-off)
        while True:
            if self._written_seq >= self._seq:
                self._wake.clear()
                await self._wake.wait()
                continue
            # Coalescing: whatever arrives while we wait for budget rides along in one write.
            now = loop.time()
            self._refill(now)
            urgent = self._urgent_seq > self._written_seq
            # Lazy changes (auxiliary fields only) wait for a full bucket, so a state change
            # right after them still finds a token.
            need = 1.0 if urgent else float(self.burst)
            pause = (need - self._tokens) * self.min_interval if self._tokens < need else 0.0
            pause = max(pause, retry_at - now)
            if pause > 0:
                if not urgent:
                    # Another change (a state change above all) ends the wait: look again.
                    self._wake.clear()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._wake.wait(), pause)
                    continue
                await asyncio.sleep(pause)
                self._refill(loop.time())
            seq, status = self._seq, self._compose()
            self._tokens = max(self._tokens - 1.0, 0.0)  # failed attempts count, too
            # Shielded: close() cancels this loop but lets a write already on the wire finish,
            # so it cannot land after (and overwrite) the final state.
            self._inflight = asyncio.ensure_future(self._writer.apply(status))
            try:
                await asyncio.shield(self._inflight)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                failures += 1
                self.writes_failed += 1
                metrics.STATUS_WRITES.labels(result="error").inc()
                log.warning("status write failed (attempt %d): %s", failures,
                            describe_api_error(exc))
                retry_at = loop.time() + doubling(0.5, failures, self.max_backoff)
                continue
            failures = 0
            self.writes_ok += 1
            metrics.STATUS_WRITES.labels(result="ok").inc()
            self._written_seq = max(self._written_seq, seq)
            written, self._written = self._written, asyncio.Event()
            written.set()

    def _refill(self, now: float) -> None:
        if self._refilled == -math.inf:
            self._tokens = float(self.burst)
        else:
            self._tokens = min(float(self.burst),
                               self._tokens + (now - self._refilled) / self.min_interval)
        self._refilled = now

    async def close(self, final: State | None = State.DISCONNECTED,
                    timeout: float = 3.0) -> bool:  # noqa: ASYNC109
        """Stop the writer and flush the last state, within ``timeout``.

        ``final`` replaces the current state unless that is `fatal` (the operator needs the
        error to decide) and only while this pod still is the reporting one: a replacement pod
        may already have written its own state, which a late `disconnected` must not clobber.
        Returns whether the last state reached the API server.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            except Exception as exc:  # it died earlier (liveness said so); flush anyway
                log.error("status writer had stopped: %s", describe(exc))
            self._task = None
        if self._inflight is not None and not self._inflight.done():
            with contextlib.suppress(Exception):
                await asyncio.wait_for(asyncio.shield(self._inflight), timeout / 2)
        if final is not None and self.state is not State.FATAL:
            self.record(final, max_attempts=self._key[2] if self._key else 0)
        if self._written_seq >= self._seq or self._status is None:
            return True
        status = self._compose()
        while loop.time() < deadline:
            try:
                async with asyncio.timeout(max(deadline - loop.time(), 0.1)):
                    await self._final_write(status)
                self._written_seq = self._seq
                self.writes_ok += 1
                metrics.STATUS_WRITES.labels(result="ok").inc()
                return True
            except _NotOurs:
                log.info("not writing the final state: another pod reports for this connection")
                return False
            except Exception as exc:
                self.writes_failed += 1
                metrics.STATUS_WRITES.labels(result="error").inc()
                log.warning("final status write failed: %s", describe_api_error(exc))
                await asyncio.sleep(min(0.3, max(deadline - loop.time(), 0)))
        return False

    async def _final_write(self, status: dict[str, Any]) -> None:
        obj = await self._writer.read()
        current = (obj.get("status") or {}).get(Field.GATEWAY_POD)
        if current and self.pod_name and current != self.pod_name:
            raise _NotOurs
        rv = (obj.get("metadata") or {}).get("resourceVersion")
        await self._writer.apply(status, resource_version=rv)


class _NotOurs(Exception):
    pass


# Auxiliary fields (set_field) besides the carried ones: status.webhook is this pod's view.
_STATE_FIELDS = frozenset(GATEWAY_FIELDS) - {*CARRIED_FIELDS, Field.WEBHOOK}
