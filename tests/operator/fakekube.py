"""An in-memory stand-in for the operator's Kube client (the small interface reconcile.py
uses), for fast Controller tests on a fake clock. The same behaviours are tested on the real
control plane too (test_caches.py, test_apply_failures.py, test_restarts.py)."""

from __future__ import annotations

import asyncio
import itertools
import json
from collections.abc import Mapping
from typing import Any

from switchboard_operator.kube import ApiError

_rv = itertools.count(100)


def not_found(what: str) -> ApiError:
    body = json.dumps({"kind": "Status", "message": f"{what} not found", "code": 404})
    return ApiError(404, body, what)


class FakeKube:
    """Objects by (kind, namespace, name); every call is recorded in ``calls``."""

    def __init__(self) -> None:
        self.objects: dict[tuple[str, str, str], dict[str, Any]] = {}
        self.calls: list[tuple[str, str]] = []
        self.events: list[tuple[str, str, str]] = []
        self.fail: dict[str, ApiError] = {}  # method -> error to raise
        self.hang: set[str] = set()  # methods that never answer (a stalled API server)
        self.hanging = 0  # calls waiting in a hang right now

    async def _maybe_fail(self, method: str, what: str) -> None:
        self.calls.append((method, what))
        if method in self.hang:
            self.hanging += 1
            try:
                await asyncio.Event().wait()
            finally:
                self.hanging -= 1
        if method in self.fail:
            raise self.fail[method]

    async def request(self, method: str, path: str, **_: Any) -> dict[str, Any]:
        await self._maybe_fail(f"request {method}", path)
        parts = path.strip("/").split("/")
        key = ("PlatformConnection", parts[-3], parts[-1])
        if key not in self.objects:
            raise not_found(path)
        return self.objects[key]

    async def metadata(self, path: str) -> dict[str, Any] | None:
        await self._maybe_fail("metadata", path)
        return None

    async def apply_or_recreate(self, manifest: Mapping[str, Any]) -> dict[str, Any]:
        meta = manifest["metadata"]
        await self._maybe_fail("apply", f"{manifest['kind']} {meta['name']}")
        existing = self.objects.get((manifest["kind"], meta["namespace"], meta["name"]))
        # Kept while the object lives; a new one (created again) gets a new uid.
        uid = existing["metadata"]["uid"] if existing else f"uid-{meta['name']}-{next(_rv)}"
        obj = {**manifest, "metadata": {**meta, "uid": uid,
                                       "resourceVersion": str(next(_rv)), "generation": 1}}
        self.objects[(manifest["kind"], meta["namespace"], meta["name"])] = obj
        return obj

    async def apply_status(self, namespace: str, name: str, uid: str,
                           status: Mapping[str, Any]) -> dict[str, Any]:
        await self._maybe_fail("apply_status", name)
        obj = self.objects.get(("PlatformConnection", namespace, name))
        if obj is None:
            raise not_found(name)
        obj = {**obj, "metadata": {**obj["metadata"], "resourceVersion": str(next(_rv))},
               "status": {**(obj.get("status") or {}), **status}}
        self.objects[("PlatformConnection", namespace, name)] = obj
        return obj

    async def scale(self, namespace: str, name: str, replicas: int) -> dict[str, Any]:
        await self._maybe_fail("scale", name)
        return self.objects[("Deployment", namespace, name)]

    async def delete_pods(self, namespace: str, selector: Mapping[str, str],
                          name: str | None = None, *, uid: str | None = None) -> list[str]:
        await self._maybe_fail("delete_pods", name or "")
        return [name] if name else []

    async def post_event(self, involved: Mapping[str, Any], type_: str, reason: str,
                         message: str) -> None:
        await self._maybe_fail("post_event", reason)
        self.events.append((type_, reason, message))

    async def close(self) -> None:
        pass
