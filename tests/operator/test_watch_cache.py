"""ListWatch on a fake API (request + watch): a re-list reports what vanished in the gap.

The same behaviour on the real control plane: test_caches.py (an API server restart)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
from typing import Any

from switchboard_operator.watch_cache import ListWatch, in_scope, scopes


def _obj(name: str, rv: str, ns: str = "n", **labels: str) -> dict[str, Any]:
    return {"metadata": {"name": name, "namespace": ns, "resourceVersion": rv,
                         "labels": labels}}


class FakeApi:
    """Lists are served from ``listings`` in turn; each watch plays the next script."""

    def __init__(self, listings: list[list[dict[str, Any]]],
                 watches: list[list[dict[str, Any]]]) -> None:
        self.listings, self.watches = listings, watches
        self.lists = 0
        self.done = asyncio.Event()

    async def request(self, method: str, path: str, **_: Any) -> dict[str, Any]:
        items = self.listings[min(self.lists, len(self.listings) - 1)]
        self.lists += 1
        return {"metadata": {"resourceVersion": str(10 * self.lists)}, "items": items}

    async def watch(self, path: str, query: Mapping[str, str]
                    ) -> AsyncIterator[dict[str, Any]]:
        if not self.watches:
            self.done.set()
            await asyncio.Event().wait()  # an idle watch, until cancelled
        for event in self.watches.pop(0):
            yield event


async def _run(api: FakeApi, **options: Any) -> list[tuple[str, str]]:
    seen: list[tuple[str, str]] = []
    lw = ListWatch(api, ["/x"], lambda kind, obj: seen.append((kind, obj["metadata"]["name"])),
                   what="things", **options)
    task = asyncio.create_task(lw.run())
    await asyncio.wait_for(api.done.wait(), 5)
    task.cancel()
    assert lw.synced.is_set()
    return seen


async def test_a_relist_after_410_reports_the_objects_that_vanished() -> None:
    api = FakeApi(listings=[[_obj("a", "1"), _obj("b", "2")], [_obj("a", "1")]],
                  watches=[[{"type": "MODIFIED", "object": _obj("a", "5")},
                            {"type": "ERROR", "object": {"code": 410}}]])
    seen = await _run(api)
    assert seen == [("MODIFIED", "a"), ("MODIFIED", "b"), ("MODIFIED", "a"),
                    ("MODIFIED", "a"), ("DELETED", "b")]
    assert api.lists == 2


async def test_an_object_that_stops_matching_is_deleted_and_a_foreign_one_ignored() -> None:
    api = FakeApi(listings=[[_obj("a", "1", mine="yes"), _obj("z", "1")]],
                  watches=[[{"type": "MODIFIED", "object": _obj("a", "3")},
                            {"type": "DELETED", "object": _obj("z", "4")}]])
    seen = await _run(api, keep=lambda o: o["metadata"]["labels"].get("mine") == "yes")
    assert seen == [("MODIFIED", "a"), ("DELETED", "a")]


def test_scopes_and_globs() -> None:
    assert scopes([], "/api/v1/{ns}secrets") == ["/api/v1/secrets"]
    assert scopes(["a", "b"], "/api/v1/{ns}secrets") == ["/api/v1/namespaces/a/secrets",
                                                          "/api/v1/namespaces/b/secrets"]
    assert scopes(["team-*"], "/api/v1/{ns}secrets") == ["/api/v1/secrets"]
    assert in_scope(["team-*", "!team-x"], "team-a")
    assert not in_scope(["team-*", "!team-x"], "team-x")
    assert not in_scope(["a"], "b") and in_scope([], "anything")
