"""kopf registrations: watches only (raw events and indexes), settings, login, probes.

No handler here writes to the API: kopf's change-detecting handlers (on.create/update/field)
are deliberately absent, so kopf stores no progress or diff-base annotations and adds no
finalizer (owner references clean up; deleting a PlatformConnection is instant). All writes are
the Controller's (reconcile.py).
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import uuid
from dataclasses import dataclass, field
from typing import Any

import kopf

from switchboard_operator import children, kube, metrics
from switchboard_operator.leader import LeaderElector
from switchboard_operator.reconcile import Controller

log = logging.getLogger(__name__)

CONTROLLER = Controller()


@dataclass
class Options:
    """Set by main() before kopf starts."""

    leader_election: bool = True
    lease_namespace: str = "default"
    lease_name: str = "switchboard-operator"
    identity: str = field(
        default_factory=lambda: f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}")


OPTIONS = Options()
_background: set[asyncio.Task[Any]] = set()


@kopf.on.startup()
async def configure(settings: kopf.OperatorSettings, logger: logging.Logger, **_: Any) -> None:
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
    CONTROLLER.kube = kube.Kube(info)
    if OPTIONS.leader_election:
        elector = LeaderElector(CONTROLLER.kube, OPTIONS.lease_namespace, OPTIONS.lease_name,
                                OPTIONS.identity, on_started=CONTROLLER.start_leading,
                                on_stopped=CONTROLLER.stop_leading)
        task = asyncio.get_running_loop().create_task(elector.run())
        _background.add(task)
    else:
        metrics.LEADER.set(1)
        CONTROLLER.start_leading()


@kopf.on.login()
async def login(logger: logging.Logger, settings: kopf.OperatorSettings,
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
    await CONTROLLER.close()


@kopf.on.probe(id="leader")
def leader_probe(**_: Any) -> bool:
    return CONTROLLER.leading


@kopf.on.probe(id="connections")
def connections_probe(**_: Any) -> int:
    return len(CONTROLLER.connections)


# -- watches -----------------------------------------------------------------------------------
# Indexes are filled from the initial listing before kopf runs any other handler, so the caches
# of Deployments and Secrets are complete before the first PlatformConnection is reconciled
# (no needless re-apply of children after an operator restart).

MANAGED = {"app.kubernetes.io/managed-by": "switchboard-operator"}


@kopf.index("apps", "v1", "deployments", labels=MANAGED)
async def deployment_index(event: Any = None, body: kopf.Body | None = None, **_: Any) -> None:
    if body is not None:
        CONTROLLER.observe_deployment("MODIFIED", dict(body))


@kopf.on.event("apps", "v1", "deployments", labels=MANAGED)
async def deployment_event(event: dict[str, Any], **_: Any) -> None:
    CONTROLLER.observe_deployment(event["type"], event["object"])


# The other children: a ServiceAccount, Role or RoleBinding deleted or edited by hand is
# re-applied at once (watch events only; an idle connection still costs no request). Matched
# by owner, label or name rather than by our labels, so that removing a label by hand is seen
# too (kopf filters labels client-side: the watch and its cost are the same).

def _child(name: str, namespace: str, labels: kopf.Labels, body: kopf.Body, **_: Any) -> bool:
    if children.LABEL_CONNECTION in labels:
        return True
    if any(ref.get("kind") == children.KIND and ref.get("apiVersion") == children.API_VERSION
           for ref in body.get("metadata", {}).get("ownerReferences") or []):
        return True
    return (name or "").endswith(children.CHILD_SUFFIX) and \
        (namespace, name.removesuffix(children.CHILD_SUFFIX)) in CONTROLLER.connections


def _watch_child(kind: str, group: str, plural: str) -> None:
    """An index (filled before the first reconcile) plus raw events for one child kind."""

    @kopf.index(group, "v1", plural, when=_child, id=f"{plural}_index")
    async def index(body: kopf.Body, **_: Any) -> None:
        CONTROLLER.observe_child(kind, "MODIFIED", dict(body))

    @kopf.on.event(group, "v1", plural, when=_child, id=f"{plural}_event")
    async def event(event: dict[str, Any], **_: Any) -> None:
        CONTROLLER.observe_child(kind, event["type"], event["object"])


for _kind, _group, _plural in (("ServiceAccount", "", "serviceaccounts"),
                               ("Role", "rbac.authorization.k8s.io", "roles"),
                               ("RoleBinding", "rbac.authorization.k8s.io", "rolebindings")):
    _watch_child(_kind, _group, _plural)


@kopf.index("", "v1", "secrets")
async def secret_index(body: kopf.Body, **_: Any) -> None:
    CONTROLLER.observe_secret("MODIFIED", dict(body))


def _referenced(name: str, namespace: str, **_: Any) -> bool:
    return bool(CONTROLLER.secrets.users(namespace, name))


@kopf.on.event("", "v1", "secrets", when=_referenced)
async def secret_event(event: dict[str, Any], **_: Any) -> None:
    CONTROLLER.observe_secret(event["type"], event["object"])


@kopf.on.event("switchboard.dev", "v1alpha1", "platformconnections")
async def connection_event(event: dict[str, Any], **_: Any) -> None:
    CONTROLLER.observe_connection(event["type"], event["object"])


__all__ = ["CONTROLLER", "OPTIONS", "children"]
