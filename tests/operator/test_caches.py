"""The operator's caches converge with the API after faults the watches do not report."""

from __future__ import annotations

from kubernetes import client
from opkit import Kit, Operator, secret, telegram_conn

from switchboard_testkit.controlplane import wait_for


def test_a_connection_deleted_while_the_watches_were_cut_is_forgotten(
        kit: Kit, operator: Operator) -> None:
    """The operator is frozen, the API server restarts (every watch ends, and resuming from
    the old resourceVersion gets 410 Gone), the connection is deleted, the operator thaws: its
    re-list must report the deletion. Before, the connection stayed cached forever and its
    children were re-applied with an owner reference to a dead uid, in a loop with the
    garbage collector."""
    kit.core.create_namespaced_secret(kit.ns, secret("tg"))
    kit.create(telegram_conn("vanish"))
    kit.create(telegram_conn("stays"))
    wait_for(lambda: kit.deployment("vanish") and kit.deployment("stays"), 30, "Deployments")
    wait_for(lambda: operator.health()["connections"] == 2, 10, "both cached")

    operator.pause()
    try:
        kit.cluster.plane.restart_apiserver()
        kit.core.create_namespaced_config_map(kit.ns, client.V1ConfigMap(
            metadata=client.V1ObjectMeta(name="newer-revision")))
        kit.custom.delete_namespaced_custom_object("switchboard.dev", "v1alpha1", kit.ns,
                                                   "platformconnections", "vanish")
    finally:
        operator.resume()

    wait_for(lambda: operator.health()["connections"] == 1, 30, "the deletion seen")
    # The other connection is still served after the re-list (its status is written).
    kit.patch("stays", {"spec": {"suspend": True}})
    kit.wait_ready("stays", "True", "Suspended", timeout=30)
