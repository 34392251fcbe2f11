"""Pure builders of a PlatformConnection's children: ServiceAccount, Role, RoleBinding, the
poller Lease, Deployment; and, for webhook delivery, the Service and Ingress of
webhook_children.py.

All of them carry an owner reference (controller=true) to the PlatformConnection, so deleting it
lets the garbage collector remove them; the operator needs no finalizer. The gateway pod contract
(env, ports, probes) is docs/design.md.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from typing import Any

from switchboard_operator import __version__, webhook_children
from switchboard_operator.secrets import SecretRef

API_VERSION = "switchboard.dev/v1alpha1"
KIND = "PlatformConnection"
# The chart sets SWITCHBOARD_GATEWAY_IMAGE to the operator's own image (or a chosen one).
DEFAULT_IMAGE = os.environ.get("SWITCHBOARD_GATEWAY_IMAGE") or \
    f"ghcr.io/switchboard-dev/switchboard:{__version__}"
HEALTH_PORT = 8080
METRICS_PORT = 9090
GATEWAY_UID = 65532

# Resources of a gateway container whose spec.gateway.resources is unset: a namespace with a
# ResourceQuota refuses pods without requests. Measured in `make demo` (docs/gateway.md): a
# connected gateway holds 64 MiB RSS (QQ) and 81 MiB (Telegram, with PTB); the limit leaves
# room for bursts (a backlog replay, large updates, the bounded QQ inbox when full).
DEFAULT_GATEWAY_RESOURCES: dict[str, dict[str, str]] = {
    "requests": {"cpu": "10m", "memory": "96Mi"},
    "limits": {"memory": "256Mi"},
}

LABEL_CONNECTION = "switchboard.dev/connection"
MANAGED_BY = {"app.kubernetes.io/managed-by": "switchboard-operator"}
# On the pod template: a spec change or a Secret rotation changes the template, so the
# Deployment rolls the pod (like `kubectl rollout restart`).
ANN_SPEC_HASH = "switchboard.dev/spec-hash"
ANN_SECRET_HASH = "switchboard.dev/secret-hash"
# The uid of the gateway's ServiceAccount: one deleted by hand and recreated by the operator
# invalidates the running pod's token, so the new uid rolls the pod (a fresh token).
ANN_SA_UID = "switchboard.dev/serviceaccount-uid"
# On the Deployment: hash of everything the operator applied last; equal means nothing to do
# (this is what makes a restarted operator skip re-applying unchanged children).
ANN_APPLIED_HASH = "switchboard.dev/applied-hash"

RESERVED_ENV_PREFIX = "SWITCHBOARD_"
DEFAULT_DELIVERY = {"mode": "polling"}  # the CRD's default of spec.delivery


CHILD_SUFFIX = "-gateway"


def child_name(connection: str) -> str:
    return f"{connection}{CHILD_SUFFIX}"


def labels(connection: str) -> dict[str, str]:
    return {
        "app.kubernetes.io/name": "switchboard-gateway",
        "app.kubernetes.io/instance": connection,
        "app.kubernetes.io/component": "gateway",
        **MANAGED_BY,
        LABEL_CONNECTION: connection,
    }


def pod_selector(connection: str) -> dict[str, str]:
    """The labels that select a connection's gateway pods."""
    return {LABEL_CONNECTION: connection, "app.kubernetes.io/name": "switchboard-gateway"}


def owner_reference(body: Mapping[str, Any]) -> dict[str, Any]:
    meta = body["metadata"]
    return {"apiVersion": API_VERSION, "kind": KIND, "name": meta["name"], "uid": meta["uid"],
            "controller": True, "blockOwnerDeletion": True}


def spec_hash(spec: Mapping[str, Any]) -> str:
    """Hash of the spec minus suspend (suspend only scales; it must not count as a change) and
    minus a default delivery (the CRD's default appears on every connection stored before
    spec.delivery existed: it must not roll their gateways on upgrade)."""
    relevant = {k: v for k, v in spec.items()
                if k != "suspend" and not (k == "delivery" and v == DEFAULT_DELIVERY)}
    return _hash(relevant)


