"""The status contract between the gateway and the operator, in one place.

The gateway writes the gateway-owned fields of a PlatformConnection's status (field manager
``switchboard-gateway``); the operator writes the rest (``switchboard-operator``) and reads
both. Field names, gateway states and error codes are defined here once and imported by both
sides, so they cannot drift apart (they did: the gateway wrote ``gateway_config_invalid`` while
the operator mapped ``config_invalid``). ``crds/`` enumerates the same states; a test compares.
"""

from __future__ import annotations

from enum import StrEnum

GATEWAY_MANAGER = "switchboard-gateway"
OPERATOR_MANAGER = "switchboard-operator"


class State(StrEnum):
    """status.state, written by the gateway."""

    CONNECTING = "connecting"
    CONNECTED = "connected"
    RETRYING = "retrying"
    FATAL = "fatal"
    DISCONNECTED = "disconnected"


class Field(StrEnum):
    """Names of status fields. The first group is the gateway's, the rest the operator's."""

    STATE = "state"
    ATTEMPT = "attempt"
    MAX_ATTEMPTS = "maxAttempts"
    ATTEMPTS = "attempts"
    LAST_ERROR = "lastError"
    STATE_SINCE = "stateSince"
    GATEWAY_POD = "gatewayPod"
    GATEWAY_POD_UID = "gatewayPodUID"
    QQ_SESSION = "qqSession"
    DEAD_LETTERS = "deadLetters"
    LAST_ACTIVITY = "lastActivity"
    # Webhook delivery: the platform's own view of the webhook (Telegram's getWebhookInfo).
    WEBHOOK = "webhook"

    CONDITIONS = "conditions"
    OBSERVED_GENERATION = "observedGeneration"
    RESTARTS = "restarts"
    CONSECUTIVE_FAILURES = "consecutiveFailures"
    NEXT_RESTART_TIME = "nextRestartTime"
    LAST_RESTART_TIME = "lastRestartTime"
    LAST_HANDLED_FAILURE = "lastHandledFailure"
    FAILED_POD_UID = "failedPodUID"
    FAILURE_OBSERVED_AT = "failureObservedAt"
    CONNECTED_OBSERVED = "connectedObserved"
    APPLIED_HASH = "appliedHash"
    CIRCUIT = "circuit"
    NEEDS_ATTENTION = "needsAttention"
    DEAD_LETTERS_REPORTED = "deadLettersReported"


GATEWAY_FIELDS: tuple[Field, ...] = (
    Field.STATE, Field.ATTEMPT, Field.MAX_ATTEMPTS, Field.ATTEMPTS, Field.LAST_ERROR,
    Field.STATE_SINCE, Field.GATEWAY_POD, Field.GATEWAY_POD_UID, Field.QQ_SESSION,
    Field.DEAD_LETTERS, Field.LAST_ACTIVITY, Field.WEBHOOK)
OPERATOR_FIELDS: tuple[Field, ...] = tuple(f for f in Field if f not in GATEWAY_FIELDS)


class Delivery(StrEnum):
    """spec.delivery.mode: how the platform hands the gateway its messages."""

    POLLING = "polling"  # the gateway asks (Telegram getUpdates, the QQ websocket)
    WEBHOOK = "webhook"  # the platform posts to a public URL routed to the gateway's Service


class WebhookField(StrEnum):
    """Keys of status.webhook (gateway-owned), from the platform's own view."""

    URL = "url"  # the URL the platform posts to now ("" while none is set)
    PENDING = "pendingUpdateCount"  # updates the platform holds, not yet delivered
    LAST_ERROR_TIME = "lastErrorTime"  # RFC 3339, the platform's last failed delivery
    LAST_ERROR_MESSAGE = "lastErrorMessage"  # what the platform said about it
    REFUSED = "refusedRequests"  # requests to the webhook refused as forged (this pod)


class WebhookRefusal(StrEnum):
    """Why the gateway refused a request to its webhook (a metric label; never the value)."""

    SECRET_TOKEN = "secret_token"  # Telegram: X-Telegram-Bot-Api-Secret-Token missing/wrong
    SIGNATURE = "signature"  # QQ: X-Signature-Ed25519 missing or wrong
    STALE = "stale_timestamp"  # QQ: X-Signature-Timestamp too old or in the future
    MALFORMED = "malformed"  # not a JSON update


