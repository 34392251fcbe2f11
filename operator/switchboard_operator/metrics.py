"""Prometheus metrics of the operator, served on /metrics (prometheus-client)."""

from __future__ import annotations

from collections import Counter as _Counter
from collections.abc import Mapping

from prometheus_client import Counter, Gauge, Histogram, start_http_server

from switchboard_operator.conditions import needs_person

RECONCILES = Counter("switchboard_reconciles", "Reconciles of PlatformConnections.")
RECONCILE_ERRORS = Counter("switchboard_reconcile_errors", "Reconciles that failed.")
RESTARTS = Counter("switchboard_restarts", "Gateway restarts by the operator, by error code.",
                   ["reason"])
# The back-off chosen for a restart (the schedule) and how late the deletion came versus the
# due time (the scheduler's precision; should stay well below one second).
RESTART_BACKOFF = Histogram("switchboard_restart_backoff_seconds",
                            "Back-off delay scheduled before a restart.",
                            buckets=(1, 2, 5, 10, 30, 60, 120, 240, 300, 600, 1800, 3600))
RESTART_DELAY = Histogram("switchboard_restart_delay_seconds",
                          "Delay between a restart's due time and the pod deletion.",
                          buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10))
CIRCUIT_STATE = Gauge("switchboard_circuit_state",
                      "Circuit breaker state per connection: 0 closed, 1 half-open, 2 open.",
                      ["namespace", "connection"])
CONNECTIONS = Gauge("switchboard_connections",
                    "PlatformConnections by gateway state (none: no report yet).", ["state"])
# One-hot per connection, so alerts can say which connection has been retrying for how long.
CONNECTION_STATE = Gauge("switchboard_connection_state",
                         "1 for the gateway's current state of each connection, else 0.",
                         ["namespace", "connection", "state"])
# What the alerts read: Ready itself (a 60-minute outage walks retrying, fatal, a scheduled
# restart and an open circuit; Ready stays 0 through all of them, so `for:` keeps counting) and
# whether a person must act. One series per connection; the label carries Ready's reason.
CONNECTION_READY = Gauge("switchboard_connection_ready",
                         "1 while the connection's Ready condition is True, else 0; reason is "
                         "Ready's reason.", ["namespace", "connection", "reason"])
CONNECTION_NEEDS_PERSON = Gauge("switchboard_connection_needs_person",
                                "1 while no retry can fix the connection (credentials, a missing "
                                "Secret, the policy, a refused spec), else 0; reason is Ready's.",
                                ["namespace", "connection", "reason"])
# status.restarts as a gauge: the count the operator keeps in the API, so it survives an
# operator restart (a counter would start again at 0) and goes with the connection.
CONNECTION_RESTARTS = Gauge("switchboard_connection_restarts",
                            "Gateway restarts of the connection by the operator (status.restarts).",
                            ["namespace", "connection"])
SECRETS_CACHED = Gauge("switchboard_secrets_cached",
                       "Credentials Secrets whose key digests the operator holds (labelled ones "
                       "only; never values).")
LEADER = Gauge("switchboard_leader", "1 while this replica is the acting leader.")
API_REQUESTS = Counter("switchboard_operator_api_requests",
                       "Kubernetes API requests made by this process (kopf's included).",
                       ["component", "verb", "code"])

CIRCUIT_VALUES = {"closed": 0, "half-open": 1, "open": 2}
STATES = ("none", "connecting", "connected", "retrying", "fatal", "disconnected")
for _state in STATES:
    CONNECTIONS.labels(_state)  # exported (as 0) before the first connection is seen


def set_connection_states(states: Mapping[tuple[str, str], str | None]) -> None:
    counts = _Counter(s or "none" for s in states.values())
    for state in STATES:
        CONNECTIONS.labels(state).set(counts.get(state, 0))
    for (namespace, name), current in states.items():
        for state in STATES:
            CONNECTION_STATE.labels(namespace, name, state).set(
                1 if (current or "none") == state else 0)


def connection_state_changed(key: tuple[str, str], old: str | None, new: str | None, *,
                             known: bool) -> None:
    """One connection's state changed (``known``: it had one before, ``old``). O(1), unlike
    set_connection_states, which a burst of reports over many connections made quadratic."""
    if known:
        CONNECTIONS.labels(old or "none").dec()
    CONNECTIONS.labels(new or "none").inc()
    for state in STATES:
        CONNECTION_STATE.labels(*key, state).set(1 if (new or "none") == state else 0)


def connection_ready_changed(key: tuple[str, str], old_reason: str | None,
                             status: str, reason: str) -> None:
    """Ready of one connection is now ``status`` with ``reason`` (the old reason's series go)."""
    if old_reason is not None and old_reason != reason:
        forget_ready(key, old_reason)
    CONNECTION_READY.labels(*key, reason).set(1 if status == "True" else 0)
    CONNECTION_NEEDS_PERSON.labels(*key, reason).set(1 if needs_person(status, reason) else 0)


def forget_ready(key: tuple[str, str], reason: str) -> None:
    """Drop one connection's Ready series (labelled with its last ``reason``)."""
    for gauge in (CONNECTION_READY, CONNECTION_NEEDS_PERSON):
        try:
            gauge.remove(*key, reason)
        except KeyError:
            pass


def connection_removed(key: tuple[str, str], old: str | None) -> None:
    CONNECTIONS.labels(old or "none").dec()
    forget_connection(*key)


def forget_connection(namespace: str, name: str) -> None:
    for gauge, labels in [(CIRCUIT_STATE, (namespace, name)),
                          (CONNECTION_RESTARTS, (namespace, name)),
                          *((CONNECTION_STATE, (namespace, name, st)) for st in STATES)]:
        try:
            gauge.remove(*labels)
        except KeyError:
            pass


def serve(port: int, address: str = "0.0.0.0") -> None:
    """Start the /metrics HTTP server in a background thread (0 disables it)."""
    if port:
        start_http_server(port, addr=address)