def _hash(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()[:16]


def child_meta(body: Mapping[str, Any]) -> dict[str, Any]:
    name = body["metadata"]["name"]
    return {"name": child_name(name), "namespace": body["metadata"]["namespace"],
            "labels": labels(name), "ownerReferences": [owner_reference(body)]}


def service_account(body: Mapping[str, Any]) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": child_meta(body)}


def role(body: Mapping[str, Any]) -> dict[str, Any]:
    """Least privilege: what the gateway uses, nothing more. It reads its own PlatformConnection
    (the QQ session it carries over, at start) and patches its own status (server-side apply);
    it posts no Events and never lists or watches. resourceNames pin both rules to this
    connection, so one gateway's token cannot read or patch another connection.
    """
    name = body["metadata"]["name"]
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": child_meta(body),
        "rules": [
            {"apiGroups": ["switchboard.dev"], "resources": ["platformconnections"],
             "resourceNames": [name], "verbs": ["get"]},
            {"apiGroups": ["switchboard.dev"], "resources": ["platformconnections/status"],
             "resourceNames": [name], "verbs": ["patch"]},
            # The poller fence (gateway poller_lease.py): read and renew its one Lease.
            {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"],
             "resourceNames": [child_name(name)], "verbs": ["get", "update"]},
        ],
    }


def poller_lease(body: Mapping[str, Any]) -> dict[str, Any]:
    """The Lease a gateway pod must hold to reach the platform (one poller per token). The
    operator creates it, metadata only (the gateway's Role cannot create: RBAC cannot limit
    create to a name); its spec belongs to the gateways, so server-side apply leaves it."""
    return {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": child_meta(body)}


def role_binding(body: Mapping[str, Any]) -> dict[str, Any]:
    meta = child_meta(body)
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding", "metadata": meta,
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                    "name": meta["name"]},
        "subjects": [{"kind": "ServiceAccount", "name": meta["name"],
                      "namespace": meta["namespace"]}],
    }


