"""What the operator watches, and into which of the Controller's caches each watch feeds.

Every watch is a ListWatch (watch_cache.py says why not kopf's): PlatformConnections, the
gateway Deployments (label-selected: only the operator's), the credentials Secrets
(label-selected on the server: cert-manager's way; an unrelated Secret is never read, data
included: 300 unrelated 64 KiB Secrets raised peak memory from 66 to 142 MiB when kopf filtered
them in the client), the ServiceAccounts, Roles and RoleBindings of gateways (matched by
label, owner or name in the client, so that removing a label by hand is seen too), and their
poller Leases, and webhook Services and Ingresses (both label-selected on the server).
Reconciles wait until every watch has listed once (Controller.caches_listed): before that, a
Secret would look missing and a Deployment absent.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from typing import Any

from switchboard_operator import children
from switchboard_operator import secrets as sec
from switchboard_operator.kube import GROUP, PLURAL, VERSION, Kube
from switchboard_operator.reconcile import Controller
from switchboard_operator.watch_cache import ListWatch, in_scope, scopes

MANAGED_SELECTOR = "app.kubernetes.io/managed-by=switchboard-operator"
CREDENTIALS_SELECTOR = f"{sec.CREDENTIALS_LABEL}={sec.CREDENTIALS_VALUE}"
CHILD_KINDS = (("ServiceAccount", "/api/v1/{ns}serviceaccounts"),
               ("Role", "/apis/rbac.authorization.k8s.io/v1/{ns}roles"),
               ("RoleBinding", "/apis/rbac.authorization.k8s.io/v1/{ns}rolebindings"))
WEBHOOK_KINDS = (("Service", "/api/v1/{ns}services"),
                 ("Ingress", "/apis/networking.k8s.io/v1/{ns}ingresses"))


def build(kube: Kube, controller: Controller, namespaces: Sequence[str]) -> list[ListWatch]:
    def served(obj: Mapping[str, Any]) -> bool:
        return in_scope(namespaces, obj["metadata"].get("namespace") or "")

    def is_child(obj: Mapping[str, Any]) -> bool:
        meta = obj["metadata"]
        if not served(obj):
            return False
        if children.LABEL_CONNECTION in (meta.get("labels") or {}):
            return True
        if any(ref.get("kind") == children.KIND and ref.get("apiVersion") == children.API_VERSION
               for ref in meta.get("ownerReferences") or []):
            return True
        name = meta.get("name") or ""
        return name.endswith(children.CHILD_SUFFIX) and \
            (meta.get("namespace"), name.removesuffix(children.CHILD_SUFFIX)) \
            in controller.connections

    watches = [
        ListWatch(kube, scopes(namespaces, f"/apis/{GROUP}/{VERSION}/{{ns}}{PLURAL}"),
                  controller.observe_connection, what="PlatformConnections", keep=served),
        ListWatch(kube, scopes(namespaces, "/apis/apps/v1/{ns}deployments"),
                  controller.observe_deployment, what="gateway Deployments",
                  selector=MANAGED_SELECTOR, keep=served),
        ListWatch(kube, scopes(namespaces, "/api/v1/{ns}secrets"), controller.observe_secret,
                  what="credentials Secrets", selector=CREDENTIALS_SELECTOR, keep=served),
    ]
    for kind, collection in CHILD_KINDS:
        def observe(event: str, obj: Mapping[str, Any], kind: str = kind) -> None:
            controller.observe_child(kind, event, obj)
        watches.append(ListWatch(kube, scopes(namespaces, collection), observe,
                                 what=f"gateway {kind}s", keep=is_child))

    # Poller Leases: selected on the server (every node's Lease renews every 10 s; filtering
    # them here would cost a watch event each). One whose label is removed by hand arrives as
    # DELETED, and is applied again with it.
    def observe_lease(event: str, obj: Mapping[str, Any]) -> None:
        controller.observe_child("Lease", event, obj)
    watches.append(ListWatch(kube, scopes(namespaces, "/apis/coordination.k8s.io/v1/{ns}leases"),
                             observe_lease, what="gateway poller Leases",
                             selector=MANAGED_SELECTOR, keep=is_child))
    # Webhook Services and Ingresses: selected on the server too (a cluster has many
    # Services, and none of the others matter here).
    for kind, collection in WEBHOOK_KINDS:
        def observe_webhook_child(event: str, obj: Mapping[str, Any], kind: str = kind) -> None:
            controller.observe_child(kind, event, obj)
        watches.append(ListWatch(kube, scopes(namespaces, collection), observe_webhook_child,
                                 what=f"gateway webhook {kind}s", selector=MANAGED_SELECTOR,
                                 keep=is_child))
    return watches


async def release_when_listed(controller: Controller, watches: Sequence[ListWatch]) -> None:
    """Reconciles start once every cache is complete."""
    await asyncio.gather(*(w.synced.wait() for w in watches))
    controller.caches_listed()
