"""The operator's liveness and readiness are different checks: /healthz says the event loop
turns, /readyz that every watch has listed (decisions see the whole cluster)."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable

from opkit import Operator

from switchboard_testkit.controlplane import wait_for


def get(op: Operator, path: str) -> tuple[int, dict[str, object]]:
    url = f"http://127.0.0.1:{op.health_port}{path}"
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def test_readyz_waits_for_the_watches_and_healthz_does_not(
        start_operator: Callable[..., Operator]) -> None:
    # Its RBAC covers only the test namespace: the watches of the other one are forbidden and
    # never list. The process is alive (liveness passes) but must not count as ready.
    forbidden = f"t-{uuid.uuid4().hex[:8]}"
    blind = start_operator("blind", "--namespace", forbidden)
    wait_for(lambda: "403" in blind.tail(200) and "watch of" in blind.tail(200), 30,
             "a forbidden watch")
    assert get(blind, "/healthz")[0] == 200
    status, body = get(blind, "/readyz")
    assert status == 503 and body["ready"] is False, body

    seeing = start_operator("seeing")
    assert wait_for(lambda: get(seeing, "/readyz") == (200, {"ready": True}), 30,
                    "/readyz of an operator whose watches listed")