def gateway_env(body: Mapping[str, Any], ref: SecretRef | None) -> list[dict[str, Any]]:
    """The gateway's environment (docs/design.md: gateway pod contract)."""
    meta, spec = body["metadata"], body["spec"]
    platform = spec["platform"]
    env: list[dict[str, Any]] = [
        {"name": "SWITCHBOARD_CONNECTION", "value": meta["name"]},
        {"name": "SWITCHBOARD_NAMESPACE", "value": meta["namespace"]},
        {"name": "SWITCHBOARD_PLATFORM", "value": platform},
    ]
    if spec.get("apiBaseURL"):
        env.append({"name": "SWITCHBOARD_API_BASE_URL", "value": spec["apiBaseURL"]})
    backend = spec.get("backend") or {}
    if backend.get("url"):
        env.append({"name": "SWITCHBOARD_BACKEND_URL", "value": backend["url"]})
    if backend.get("echo"):
        env.append({"name": "SWITCHBOARD_BACKEND_ECHO", "value": "true"})
    env.append({"name": "SWITCHBOARD_BACKEND_TIMEOUT",
                "value": str(backend.get("timeoutSeconds", 10))})
    platform_spec = spec.get(platform) or {}
    env.append({"name": "SWITCHBOARD_RECONNECT",
                "value": json.dumps(platform_spec.get("reconnect") or {}, sort_keys=True)})
    # Not in the design table, but the gateway needs them and they are spec.<platform> fields.
    if platform == "telegram" and "conflictRetries" in platform_spec:
        env.append({"name": "SWITCHBOARD_TELEGRAM_CONFLICT_RETRIES",
                    "value": str(platform_spec["conflictRetries"])})
    if platform == "qqbot" and "intents" in platform_spec:
        env.append({"name": "SWITCHBOARD_QQ_INTENTS", "value": str(platform_spec["intents"])})
    if ref is not None:
        for var, key in ref.keys.items():
            env.append({"name": var,
                        "valueFrom": {"secretKeyRef": {"name": ref.name, "key": key}}})
            # Where it comes from (no value), so the gateway's messages name the Secret.
            env.append({"name": f"{var}_SOURCE", "value": f"Secret {ref.name}, key {key}"})
    env += [
        {"name": "SWITCHBOARD_POD_NAME",
         "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        {"name": "SWITCHBOARD_POD_UID",
         "valueFrom": {"fieldRef": {"fieldPath": "metadata.uid"}}},
        {"name": "SWITCHBOARD_BIND_ADDRESS",
         "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
        {"name": "SWITCHBOARD_POLLER_LEASE", "value": child_name(meta["name"])},
    ]
    env += webhook_children.env(body)
    # The user's extra env cannot override the contract (names are unique in the list).
    ours = {e["name"] for e in env}
    extra = (spec.get("gateway") or {}).get("env") or []
    env += [dict(e) for e in extra if e.get("name") not in ours]
    return env


def deployment(body: Mapping[str, Any], ref: SecretRef | None, *, replicas: int,
               secret_hash: str, sa_uid: str = "") -> dict[str, Any]:
    name = body["metadata"]["name"]
    spec = body["spec"]
    gw = spec.get("gateway") or {}
    meta = child_meta(body)
    selector = pod_selector(name)
    container: dict[str, Any] = {
        "name": "gateway",
        "image": gw.get("image") or DEFAULT_IMAGE,
        "command": ["switchboard-gateway"],
        "env": gateway_env(body, ref),
        "ports": [{"name": "health", "containerPort": HEALTH_PORT, "protocol": "TCP"},
                  {"name": "metrics", "containerPort": METRICS_PORT, "protocol": "TCP"}],
        "livenessProbe": {"httpGet": {"path": "/healthz", "port": "health"},
                          "initialDelaySeconds": 5, "periodSeconds": 10, "timeoutSeconds": 3,
                          "failureThreshold": 3},
        "readinessProbe": {"httpGet": {"path": "/readyz", "port": "health"},
                           "periodSeconds": 5, "timeoutSeconds": 3, "failureThreshold": 2},
        "securityContext": {
            "runAsNonRoot": True, "runAsUser": GATEWAY_UID, "runAsGroup": GATEWAY_UID,
            "allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"]}, "seccompProfile": {"type": "RuntimeDefault"},
        },
        # The root filesystem is read-only; Python and libraries may want a scratch /tmp.
        "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],
    }
    if webhook_children.settings(spec) is not None:
        container["ports"].append({"name": webhook_children.PORT_NAME,
                                   "containerPort": webhook_children.CONTAINER_PORT,
                                   "protocol": "TCP"})
    if gw.get("imagePullPolicy"):
        container["imagePullPolicy"] = gw["imagePullPolicy"]
    # The user's resources replace the default as a whole (a request above the default limit
    # must not end up invalid).
    container["resources"] = gw.get("resources") or DEFAULT_GATEWAY_RESOURCES
    pod_spec: dict[str, Any] = {
        "serviceAccountName": meta["name"],
        "automountServiceAccountToken": True,
        "enableServiceLinks": False,
        "terminationGracePeriodSeconds": 30,
        "securityContext": {"runAsNonRoot": True, "runAsUser": GATEWAY_UID,
                            "runAsGroup": GATEWAY_UID, "fsGroup": GATEWAY_UID,
                            "seccompProfile": {"type": "RuntimeDefault"}},
        "containers": [container],
        "volumes": [{"name": "tmp", "emptyDir": {"sizeLimit": "64Mi"}}],
    }
    if gw.get("nodeSelector"):
        pod_spec["nodeSelector"] = gw["nodeSelector"]
    if gw.get("tolerations"):
        pod_spec["tolerations"] = gw["tolerations"]
    return {
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": meta,
        "spec": {
            "replicas": replicas,
            # Two Telegram pollers on one token conflict (HTTP 409): never overlap pods.
            "strategy": {"type": "Recreate"},
            "revisionHistoryLimit": 3,
            "selector": {"matchLabels": selector},
            "template": {
                "metadata": {"labels": labels(name),
                             "annotations": {ANN_SPEC_HASH: spec_hash(spec),
                                             ANN_SECRET_HASH: secret_hash,
                                             **({ANN_SA_UID: sa_uid} if sa_uid else {})}},
                "spec": pod_spec,
            },
        },
    }


