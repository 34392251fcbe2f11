"""kopf registrations: start-up, login, clean-up. kopf runs the operator; it watches nothing.

kopf's change-detecting handlers (on.create/update/field) are deliberately absent, so kopf
stores no progress or diff-base annotations and adds no finalizer (owner references clean up;
deleting a PlatformConnection is instant). Its watches are not used either: they miss deletions
across a re-list (watch_cache.py); the operator's own list+watch caches (watches.py) feed the
Controller (reconcile.py), which makes every write.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import uuid
from dataclasses import dataclass, field
from typing import Any

import kopf
from aiohttp import web

from switchboard_operator import health, kube, leader, metrics, watches
from switchboard_operator.leader import LeaderElector
from switchboard_operator.reconcile import Controller

log = logging.getLogger(__name__)

CONTROLLER = Controller()
# The logger kopf hands to handlers.
AnyLogger = logging.Logger | logging.LoggerAdapter[Any]


@dataclass
class Options:
    """Set by main() before kopf starts."""

    leader_election: bool = True
    lease_namespace: str = "default"
    lease_name: str = "switchboard-operator"
    lease_seconds: int = leader.LEASE_SECONDS
    renew_deadline: float = leader.RENEW_DEADLINE
    retry_seconds: float = leader.RETRY_SECONDS
    identity: str = field(default_factory=lambda: default_identity())
    health_port: int = 0
    namespaces: list[str] = field(default_factory=list)  # empty: all
    health_addresses: list[str] = field(default_factory=list)


def default_identity() -> str:
    """The pod name (downward API) in a cluster, else host, pid and a random suffix; never
    the user name, which needs a passwd entry (kopf's own default does)."""
    return os.environ.get("POD_NAME") or \
        f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


OPTIONS = Options()
_background: set[asyncio.Task[Any]] = set()
_runners: list[web.AppRunner] = []


@kopf.on.startup()
async def configure(settings: kopf.OperatorSettings, logger: AnyLogger, **_: Any) -> None:
    # Keep kopf's bookkeeping (if any handler ever needs it) in annotations, never in status,
    # which has two owners and a schema.
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(
        prefix="switchboard.dev")
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix="switchboard.dev", key="last-handled-configuration")
    # kopf's own events only for warnings and errors; the operator posts its meaningful ones.
    settings.posting.level = logging.WARNING
    settings.posting.loggers = False
    # Leader election is ours (leader.py); kopf peering stays off (kopf.run(standalone=True)).
    settings.peering.standalone = True
    settings.watching.connect_timeout = 30

    info = kopf.login_via_client(logger=logger, settings=settings)
    if not isinstance(info, kopf.ConnectionInfo):
        raise kopf.PermanentError("no Kubernetes credentials (kubeconfig or in-cluster)")
    def relogin() -> kopf.ConnectionInfo | None:
        fresh = kopf.login_via_client(logger=logger, settings=settings)
        return fresh if isinstance(fresh, kopf.ConnectionInfo) else None

    CONTROLLER.kube = kube.Kube(info, login=relogin, identity=OPTIONS.identity)
    try:
        runner = await health.serve(OPTIONS.health_port, OPTIONS.health_addresses,
                                    _health_report, _not_ready)
    except OSError as exc:
        raise kopf.PermanentError(exc.strerror) from None
    if runner is not None:
        _runners.append(runner)
    caches = watches.build(CONTROLLER.kube, CONTROLLER, OPTIONS.namespaces)
    for watch in caches:
        _keep(watch.run())
    _keep(watches.release_when_listed(CONTROLLER, caches))
    if OPTIONS.leader_election:
        elector = LeaderElector(CONTROLLER.kube, OPTIONS.lease_namespace, OPTIONS.lease_name,
                                OPTIONS.identity, on_started=CONTROLLER.start_leading,
                                on_stopped=CONTROLLER.stop_leading,
                                lease_seconds=OPTIONS.lease_seconds,
                                renew_deadline=OPTIONS.renew_deadline,
                                retry_seconds=OPTIONS.retry_seconds)
        CONTROLLER.kube.fence = elector.remaining
        CONTROLLER.kube.fence_exempt = (elector.path, elector.path.rsplit("/", 1)[0])
        _keep(elector.run())
    else:
        metrics.LEADER.set(1)
        CONTROLLER.start_leading()


def _keep(coro: Any) -> None:
    """Run ``coro`` in the background until cleanup; a crash ends the operator (kopf stops
    when its loop has no operator left), rather than leaving it half-blind."""
    task = asyncio.get_running_loop().create_task(coro)
    _background.add(task)
    task.add_done_callback(_background_done)


def _background_done(task: asyncio.Task[Any]) -> None:
    _background.discard(task)
    if not task.cancelled() and task.exception() is not None:
        log.critical("background task crashed: %r; stopping", task.exception())
        os.kill(os.getpid(), signal.SIGTERM)


@kopf.on.login()
async def login(logger: AnyLogger, settings: kopf.OperatorSettings,
                **_: Any) -> kopf.AiohttpSession | None:
    """kopf's usual client login, in a session whose requests are counted in our metrics."""
    info = kopf.login_via_client(logger=logger, settings=settings)
    if not isinstance(info, kopf.ConnectionInfo):
        return None
    return kopf.AiohttpSession(server=info.server, default_namespace=info.default_namespace,
                               aiohttp_session=kube.session_for(info, "kopf"))


@kopf.on.cleanup()
async def cleanup(**_: Any) -> None:
    for task in list(_background):
        task.cancel()
    if _background:
        await asyncio.wait(_background, timeout=5)
    for runner in _runners:
        await runner.cleanup()
    await CONTROLLER.close()


def _not_ready() -> str | None:
    return None if CONTROLLER.listed else "watches have not listed their objects yet"


def _health_report() -> dict[str, Any]:
    return {"leader": CONTROLLER.leading, "connections": len(CONTROLLER.connections)}


__all__ = ["CONTROLLER", "OPTIONS"]
