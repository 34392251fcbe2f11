"""What the operator knows of the cluster: connections, their children, referenced Secrets.

Fed by the watches (watches.py) and by the results of the operator's own writes. Each observe
function returns the connection to reconcile because of the event (None: nothing changed that
matters), so that unrelated updates and the echoes of our own writes cost nothing. No I/O here.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from switchboard_operator import children, metrics
from switchboard_operator import secrets as sec
from switchboard_operator.conditions import READY, rollout_in_progress
from switchboard_operator.restarts import Key

log = logging.getLogger(__name__)


def resource_version(obj: Mapping[str, Any]) -> int:
    """resourceVersion as a number: etcd revisions, so a stale watch event never wins over
    the object our own write returned."""
    value = (obj.get("metadata") or {}).get("resourceVersion") or "0"
    return int(value) if value.isdigit() else 0


def deployment_summary(obj: Mapping[str, Any]) -> dict[str, Any]:
    """The few fields of a Deployment the operator needs (keeps memory small at scale)."""
    meta, spec, status = obj.get("metadata") or {}, obj.get("spec") or {}, obj.get("status") or {}
    failure = next((c for c in status.get("conditions") or []
                    if c.get("type") == "ReplicaFailure" and c.get("status") == "True"), None)
    unavailable = next((c for c in status.get("conditions") or []
                        if c.get("type") == "Available" and c.get("status") == "False"), None)
    return {
        "metadata": {"generation": meta.get("generation", 0), "uid": meta.get("uid"),
                     "resourceVersion": meta.get("resourceVersion", "0"),
                     "annotations": {children.ANN_APPLIED_HASH: (meta.get("annotations") or {})
                                     .get(children.ANN_APPLIED_HASH)}},
        "spec": {"replicas": spec.get("replicas", 1)},
        "status": {k: status.get(k, 0) for k in ("observedGeneration", "replicas",
                                                  "updatedReplicas", "availableReplicas")},
        # The ReplicaSet could not create a pod (a quota, an admission webhook): "reason:
        # message", or None.
        "replicaFailure": f"{failure.get('reason')}: {failure.get('message')}"
        if failure is not None else None,
        # Since when the Deployment has lacked an available pod (its Available condition).
        "unavailableSince": unavailable.get("lastTransitionTime") if unavailable else None,
    }


def _without_rv(summary: Mapping[str, Any]) -> dict[str, Any]:
    meta = {k: v for k, v in summary["metadata"].items() if k != "resourceVersion"}
    return {**summary, "metadata": meta}


class Cache:
    def __init__(self) -> None:
        self.connections: dict[Key, dict[str, Any]] = {}
        self.deployments: dict[Key, dict[str, Any]] = {}
        # key -> (uid, generation) of the gateway Deployment last seen completely rolled out.
        self.completed: dict[Key, tuple[str | None, int]] = {}
        # key -> kind -> (resourceVersion, children.view_hash, uid) of the live ServiceAccount,
        # Role and RoleBinding.
        self.aux: dict[Key, dict[str, tuple[int, str, str]]] = {}
        self.secrets = sec.SecretCache()
        # Referenced Secrets that exist without the credentials label (metadata seen only).
        self.unlabelled: set[Key] = set()
        self.states: dict[Key, str | None] = {}
        # key -> (status, reason) of the Ready condition last exported as a metric.
        self.ready: dict[Key, tuple[str, str]] = {}

    def connection(self, kind: str | None, obj: Mapping[str, Any]) -> Key | None:
        meta = obj["metadata"]
        key = (meta["namespace"], meta["name"])
        if kind == "DELETED":
            self.connections.pop(key, None)
            self.aux.pop(key, None)
            self.secrets.unrefer(key)
            ready = self.ready.pop(key, None)
            if key in self.states:
                metrics.connection_removed(key, self.states.pop(key))
            else:
                metrics.forget_connection(*key)
            if ready is not None:
                metrics.forget_ready(key, ready[1])
            return key
        old = self.connections.get(key)
        if old is not None and old["metadata"].get("uid") == meta.get("uid") \
                and resource_version(old) > resource_version(obj):
            return None  # older than what our own write returned
        self.connections[key] = dict(obj)
        state = (obj.get("status") or {}).get("state")
        if key not in self.states or self.states[key] != state:
            metrics.connection_state_changed(key, self.states.get(key), state,
                                             known=key in self.states)
            self.states[key] = state
        metrics.CONNECTION_RESTARTS.labels(*key).set(
            int((obj.get("status") or {}).get("restarts") or 0))
        ready = _ready(obj)
        before = self.ready.get(key)
        if before != ready:
            metrics.connection_ready_changed(key, before[1] if before else None, *ready)
            self.ready[key] = ready
        return key

    def deployment(self, kind: str | None, obj: Mapping[str, Any]) -> Key | None:
        meta = obj["metadata"]
        connection = (meta.get("labels") or {}).get(children.LABEL_CONNECTION)
        if not connection:
            return None
        key = (meta["namespace"], connection)
        if kind == "DELETED":
            self.deployments.pop(key, None)
            self.completed.pop(key, None)
            return key
        summary = deployment_summary(obj)
        old = self.deployments.get(key)
        if old is not None and resource_version(old) > resource_version(summary):
            return None
        self.deployments[key] = summary
        if not rollout_in_progress(summary):
            self.completed[key] = (meta.get("uid"), summary["metadata"]["generation"])
        if old is None or _without_rv(old) != _without_rv(summary):
            return key
        return None

    def child(self, kind: str, event: str | None, obj: Mapping[str, Any]) -> Key | None:
        """A ServiceAccount, Role, RoleBinding, Lease, Service or Ingress of a gateway was
        listed, changed or deleted.

        Only a deletion or a change of what the operator owns (children.view) matters, so our
        own applies (observed from their results first) and unrelated updates cost nothing.
        """
        meta = obj["metadata"]
        name = meta.get("name") or ""
        if not name.endswith(children.CHILD_SUFFIX):
            return None
        # Identified by name: it is the object the operator applies for that connection,
        # whatever labels or owners someone left on it.
        key = (meta["namespace"], name.removesuffix(children.CHILD_SUFFIX))
        seen = self.aux.setdefault(key, {})
        old = seen.get(kind)
        if event == "DELETED":
            if old is not None and old[0] > resource_version(obj):
                return None  # an older incarnation; ours (re-applied) is newer
            seen.pop(kind, None)
            if not seen:
                self.aux.pop(key, None)
            if key in self.connections:
                log.info("%s/%s: %s %s deleted", *key, kind, meta["name"])
                return key
            return None
        if old is not None and old[0] > resource_version(obj):
            return None
        current = children.view_hash(kind, obj)
        seen[kind] = (resource_version(obj), current, str(meta.get("uid") or ""))
        return key if old is None or old[1] != current else None

    def forget_child(self, key: Key, kind: str) -> None:
        """The operator deleted that child itself (its watch event follows, or not)."""
        seen = self.aux.get(key) or {}
        seen.pop(kind, None)

    def secret(self, kind: str | None, obj: Mapping[str, Any]) -> set[Key]:
        """The connections that use the Secret, if what they use of it changed."""
        meta = obj["metadata"]
        ns, name = meta["namespace"], meta["name"]
        if kind == "DELETED":
            self.secrets.drop(ns, name)
            changed = True
        else:
            self.unlabelled.discard((ns, name))
            changed = self.secrets.store(ns, name, obj)
        metrics.SECRETS_CACHED.set(len(self.secrets.digests))
        return set(self.secrets.users(ns, name)) if changed else set()

    def service_account_uid(self, key: Key) -> str:
        """The uid of the gateway's live ServiceAccount ("" while there is none)."""
        return ((self.aux.get(key) or {}).get("ServiceAccount") or (0, "", ""))[2]

    def rolling_out(self, key: Key, live: Mapping[str, Any] | None) -> bool:
        uid, generation = self.completed.get(key, (None, None))
        if live is None or uid != live["metadata"].get("uid"):
            generation = None
        return rollout_in_progress(live, generation)

    def aux_drift(self, key: Key, views: Mapping[str, str]) -> list[str]:
        """Kinds among ServiceAccount, Role, RoleBinding that are missing or differ."""
        seen = self.aux.get(key) or {}
        return [kind for kind, want in views.items()
                if kind not in seen or seen[kind][1] != want]


def _ready(obj: Mapping[str, Any]) -> tuple[str, str]:
    """(status, reason) of the object's Ready condition; ("Unknown", "Unknown") before one."""
    for c in (obj.get("status") or {}).get("conditions") or ():
        if c.get("type") == READY:
            return str(c.get("status") or "Unknown"), str(c.get("reason") or "Unknown")
    return "Unknown", "Unknown"
