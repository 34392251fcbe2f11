"""The per-connection state gauge the alerts are built on."""

from __future__ import annotations

from prometheus_client import REGISTRY

from switchboard_operator import metrics


def _value(ns: str, name: str, state: str) -> float | None:
    return REGISTRY.get_sample_value("switchboard_connection_state",
                                     {"namespace": ns, "connection": name, "state": state})


def test_connection_state_is_one_hot_per_connection_and_forgotten_on_delete() -> None:
    metrics.set_connection_states({("ns", "a"): "retrying", ("ns", "b"): None})
    assert _value("ns", "a", "retrying") == 1 and _value("ns", "a", "connected") == 0
    assert _value("ns", "b", "none") == 1
    assert REGISTRY.get_sample_value("switchboard_connections", {"state": "retrying"}) == 1

    metrics.set_connection_states({("ns", "a"): "connected"})
    assert _value("ns", "a", "retrying") == 0 and _value("ns", "a", "connected") == 1
    metrics.forget_connection("ns", "a")
    assert _value("ns", "a", "connected") is None


def test_incremental_state_updates_keep_counts_and_one_hot() -> None:
    def count(state: str) -> float | None:
        return REGISTRY.get_sample_value("switchboard_connections", {"state": state})

    base = {s: count(s) or 0 for s in metrics.STATES}
    metrics.connection_state_changed(("inc", "a"), None, None, known=False)
    metrics.connection_state_changed(("inc", "b"), None, "retrying", known=False)
    assert count("none") == base["none"] + 1 and count("retrying") == base["retrying"] + 1
    metrics.connection_state_changed(("inc", "a"), None, "connected", known=True)
    assert count("none") == base["none"] and count("connected") == base["connected"] + 1
    assert _value("inc", "a", "connected") == 1 and _value("inc", "a", "none") == 0
    metrics.connection_removed(("inc", "a"), "connected")
    metrics.connection_removed(("inc", "b"), "retrying")
    assert {s: count(s) for s in metrics.STATES} == base
    assert _value("inc", "a", "connected") is None