class DeadLetterReason(StrEnum):
    """status.deadLetters.last.reason: why the gateway gave up answering a message."""

    REJECTED = "rejected"  # the platform refused the reply (chat gone, bot blocked, ...)
    EXHAUSTED = "attempts_exhausted"  # every attempt of the message's budget failed
    NOT_REPLAYED = "not_replayed"  # the platform's Resume skipped dispatches (a seq gap)


class ErrorCode(StrEnum):
    """status.lastError.code values the gateway writes (and its error metric's `code` label)."""

    # The gateway itself.
    CONFIG_INVALID = "gateway_config_invalid"  # its settings are unusable (non-retryable)
    INTERNAL_ERROR = "gateway_internal_error"  # an adapter crashed (retryable)
    GATEWAY_STALLED = "gateway_stalled"  # connected, but its loop stopped moving (retryable)
    BACKEND_ERROR = "backend_error"  # the bot backend failed on a message
    # The poller fence (one poller per token): its Lease cannot be read or renewed. While
    # waiting for it the gateway is `connecting`; it never reaches the platform without it.
    LEASE_UNAVAILABLE = "gateway_lease_unavailable"
    LEASE_LOST = "gateway_lease_lost"  # not renewed in time: polling paused until re-acquired

    # Telegram.
    TELEGRAM_NETWORK_ERROR = "telegram_network_error"
    TELEGRAM_INVALID_TOKEN = "telegram_invalid_token"
    TELEGRAM_POLLING_CONFLICT = "telegram_polling_conflict"
    TELEGRAM_RATE_LIMITED = "telegram_rate_limited"
    TELEGRAM_SEND_FAILED = "telegram_send_failed"
    # Webhook delivery: Telegram reports failed deliveries to our URL (it retries them).
    TELEGRAM_WEBHOOK_FAILING = "telegram_webhook_failing"
    # setWebhook refused the URL (not https, a port Telegram does not post to, ...).
    TELEGRAM_WEBHOOK_REFUSED = "telegram_webhook_refused"

    # QQ Bot.
    QQ_RECONNECT_EXHAUSTED = "qq_reconnect_exhausted"
    QQ_INVALID_CREDENTIALS = "qqbot_invalid_credentials"
    QQ_QUICK_DISCONNECTS = "qqbot_quick_disconnects"
    QQ_HEARTBEAT_TIMEOUT = "qqbot_heartbeat_timeout"
    QQ_HANDSHAKE_TIMEOUT = "qqbot_handshake_timeout"
    QQ_NETWORK_ERROR = "qqbot_network_error"
    QQ_TOKEN_ERROR = "qqbot_token_error"
    QQ_GATEWAY_ERROR = "qqbot_gateway_error"
    QQ_RECONNECT_REQUESTED = "qqbot_reconnect_requested"
    QQ_INVALID_SESSION = "qqbot_invalid_session"
    QQ_UNEXPECTED_ERROR = "qqbot_unexpected_error"
    QQ_CONNECTION_LOST = "qqbot_connection_lost"
    QQ_CONNECTION_CLOSED = "qqbot_connection_closed"
    QQ_INVALID_OPCODE = "qqbot_invalid_opcode"
    QQ_INVALID_PAYLOAD = "qqbot_invalid_payload"
    QQ_INVALID_SHARD = "qqbot_invalid_shard"
    QQ_SHARDING_REQUIRED = "qqbot_sharding_required"
    QQ_INVALID_VERSION = "qqbot_invalid_version"
    QQ_INTENTS_REJECTED = "qqbot_intents_rejected"
    QQ_DELISTED = "qqbot_delisted"
    QQ_BANNED = "qqbot_banned"
    QQ_TOKEN_INVALID = "qqbot_token_invalid"
    QQ_SESSION_INVALID = "qqbot_session_invalid"
    QQ_INVALID_SEQ = "qqbot_invalid_seq"
    QQ_RATE_LIMITED = "qqbot_rate_limited"
    QQ_SESSION_TIMEOUT = "qqbot_session_timeout"
    QQ_SERVER_ERROR = "qqbot_server_error"
    QQ_REPLY_REJECTED = "qqbot_reply_rejected"
    QQ_REPLY_ERROR = "qqbot_reply_error"
