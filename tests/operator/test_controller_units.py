"""The Controller on a fake Kube: what it does when the API and its cache disagree."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

from fakekube import FakeKube

from switchboard_operator.kube import ApiError
from switchboard_operator.reconcile import Controller

T0 = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)


def _conn(name: str = "c", uid: str = "u1") -> dict[str, Any]:
    return {"apiVersion": "switchboard.dev/v1alpha1", "kind": "PlatformConnection",
            "metadata": {"name": name, "namespace": "n", "uid": uid, "generation": 1,
                         "resourceVersion": "1"},
            "spec": {"platform": "telegram", "backend": {"echo": True}}}


def _controller(kube: FakeKube) -> Controller:
    controller = Controller(clock=lambda: T0)
    controller.kube = kube  # type: ignore[assignment]
    controller.caches_listed()
    return controller


async def _settle(controller: Controller) -> None:
    for _ in range(50):
        await asyncio.sleep(0)
        if controller.queue.idle():
            return


async def test_a_status_write_404_for_a_connection_the_api_no_longer_has_forgets_it() -> None:
    kube = FakeKube()
    controller = _controller(kube)
    controller.observe_connection("ADDED", _conn())  # cached, but never in the API
    controller.start_leading()
    await _settle(controller)
    assert ("apply_status", "c") in kube.calls
    assert ("request GET", "/apis/switchboard.dev/v1alpha1/namespaces/n/"
            "platformconnections/c") in kube.calls
    assert ("n", "c") not in controller.connections
    assert not controller.queue.pending(("n", "c"))  # not retried forever
    await controller.close()


async def test_a_status_write_409_for_a_recreated_connection_takes_the_new_one() -> None:
    kube = FakeKube()
    controller = _controller(kube)
    kube.objects[("PlatformConnection", "n", "c")] = _conn(uid="u2")  # recreated
    controller.observe_connection("ADDED", _conn(uid="u1"))
    kube.fail["apply_status"] = ApiError(409, "{}", "uid precondition")
    controller.start_leading()
    await _settle(controller)
    assert controller.connections[("n", "c")]["metadata"]["uid"] == "u2"
    await controller.close()
