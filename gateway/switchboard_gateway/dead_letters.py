"""Messages the gateway gave up on, counted where people and the operator look.

status.deadLetters (gateway-owned, carried across restarts): how many, and the last one by
chat and message id (never its text); the metric switchboard_gateway_dead_letters_total; the
operator turns a new count into one Warning Event (MessageDeadLettered).
"""

from __future__ import annotations

import datetime as dt
import logging

from switchboard_contract import Field as F
from switchboard_gateway import metrics
from switchboard_gateway.adapter import FieldStore

log = logging.getLogger(__name__)


def record(store: FieldStore | None, platform: str, reason: str, *, chat_id: str,
           message_id: str, detail: str, count: int = 1) -> None:
    metrics.DEAD_LETTERS.labels(platform, reason).inc(count)
    log.warning("dead letter (%d): chat %s, message %s: %s: %s", count, chat_id or "-",
                message_id or "-", reason, detail)
    if store is None:
        return
    previous = store.field(F.DEAD_LETTERS) or {}
    store.set_field(F.DEAD_LETTERS, {
        "count": int(previous.get("count") or 0) + count,
        "last": {"chatId": chat_id, "messageId": message_id, "reason": str(reason),
                 "message": detail[:300],
                 "time": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")}})
