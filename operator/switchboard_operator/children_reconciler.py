"""Keeps a connection's children (ServiceAccount, Role, RoleBinding, Deployment) as specified.

Server-side apply of what changed, skipped entirely when nothing they depend on changed (the
connection's resourceVersion, the Secret's hash, the replica count) and the live objects still
match. What the API server refuses as invalid (400/422) is remembered with its message and not
applied again until the generation, the Secret or the replicas change; other failures are
returned to be retried with back-off. A spec the admin policy refuses is not applied at all,
and a gateway of an earlier spec is scaled to 0.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from switchboard_operator import children
from switchboard_operator import secrets as sec
from switchboard_operator.cache import Cache
from switchboard_operator.decide import Plan
from switchboard_operator.kube import ApiError, Kube
from switchboard_operator.restarts import Key

log = logging.getLogger(__name__)

# HTTP statuses of an apply the API server refuses as invalid: applying the same objects again
# gets the same answer, so they wait for a change (the API conventions' 400 BadRequest and 422
# Invalid). Other failures (403, 409, 5xx, timeouts) are retried with back-off.
INVALID = (400, 422)


@dataclass
class Outcome:
    live: dict[str, Any] | None  # the gateway Deployment (summary) after this reconcile
    apply_failed: str | None = None  # the API server's message, for status
    retry_error: ApiError | None = None  # raise after status is written: retried


class ChildrenReconciler:
    def __init__(self, cache: Cache) -> None:
        self.cache = cache
        self.kube: Kube | None = None
        # key -> ((resourceVersion, secret hash, replicas, ServiceAccount uid), applied hash,
        # view hashes of the ServiceAccount, Role and RoleBinding) of the last build.
        self._built: dict[Key, tuple[tuple[Any, str, int, str], str, dict[str, str]]] = {}
        # key -> ((generation, secret hash, replicas), the API server's message) of children
        # the API server refused as invalid: not applied again until one of those changes.
        self._rejected: dict[Key, tuple[tuple[int, str, int], str]] = {}

    def forget(self, key: Key) -> None:
        self._built.pop(key, None)
        self._rejected.pop(key, None)

    async def reconcile(self, key: Key, body: Mapping[str, Any], ref: sec.SecretRef | None,
                        plan: Plan, secret_hash: str, refused: str | None) -> Outcome:
        assert self.kube is not None
        ns, name = key
        live = self.cache.deployments.get(key)
        memo = (body["metadata"].get("resourceVersion"), secret_hash, plan.replicas,
                self.cache.service_account_uid(key))
        attempt = (int(body["metadata"].get("generation", 0)), secret_hash, plan.replicas)
        built = self._built.get(key)
        rejected = self._rejected.get(key)
        if rejected is not None and rejected[0] != attempt:
            self._rejected.pop(key, None)  # something changed: try again
            rejected = None
        if refused:
            # Nothing of a refused spec is applied; a gateway of an earlier spec (the policy
            # may have been tightened since) is scaled to 0.
            self._built.pop(key, None)
            if live is not None and live["spec"]["replicas"]:
                result = await self.kube.scale(ns, children.child_name(name), 0)
                self.cache.deployment("MODIFIED", result)
                log.info("%s/%s: refused by the policy, gateway scaled to 0", ns, name)
            return Outcome(self.cache.deployments.get(key))
        if rejected is not None:
            return Outcome(live, apply_failed=rejected[1])  # retried when the spec changes
        if built is not None and built[0] == memo and live is not None \
                and live["metadata"]["annotations"].get(children.ANN_APPLIED_HASH) \
                == built[1] and live["spec"]["replicas"] == plan.replicas \
                and not self.cache.aux_drift(key, built[2]):
            return Outcome(live)
        try:
            return Outcome(await self._apply(key, body, ref, plan, secret_hash, memo))
        except ApiError as exc:
            if exc.status not in INVALID:
                return Outcome(self.cache.deployments.get(key), apply_failed=exc.message,
                               retry_error=exc)
            self._rejected[key] = (attempt, exc.message)
            log.warning("%s/%s: the API server refused the gateway's objects: %s",
                        ns, name, exc.message)
            return Outcome(self.cache.deployments.get(key), apply_failed=exc.message)

    async def _apply(self, key: Key, body: Mapping[str, Any], ref: sec.SecretRef | None,
                     plan: Plan, secret_hash: str,
                     memo: tuple[Any, str, int, str]) -> dict[str, Any] | None:
        """Server-side apply what changed of the gateway's objects; the live Deployment after.

        The ServiceAccount, Role and RoleBinding are compared by content with the live ones
        (watched): one deleted or edited by hand is re-applied alone."""
        assert self.kube is not None
        ns, name = key
        live = self.cache.deployments.get(key)
        applied: set[str] = set()
        if not self.cache.service_account_uid(key):
            # The ServiceAccount first (new, or deleted by hand): the pod template carries its
            # uid, so a recreated one rolls the gateway onto a token that is valid again.
            result = await self.kube.apply_or_recreate(children.service_account(body))
            self.cache.child("ServiceAccount", "MODIFIED", result)
            applied.add("ServiceAccount")
        sa_uid = self.cache.service_account_uid(key)
        memo = (*memo[:3], sa_uid)
        objs = children.build(body, ref, replicas=plan.replicas, secret_hash=secret_hash,
                              sa_uid=sa_uid)
        want = objs[-1]["metadata"]["annotations"][children.ANN_APPLIED_HASH]
        views = {o["kind"]: children.view_hash(o["kind"], o) for o in objs[:-1]}
        if live is None \
                or live["metadata"]["annotations"].get(children.ANN_APPLIED_HASH) != want \
                or live["spec"]["replicas"] != plan.replicas:
            # Replicas are the operator's too: a Deployment scaled by hand (3 pollers on one
            # token, or none) is set back by the next apply (forced: it owns the field again).
            todo = objs
        else:
            drift = self.cache.aux_drift(key, views)
            todo = [o for o in objs[:-1] if o["kind"] in drift]
        todo = [o for o in todo if o["kind"] not in applied]
        # A connection back on polling: its webhook Service and Ingress go (the Deployment,
        # applied below, stops serving the webhook; its next pod deletes it at Telegram).
        stale = [kind for kind in children.WEBHOOK_KINDS
                 if kind not in views and kind in (self.cache.aux.get(key) or {})]
        for kind in stale:
            await self.kube.delete(kind, ns, children.child_name(name))
            self.cache.forget_child(key, kind)
            log.info("%s/%s: deleted its webhook %s (back to polling)", ns, name, kind)
        for obj in todo:
            result = await self.kube.apply_or_recreate(obj)
            if obj["kind"] == "Deployment":
                self.cache.deployment("MODIFIED", result)
            else:
                self.cache.child(obj["kind"], "MODIFIED", result)
        if todo:
            log.info("applied %s of %s/%s (replicas %s)",
                     "children" if len(todo) == len(objs)
                     else ", ".join(o["kind"] for o in todo), ns, name, plan.replicas)
        self._built[key] = (memo, want, views)
        return self.cache.deployments.get(key)
