"""The credentials Secrets reach the operator through a watch with a server-side label selector.

Why not a kopf index or event handler: kopf's ``labels=`` filter runs in the client, after every
Secret of the cluster, data included, was received and parsed (300 unrelated 64 KiB Secrets
raised the operator's peak memory from 66 to 142 MiB). Here the API server filters: only Secrets
labelled ``switchboard.dev/credentials: "true"`` are listed and watched, the way cert-manager
caches only the Secrets it labels. Of those the cache keeps per-key digests, never values.

Each served scope (one namespace, or the cluster) lists, then watches from the list's
resourceVersion with bookmarks; an expired resourceVersion (410) or a broken stream lists
again, and a re-list reports as deleted whatever vanished in the gap, so no stale digest stays.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any
from urllib.parse import quote

import aiohttp

from switchboard_operator.kube import ApiError, Kube
from switchboard_operator.secrets import CREDENTIALS_LABEL, CREDENTIALS_VALUE

log = logging.getLogger(__name__)

SELECTOR = f"{CREDENTIALS_LABEL}={CREDENTIALS_VALUE}"
WATCH_SECONDS = 300
RETRY_DELAYS = (1, 2, 5, 10, 30)

Observer = Callable[[str, Mapping[str, Any]], None]


def scopes(namespaces: Sequence[str]) -> list[str]:
    """The list paths to watch: one per served namespace, or the whole cluster when all
    namespaces (or a glob, which only kopf resolves) are served."""
    if not namespaces or any(c in ns for ns in namespaces for c in "*?[]!"):
        return ["/api/v1/secrets"]
    return [f"/api/v1/namespaces/{quote(ns)}/secrets" for ns in namespaces]


class SecretWatch:
    """Feeds ``observe(event type, Secret)``; ``synced`` is set once every scope was listed."""

    def __init__(self, kube: Kube, namespaces: Sequence[str], observe: Observer) -> None:
        self.kube = kube
        self.paths = scopes(namespaces)
        self.observe = observe
        self.synced = asyncio.Event()
        self._listed: set[str] = set()

    async def run(self) -> None:
        await asyncio.gather(*(self._scope(path) for path in self.paths))

    async def _scope(self, path: str) -> None:
        known: dict[tuple[str, str], Mapping[str, Any]] = {}  # key -> last object seen
        version: str | None = None
        failures = 0
        while True:
            try:
                if version is None:
                    version = await self._relist(path, known)
                async for event in self.kube.watch(path, {
                        "labelSelector": SELECTOR, "resourceVersion": version,
                        "allowWatchBookmarks": "true", "timeoutSeconds": str(WATCH_SECONDS)}):
                    kind, obj = event.get("type"), event.get("object") or {}
                    if kind == "ERROR":
                        if obj.get("code") == 410:  # resourceVersion too old: list again
                            version = None
                        break
                    version = (obj.get("metadata") or {}).get("resourceVersion") or version
                    if kind == "BOOKMARK":
                        continue
                    key = (obj["metadata"]["namespace"], obj["metadata"]["name"])
                    if kind == "DELETED":
                        known.pop(key, None)
                    else:
                        known[key] = obj["metadata"]
                    self.observe(str(kind), obj)
                failures = 0
            except asyncio.CancelledError:
                raise
            except (ApiError, aiohttp.ClientError, TimeoutError, ValueError, KeyError) as exc:
                if isinstance(exc, ApiError) and exc.status == 410:
                    version = None
                delay = RETRY_DELAYS[min(failures, len(RETRY_DELAYS) - 1)]
                failures += 1
                log.warning("watch of credentials Secrets (%s) failed, again in %ss: %s",
                            path, delay, exc)
                await asyncio.sleep(delay)

    async def _relist(self, path: str, known: dict[tuple[str, str], Mapping[str, Any]]) -> str:
        listing = await self.kube.request("GET", path, query={"labelSelector": SELECTOR})
        seen: set[tuple[str, str]] = set()
        for item in listing.get("items") or []:
            key = (item["metadata"]["namespace"], item["metadata"]["name"])
            seen.add(key)
            known[key] = item["metadata"]
            self.observe("MODIFIED", item)
        for key in set(known) - seen:  # deleted (or unlabelled) while no watch was open
            self.observe("DELETED", {"metadata": dict(known.pop(key))})
        self._listed.add(path)
        if self._listed >= set(self.paths):
            self.synced.set()
        return str((listing.get("metadata") or {}).get("resourceVersion") or "0")
