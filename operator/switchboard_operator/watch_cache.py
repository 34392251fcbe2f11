"""List, then watch: how the operator's caches follow the API (what client-go's informers do).

Why not kopf's watches: after a watch ends with 410 Gone (its resourceVersion expired, e.g. an
API server restarted while the operator was cut off), kopf lists again but reports no deletion
for an object that vanished in the gap. The operator then kept a deleted connection cached: its
status write got 404 forever and its children were re-applied with an owner reference to a
dead uid, which the garbage collector deleted again, in a loop. Here every (re)list is compared
with what was known, and whatever vanished is reported as DELETED.

Each scope (one namespace, or the cluster) lists, then watches from the list's resourceVersion
with bookmarks; an expired resourceVersion (410) or a broken stream lists again.
"""

from __future__ import annotations

import asyncio
import fnmatch
import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any
from urllib.parse import quote

import aiohttp

from switchboard_contract.backoff import doubling
from switchboard_operator.kube import ApiError, Kube

log = logging.getLogger(__name__)

WATCH_SECONDS = 300
# Seconds between attempts after a failed list or watch: 1, 2, 4, ... up to 30.
RETRY_FIRST, RETRY_MAX = 1.0, 30.0

Observer = Callable[[str, Mapping[str, Any]], None]
Keep = Callable[[Mapping[str, Any]], bool]
ObjKey = tuple[str, str]


def scopes(namespaces: Sequence[str], collection: str) -> list[str]:
    """The list paths of ``collection`` (e.g. ``/api/v1/{ns}secrets``, where ``{ns}`` is
    ``namespaces/<name>/`` or empty): one per served namespace, or one for the cluster when
    all namespaces, or a glob, are served (a glob is matched by ``in_scope``)."""
    if not namespaces or any(is_glob(ns) for ns in namespaces):
        return [collection.format(ns="")]
    return [collection.format(ns=f"namespaces/{quote(ns)}/") for ns in namespaces]


def is_glob(namespace: str) -> bool:
    return any(c in namespace for c in "*?[]")


def in_scope(namespaces: Sequence[str], namespace: str) -> bool:
    """Whether ``namespace`` is served (``namespaces`` empty: all; globs as kopf reads them,
    with ``!pattern`` excluding)."""
    if not namespaces:
        return True
    include = [p for p in namespaces if not p.startswith("!")]
    exclude = [p[1:] for p in namespaces if p.startswith("!")]
    if any(fnmatch.fnmatchcase(namespace, p) for p in exclude):
        return False
    return not include or any(fnmatch.fnmatchcase(namespace, p) for p in include)


class ListWatch:
    """Feeds ``observe(event type, object)`` for the objects of ``paths`` that pass
    ``keep``; ``synced`` is set once every path was listed (the cache is complete)."""

    def __init__(self, kube: Kube, paths: Sequence[str], observe: Observer, *, what: str,
                 selector: str | None = None, keep: Keep | None = None) -> None:
        self.kube = kube
        self.paths = list(paths)
        self.observe = observe
        self.what = what
        self.query = {"labelSelector": selector} if selector else {}
        self.keep = keep or (lambda _obj: True)
        self.synced = asyncio.Event()
        self.relists = 0  # lists after the first one, per path (410 Gone, broken streams)
        self._listed: set[str] = set()

    async def run(self) -> None:
        await asyncio.gather(*(self._scope(path) for path in self.paths))

    async def _scope(self, path: str) -> None:
        known: dict[ObjKey, Mapping[str, Any]] = {}  # key -> metadata of the last object kept
        version: str | None = None
        failures = 0
        while True:
            try:
                if version is None:
                    version = await self._relist(path, known)
                async for event in self.kube.watch(path, {
                        **self.query, "resourceVersion": version,
                        "allowWatchBookmarks": "true", "timeoutSeconds": str(WATCH_SECONDS)}):
                    kind, obj = event.get("type"), event.get("object") or {}
                    if kind == "ERROR":
                        if obj.get("code") == 410:  # resourceVersion too old: list again
                            version = None
                        break
                    version = (obj.get("metadata") or {}).get("resourceVersion") or version
                    if kind != "BOOKMARK":
                        self._event(str(kind), obj, known)
                failures = 0
            except asyncio.CancelledError:
                raise
            except (ApiError, aiohttp.ClientError, TimeoutError, ValueError, KeyError) as exc:
                if isinstance(exc, ApiError) and exc.status == 410:
                    version = None
                delay = doubling(RETRY_FIRST, failures + 1, RETRY_MAX)
                failures += 1
                log.warning("watch of %s (%s) failed, again in %.0fs: %s", self.what, path,
                            delay, exc)
                await asyncio.sleep(delay)

    def _event(self, kind: str, obj: Mapping[str, Any],
               known: dict[ObjKey, Mapping[str, Any]]) -> None:
        meta = obj["metadata"]
        key = (meta.get("namespace") or "", meta["name"])
        if kind == "DELETED":
            if known.pop(key, None) is not None:
                self.observe(kind, obj)
        elif self.keep(obj):
            known[key] = meta
            self.observe(kind, obj)
        elif known.pop(key, None) is not None:
            self.observe("DELETED", obj)  # no longer ours (a label removed, another scope)

    async def _relist(self, path: str, known: dict[ObjKey, Mapping[str, Any]]) -> str:
        listing = await self.kube.request("GET", path, query=self.query)
        if path in self._listed:
            self.relists += 1
        seen: set[ObjKey] = set()
        for item in listing.get("items") or []:
            meta = item["metadata"]
            key = (meta.get("namespace") or "", meta["name"])
            if self.keep(item):
                seen.add(key)
                known[key] = meta
                self.observe("MODIFIED", item)
        for key in set(known) - seen:  # deleted while no watch was open: say so
            self.observe("DELETED", {"metadata": dict(known.pop(key))})
        self._listed.add(path)
        if self._listed >= set(self.paths):
            self.synced.set()
        return str((listing.get("metadata") or {}).get("resourceVersion") or "0")
