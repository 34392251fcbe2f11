"""Prometheus metrics of the gateway (served on :9090/metrics by health.py).

Shared by every adapter: import the objects below by name. Labels carry only the platform, the
state, an error code or a result: never a token, chat id, user id or URL.

Who updates what:
- STATE and STATUS_WRITES: the StatusReporter (status.py), on every report / API write;
- RECONNECT_ATTEMPTS, ERRORS, MESSAGES_IN, MESSAGES_OUT, DUPLICATES, DEAD_LETTERS,
  WEBHOOK_REFUSED, WEBHOOK_DELIVERIES: the adapters;
- BACKEND_LATENCY: the relay (relay.py), per backend request.

No `namespace` or `connection` label: a gateway pod serves one connection in the connection's
own namespace, so the scrape's target labels say both (the chart's optional PodMonitor keeps
the pod's switchboard.dev/connection label as `connection`).
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

from switchboard_contract import DeadLetterReason, ErrorCode, WebhookRefusal
from switchboard_gateway.adapter import State

STATE = Gauge(
    "switchboard_gateway_state",
    "1 for the connection's current state, 0 for the others (one-hot by state).",
    ["platform", "state"],
)
RECONNECT_ATTEMPTS = Counter(
    "switchboard_gateway_reconnect_attempts_total",
    "Reconnect attempts (each failed attempt that leads to a back-off sleep).",
    ["platform"],
)
ERRORS = Counter(
    "switchboard_gateway_errors_total",
    "Errors by machine-readable code (e.g. telegram_network_error, backend_error).",
    ["platform", "code"],
)
MESSAGES_IN = Counter(
    "switchboard_gateway_messages_received_total",
    "Inbound platform messages accepted by the backend (each counted once).",
    ["platform"],
)
MESSAGES_OUT = Counter(
    "switchboard_gateway_messages_sent_total",
    "Replies sent to the platform.",
    ["platform"],
)
DUPLICATES = Counter(
    "switchboard_gateway_duplicate_messages_total",
    "Inbound messages seen again in the same process and not handed to the backend twice.",
    ["platform"],
)
DEAD_LETTERS = Counter(
    "switchboard_gateway_dead_letters_total",
    "Inbound messages given up on (their reply refused by the platform, or their attempt "
    "budget used up): the offset moved on without an answer.",
    ["platform", "reason"],
)
WEBHOOK_REFUSED = Counter(
    "switchboard_gateway_webhook_refused_total",
    "Requests to the webhook refused as not the platform's, by reason (secret_token, "
    "signature, stale_timestamp, malformed).",
    ["platform", "reason"],
)
WEBHOOK_DELIVERIES = Counter(
    "switchboard_gateway_webhook_deliveries_total",
    "Deliveries of the platform to the webhook, by result: ok (answered 2xx), retry "
    "(answered 503, the platform delivers again: the backend failed or a reply must wait), "
    "duplicate (delivered before, answered 2xx again).",
    ["platform", "result"],
)
BACKEND_LATENCY = Histogram(
    "switchboard_gateway_backend_latency_seconds",
    "Time from handing a message to the backend until its answer (successful or not).",
    ["platform"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
)
STATUS_WRITES = Counter(
    "switchboard_gateway_status_writes_total",
    "Writes of the gateway-owned status fields to the API server, by result (ok, error).",
    ["result"],
)


def set_state(platform: str, state: State) -> None:
    for candidate in State:
        STATE.labels(platform=platform, state=candidate.value).set(
            1 if candidate is state else 0)


def error_codes(platform: str) -> list[str]:
    """The error codes a gateway of ``platform`` can count: its own and the shared ones."""
    own = {"telegram": ("telegram_",), "qqbot": ("qq_", "qqbot_")}
    every = tuple(p for prefixes in own.values() for p in prefixes)
    return [c.value for c in ErrorCode
            if c.value.startswith(own.get(platform, ())) or not c.value.startswith(every)]


def initialise(platform: str) -> None:
    """Export every labelled series at 0 before its first increment, so that rate() and
    increase() see the first event (Prometheus' instrumentation practice)."""
    for counter in (RECONNECT_ATTEMPTS, MESSAGES_IN, MESSAGES_OUT, DUPLICATES):
        counter.labels(platform)
    BACKEND_LATENCY.labels(platform)
    for code in error_codes(platform):
        ERRORS.labels(platform, code)
    for reason in DeadLetterReason:
        DEAD_LETTERS.labels(platform, reason.value)
    for refusal in WebhookRefusal:
        WEBHOOK_REFUSED.labels(platform, refusal.value)
    for result in ("ok", "retry", "duplicate"):
        WEBHOOK_DELIVERIES.labels(platform, result)
    for result in ("ok", "error"):
        STATUS_WRITES.labels(result)
