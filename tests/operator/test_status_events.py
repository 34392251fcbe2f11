"""status.failure_events: a Warning Event once, when Ready turns to a failure a person fixes."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from switchboard_operator import status as st
from switchboard_operator.decide import decide

T0 = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)


def _body(status: dict[str, Any]) -> dict[str, Any]:
    return {"metadata": {"name": "c", "namespace": "n", "generation": 1, "annotations": {}},
            "spec": {"platform": "telegram"}, "status": status}


def _desired(body: dict[str, Any], missing: str | None = None) -> st.Desired:
    plan = decide(body, blocked=missing, rolled=False, now=T0)
    return st.desired(body, plan, secret_missing=missing, rollout_in_progress=False,
                      applied_hash="h", now=T0)


BAD_TOKEN = {"state": "fatal", "gatewayPod": "p1", "stateSince": "2026-01-01T11:59:00Z",
             "lastError": {"code": "telegram_invalid_token", "retryable": False,
                           "message": "Unauthorized"}}


def test_a_non_retryable_fatal_posts_one_warning() -> None:
    body = _body(BAD_TOKEN)
    want = _desired(body)
    (event,) = st.failure_events(body, want)
    assert (event.type, event.reason) == ("Warning", "CredentialsInvalid")
    assert "telegram_invalid_token" in event.message and "fix the cause" in event.message
    # Once written, the same reason posts nothing again (a re-reconcile, a restarted operator).
    stored = _body({**BAD_TOKEN, **want.status})
    assert st.failure_events(stored, _desired(stored)) == []


def test_a_missing_secret_is_a_warning_and_retrying_is_not() -> None:
    body = _body({})
    (event,) = st.failure_events(body, _desired(body, missing="Secret tg not found"))
    assert event.reason == "SecretMissing" and "Secret tg not found" in event.message
    retrying = _body({"state": "retrying", "attempt": 2, "maxAttempts": 10,
                      "attempts": "2/10", "gatewayPod": "p1",
                      "lastError": {"code": "telegram_network_error", "retryable": True,
                                    "message": "502"}})
    assert st.failure_events(retrying, _desired(retrying)) == []


CONNECTED = {"state": "connected", "gatewayPod": "p1", "stateSince": "2026-01-01T11:59:00Z"}


def _letters(count: int, chat: str = "55", message: str = "7") -> dict[str, Any]:
    return {"deadLetters": {"count": count, "last": {
        "chatId": chat, "messageId": message, "reason": "rejected",
        "message": "Forbidden: bot was blocked by the user", "time": "2026-01-01T12:00:00Z"}}}


def test_dead_letters_post_one_warning_for_those_since_the_last_and_name_no_text() -> None:
    body = _body({**CONNECTED, **_letters(1)})
    want = _desired(body)
    assert want.status["deadLettersReported"] == 1
    assert want.ready.status == "True"  # the connection is fine; one message was not
    (event,) = st.failure_events(body, want)
    assert (event.type, event.reason) == ("Warning", "MessageDeadLettered")
    assert "chat 55, message 7" in event.message and "1 message could" in event.message
    stored = _body({**CONNECTED, **_letters(1), **want.status})
    assert st.failure_events(stored, _desired(stored)) == []  # reported once
    three = _body({**CONNECTED, **_letters(3, message="9"), **want.status})
    (event,) = st.failure_events(three, _desired(three))
    assert "2 messages could" in event.message and "message 9" in event.message
