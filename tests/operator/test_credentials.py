"""A bot token that cannot be right is CredentialsInvalid at once, naming the Secret and key:
the operator, a real gateway pod on the local node, a fake Bot API that is never reached."""

from __future__ import annotations

import pytest
from opkit import Kit, Operator, secret, telegram_conn


@pytest.mark.parametrize(("token", "problem"), [
    ("123456789:AAFakeTokenForSwitchboard\nTests0123", "line break"),
    ("", "is empty"),
])
def test_a_malformed_token_is_credentials_invalid_not_a_network_error(
        kit: Kit, operator: Operator, token: str, problem: str) -> None:
    """Before: the line break made httpx refuse the URL, a retryable network error: the
    gateway walked its ladder, was restarted and opened the circuit; an empty token's message
    named SWITCHBOARD_TELEGRAM_TOKEN, a variable the user never set."""
    kit.core.create_namespaced_secret(kit.ns, secret("tg", token=token))
    kit.create(telegram_conn("bad-token", apiBaseURL="http://127.0.0.1:9/bot", gateway={}))
    ready = kit.wait_ready("bad-token", "False", "CredentialsInvalid", timeout=90)
    assert "Secret tg, key token" in ready["message"] and problem in ready["message"]
    status = kit.status("bad-token")
    assert status["lastError"]["retryable"] is False
    assert status.get("restarts", 0) == 0
    assert "Tests0123" not in str(status)