# The children besides the Deployment. The Deployment is checked by its applied-hash
# annotation; these four by their content (view() below), because a person may delete or edit
# them by hand and nothing else would notice (a missing ServiceAccount only shows when the next
# pod fails to start; a widened Role never shows).
AUX_KINDS = ("ServiceAccount", "Role", "RoleBinding", "Lease", "Service", "Ingress")
# Children only a webhook connection has: removed when it goes back to polling.
WEBHOOK_KINDS = ("Service", "Ingress")
_LABEL_KEYS = tuple(labels("x"))


def view(kind: str, obj: Mapping[str, Any]) -> dict[str, Any]:
    """The part of a ServiceAccount, Role, RoleBinding or Lease the operator owns, canonically
    (of a Lease only labels and owners: its renewals change nothing here, so cost no reconcile).

    Equal for the manifest built here and the live object applied from it (the apiserver adds
    no defaults to these fields), different when someone deleted one of our labels, our owner
    reference, or changed the rules, roleRef or subjects. Labels and owner references that
    others add are ignored (server-side apply keeps them anyway).
    """
    meta = obj.get("metadata") or {}
    own_labels = meta.get("labels") or {}
    out: dict[str, Any] = {
        "labels": {k: own_labels[k] for k in _LABEL_KEYS if k in own_labels},
        "owners": [{k: ref.get(k) for k in ("apiVersion", "kind", "name", "uid", "controller")}
                   for ref in meta.get("ownerReferences") or [] if ref.get("kind") == KIND],
    }
    if kind == "Role":
        out["rules"] = [{k: v for k, v in rule.items() if v}
                        for rule in obj.get("rules") or []]
    elif kind == "RoleBinding":
        out["roleRef"] = obj.get("roleRef")
        out["subjects"] = [{k: v for k, v in subject.items() if v}
                           for subject in obj.get("subjects") or []]
    elif kind == "Service":  # what we set; the apiserver adds clusterIP, families, ...
        spec = obj.get("spec") or {}
        out["spec"] = {"type": spec.get("type"), "selector": spec.get("selector"),
                       "ports": [{k: port.get(k) for k in ("name", "port", "targetPort",
                                                           "protocol")}
                                 for port in spec.get("ports") or []]}
    elif kind == "Ingress":
        out["spec"] = obj.get("spec")
    return out


def view_hash(kind: str, obj: Mapping[str, Any]) -> str:
    """A short digest of view(): what the operator keeps in memory per child."""
    return _hash(view(kind, obj))


def build(body: Mapping[str, Any], ref: SecretRef | None, *, replicas: int,
          secret_hash: str, sa_uid: str = "") -> list[dict[str, Any]]:
    """All children, in apply order (the Deployment last, stamped with the hash of all)."""
    objs = [service_account(body), role(body), role_binding(body), poller_lease(body),
            *webhook_children.build(body),
            deployment(body, ref, replicas=replicas, secret_hash=secret_hash, sa_uid=sa_uid)]
    objs[-1]["metadata"]["annotations"] = {ANN_APPLIED_HASH: _hash(objs)}
    return objs
