"""Pure parts of the gateway: redaction, configuration, status coalescing, relay protocol."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any

import pytest

from switchboard_gateway import redact
from switchboard_gateway.adapter import AdapterError, BackendError, InboundMessage, State
from switchboard_gateway.backend import EchoBackend
from switchboard_gateway.config import ConfigError, GatewayConfig, Secret, TelegramReconnect
from switchboard_gateway.relay import EchoRelay, HttpRelay, message_body
from switchboard_gateway.status import StatusReporter, build_status

TOKEN = "123456789:AAHdqTcvCH1vGWJxfSeofSAs0K5PALDsaw"

# ------------------------------------------------------------------------------ redact


def test_redact_scrubs_tokens_in_urls_and_registered_secrets() -> None:
    redact.register_secret("s3cr3t-client-value")
    text = (f"POST http://127.0.0.1:1/bot{TOKEN}/getUpdates failed; "
            f"bare {TOKEN}; secret s3cr3t-client-value; "
            '{"access_token": "abc.def.ghi", "clientSecret": "xyz123456"} '
            "Authorization: QQBot abcdefgh12345678 token=qwerty12345")
    out = redact.redact(text)
    for leaked in (TOKEN, "AAHdqTcvCH1vGWJx", "s3cr3t-client-value", "abc.def.ghi",
                   "xyz123456", "abcdefgh12345678", "qwerty12345"):
        assert leaked not in out
    assert "/bot***/getUpdates" in out
    # Ordinary text survives, including the Conflict description mentioning a bot instance.
    conflict = "Conflict: terminated by other getUpdates request; make sure that only one bot"
    assert redact.redact(conflict + " instance is running") == conflict + " instance is running"
    assert redact.redact("http://127.0.0.1:8081/bot") == "http://127.0.0.1:8081/bot"
    line = "retrying (telegram_invalid_token: the bot token was rejected: Unauthorized)"
    assert redact.redact(line) == line  # error codes ending in _token are not keys


def test_logging_filter_redacts_messages_args_and_tracebacks() -> None:
    records: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(self.format(record))

    root = logging.getLogger()
    handler = Collect()
    root.addHandler(handler)
    try:
        redact.install()
        child = logging.getLogger("httpx.child")  # propagates: root handlers still scrub
        child.warning("HTTP Request: POST %s", f"https://api.telegram.org/bot{TOKEN}/getMe")
        try:
            raise RuntimeError(f"The token `{TOKEN}` was rejected by the server.")
        except RuntimeError:
            logging.getLogger("telegram").exception("failed")
    finally:
        root.removeHandler(handler)
    joined = "\n".join(records)
    assert TOKEN not in joined and "AAHdqTcvCH1vGWJx" not in joined
    assert "/bot***/getMe" in joined and "was rejected" in joined


def test_secret_never_shows_in_repr() -> None:
    secret = Secret("super-secret-value")
    assert "super" not in repr(secret) and "super" not in str(secret)
    assert "super" not in repr({"token": secret}) and secret.reveal() == "super-secret-value"


# ------------------------------------------------------------------------------ config

BASE = {"SWITCHBOARD_CONNECTION": "bot", "SWITCHBOARD_NAMESPACE": "ns",
        "SWITCHBOARD_PLATFORM": "telegram", "SWITCHBOARD_TELEGRAM_TOKEN": TOKEN,
        "SWITCHBOARD_BACKEND_ECHO": "true"}


def test_config_defaults_and_overrides() -> None:
    config = GatewayConfig.from_env(BASE)
    assert config.telegram_reconnect == TelegramReconnect(10, 5.0, 60.0, 5)
    ladder = config.telegram_reconnect
    assert [ladder.delay(n) for n in range(1, 8)] == [5, 10, 20, 40, 60, 60, 60]
    assert [ladder.conflict_delay(n) for n in range(1, 7)] == [20, 30, 40, 50, 60, 60]
    assert (config.health_port, config.metrics_port, config.bind_address) == (8080, 9090,
                                                                              "0.0.0.0")
    assert (config.probe_interval, config.probe_timeout) == (90.0, 15.0)
    assert TOKEN not in repr(config)

    config = GatewayConfig.from_env({
        **BASE, "SWITCHBOARD_RECONNECT": json.dumps(
            {"maxAttempts": 3, "initialDelaySeconds": 1, "maxDelaySeconds": 2}),
        "SWITCHBOARD_TELEGRAM_CONFLICT_RETRIES": "0", "SWITCHBOARD_BIND_ADDRESS": "127.1.0.5",
        "SWITCHBOARD_API_BASE_URL": "http://127.0.0.1:9/bot"})
    assert config.telegram_reconnect == TelegramReconnect(3, 1.0, 2.0, 0)
    assert config.bind_address == "127.1.0.5" and config.api_base_url == "http://127.0.0.1:9/bot"

    qq = GatewayConfig.from_env({
        "SWITCHBOARD_CONNECTION": "q", "SWITCHBOARD_NAMESPACE": "ns",
        "SWITCHBOARD_PLATFORM": "qqbot", "SWITCHBOARD_QQ_APP_ID": "1020",
        "SWITCHBOARD_QQ_CLIENT_SECRET": "client-secret-value",
        "SWITCHBOARD_BACKEND_URL": "http://backend/relay",
        "SWITCHBOARD_RECONNECT": '{"maxAttempts": 7, "delaySeconds": [1, 3]}'})
    assert qq.qq_reconnect.max_attempts == 7
    assert [qq.qq_reconnect.delay(n) for n in (1, 2, 3)] == [1, 3, 3]
    assert "client-secret-value" not in repr(qq)


@pytest.mark.parametrize(("change", "message"), [
    ({"SWITCHBOARD_CONNECTION": ""}, "SWITCHBOARD_CONNECTION is required"),
    ({"SWITCHBOARD_PLATFORM": "irc"}, "SWITCHBOARD_PLATFORM must be one of"),
    ({"SWITCHBOARD_BACKEND_URL": "http://x/relay"}, "exactly one of SWITCHBOARD_BACKEND_URL"),
    ({"SWITCHBOARD_BACKEND_ECHO": "maybe"}, "SWITCHBOARD_BACKEND_ECHO must be true or false"),
    ({"SWITCHBOARD_RECONNECT": "[1]"}, "SWITCHBOARD_RECONNECT must be a JSON object"),
    ({"SWITCHBOARD_RECONNECT": '{"maxAttempts": 0}'}, "maxAttempts must be an integer >= 1"),
    ({"SWITCHBOARD_RECONNECT": '{"initialDelaySeconds": 9, "maxDelaySeconds": 2}'},
     "maxDelaySeconds must be >= initialDelaySeconds"),
    ({"SWITCHBOARD_API_BASE_URL": "ftp://x"}, "SWITCHBOARD_API_BASE_URL must be an absolute"),
    ({"SWITCHBOARD_HEALTH_PORT": "99999"}, "SWITCHBOARD_HEALTH_PORT must be a port"),
    ({"SWITCHBOARD_PROBE_INTERVAL": "soon"}, "SWITCHBOARD_PROBE_INTERVAL must be a number"),
])
def test_config_errors_name_the_variable(change: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message) as info:
        GatewayConfig.from_env({**BASE, **change})
    assert TOKEN not in str(info.value)


# --------------------------------------------------------------------- status reporter


class FakeWriter:
    def __init__(self, latency: float = 0.0) -> None:
        self.writes: list[tuple[float, dict[str, Any]]] = []
        self.fail = 0  # fail this many writes
        self.latency = latency
        self.obj: dict[str, Any] = {"metadata": {"resourceVersion": "1"}, "status": {}}
        self.versions: list[str | None] = []

    async def apply(self, status: dict[str, Any], resource_version: str | None = None) -> None:
        await asyncio.sleep(self.latency)
        if self.fail:
            self.fail -= 1
            raise ConnectionError("API server away")
        self.writes.append((time.monotonic(), status))
        self.versions.append(resource_version)
        self.obj["status"] = status

    async def read(self) -> dict[str, Any]:
        return self.obj


ERROR = AdapterError("telegram_network_error", "Bad Gateway (502)", True)


def test_build_status_holds_only_gateway_fields_and_redacts() -> None:
    status = build_status(State.RETRYING, attempt=2, max_attempts=10, pod="gw-0",
                          state_since="2026-01-01T00:00:00Z",
                          error=AdapterError("x", f"url /bot{TOKEN}/getMe", True))
    assert set(status) == {"state", "attempt", "maxAttempts", "attempts", "lastError",
                           "stateSince", "gatewayPod"}
    assert status["attempts"] == "2/10" and TOKEN not in json.dumps(status)
    assert "lastError" not in build_status(State.CONNECTED, attempt=0, max_attempts=10,
                                           error=None, state_since="x", pod="")


async def test_flapping_is_coalesced_to_one_write_a_second_keeping_the_latest() -> None:
    writer = FakeWriter()
    reporter = StatusReporter(writer, platform="telegram", min_interval=0.5)
    await reporter.start()
    started = time.monotonic()
    for i in range(40):  # 40 state changes in ~2 s
        state = State.RETRYING if i % 2 else State.CONNECTED
        reporter.record(state, attempt=i % 2, max_attempts=10, error=ERROR if i % 2 else None)
        await asyncio.sleep(0.05)
    reporter.record(State.CONNECTED, max_attempts=10)
    assert await reporter.wait_written(reporter._seq, 2.0)
    elapsed = time.monotonic() - started
    assert len(writer.writes) <= elapsed / 0.5 + 2  # one per interval plus the burst of 2
    times = [at for at, _ in writer.writes]
    for i in range(len(times) - 3):  # 4 writes need 2 intervals at least (burst 2)
        assert times[i + 3] - times[i] >= 0.95
    assert writer.writes[-1][1]["state"] == "connected"  # the latest is never dropped
    await reporter.close(None)


async def test_report_waits_for_its_write_within_a_bound() -> None:
    writer = FakeWriter()
    reporter = StatusReporter(writer, platform="telegram", min_interval=0.3, report_timeout=2.0)
    await reporter.start()
    await reporter.report(State.CONNECTING)
    assert writer.writes[-1][1]["state"] == "connecting"
    await reporter.report(State.RETRYING, attempt=1, max_attempts=3, error=ERROR)
    assert writer.writes[-1][1]["attempts"] == "1/3"  # landed before report() returned
    since = writer.writes[-1][1]["stateSince"]
    await reporter.report(State.RETRYING, attempt=2, max_attempts=3, error=ERROR)
    assert writer.writes[-1][1]["stateSince"] == since  # same state: stateSince kept
    count = len(writer.writes)
    await reporter.report(State.RETRYING, attempt=2, max_attempts=3, error=ERROR)
    assert len(writer.writes) == count  # identical report: no write

    writer.fail = 1000  # API server away: report() gives up after the bound, writer retries
    started = time.monotonic()
    await reporter.report(State.CONNECTED, max_attempts=3)
    assert 1.9 <= time.monotonic() - started < 2.5
    assert reporter.writes_failed >= 1 and reporter.state is State.CONNECTED
    writer.fail = 0
    assert await reporter.wait_written(reporter._seq, 12.0)  # retried with back-off
    assert writer.writes[-1][1]["state"] == "connected"
    await reporter.close()
    assert writer.writes[-1][1]["state"] == "disconnected"
    assert writer.versions[-1] == "1"  # the final write is conditional on the resourceVersion


async def test_a_change_after_a_quiet_spell_is_written_at_once() -> None:
    writer = FakeWriter()
    reporter = StatusReporter(writer, platform="telegram", min_interval=1.0)
    await reporter.start()
    started = time.monotonic()
    await reporter.report(State.CONNECTING)
    await reporter.report(State.CONNECTED)
    await reporter.report(State.RETRYING, attempt=1, max_attempts=5, error=ERROR)
    # Two at once (the burst), the third one interval later: never faster than the budget.
    assert 0.9 <= time.monotonic() - started < 1.3
    await asyncio.sleep(2.0)  # quiet: the budget refills
    started = time.monotonic()
    await reporter.report(State.CONNECTED, max_attempts=5)
    await reporter.report(State.RETRYING, attempt=1, max_attempts=5, error=ERROR)
    assert time.monotonic() - started < 0.2
    assert [w[1]["state"] for w in writer.writes] == [
        "connecting", "connected", "retrying", "connected", "retrying"]
    await reporter.close(None)


async def test_close_keeps_fatal_and_does_not_clobber_another_pod() -> None:
    writer = FakeWriter()
    reporter = StatusReporter(writer, platform="telegram", pod_name="gw-0", min_interval=0.1)
    await reporter.start()
    await reporter.report(State.FATAL, error=ERROR)
    assert await reporter.close()
    assert writer.writes[-1][1]["state"] == "fatal"

    reporter = StatusReporter(writer, platform="telegram", pod_name="gw-0", min_interval=0.1)
    await reporter.start()
    await reporter.report(State.CONNECTED)
    writer.obj["status"] = {"state": "connecting", "gatewayPod": "gw-1"}  # the replacement
    assert not await reporter.close()
    assert writer.obj["status"]["gatewayPod"] == "gw-1"


async def test_field_changes_ride_the_budget_and_leave_a_token_for_a_state_change() -> None:
    writer = FakeWriter()
    reporter = StatusReporter(writer, platform="qqbot", min_interval=0.5)
    await reporter.start()
    reporter.set_field("qqSession", {"sessionId": "s", "seq": 0})  # before any state: held
    await reporter.report(State.CONNECTED, max_attempts=5)
    assert writer.writes[-1][1]["qqSession"] == {"sessionId": "s", "seq": 0}
    started = time.monotonic()
    for seq in range(1, 51):  # a busy link: 50 handled dispatches in ~1 s
        reporter.set_field("qqSession", {"sessionId": "s", "seq": seq})
        await asyncio.sleep(0.02)
    elapsed = time.monotonic() - started
    lazy = len(writer.writes) - 1
    assert 1 <= lazy <= elapsed / 0.5 + 1  # within the budget, never one per change
    # The bucket was never emptied by them: a state change still goes out at once.
    t0 = time.monotonic()
    await reporter.report(State.RETRYING, attempt=1, max_attempts=5, error=ERROR)
    assert time.monotonic() - t0 < 0.2
    last = writer.writes[-1][1]
    assert last["state"] == "retrying" and last["qqSession"]["seq"] == 50  # rides along
    times = [at for at, _ in writer.writes]
    for i in range(len(times) - 3):  # never faster than the budget (burst 2)
        assert times[i + 3] - times[i] >= 0.45
    reporter.set_field("qqSession", {"sessionId": "s", "seq": 51})
    assert await reporter.close()  # the final write carries the latest value
    assert writer.writes[-1][1]["state"] == "disconnected"
    assert writer.writes[-1][1]["qqSession"]["seq"] == 51
    with pytest.raises(ValueError):
        reporter.set_field("state", "connected")


async def test_restore_keeps_the_previous_process_fields_in_every_write() -> None:
    writer = FakeWriter()
    writer.obj["status"] = {"state": "connected", "gatewayPod": "gw-0",
                            "qqSession": {"sessionId": "s", "seq": 9}}
    reporter = StatusReporter(writer, platform="qqbot", pod_name="gw-1", min_interval=0.1)
    await reporter.start()
    assert await reporter.restore() == {"qqSession": {"sessionId": "s", "seq": 9}}
    await reporter.report(State.CONNECTING)
    assert writer.writes[-1][1]["qqSession"] == {"sessionId": "s", "seq": 9}
    reporter.set_field("qqSession", None)
    assert await reporter.wait_written(reporter._seq, 2.0)
    assert "qqSession" not in writer.writes[-1][1]  # removed (SSA drops what is left out)
    await reporter.close(None)

    class Away(FakeWriter):
        async def read(self) -> dict[str, Any]:
            raise ConnectionError("API server away")

    reporter = StatusReporter(Away(), platform="qqbot")
    t0 = time.monotonic()
    assert await reporter.restore(timeout=0.6) == {}
    assert time.monotonic() - t0 < 1.5


# ------------------------------------------------------------------------------ relay

MESSAGE = InboundMessage("ns/bot", "telegram", "42", "7", "Ann Example", "hi", "3",
                         "2026-01-01T12:00:00Z")


async def test_http_relay_posts_the_documented_body_and_returns_the_reply() -> None:
    async with EchoBackend() as backend:
        relay = HttpRelay(backend.url, timeout=2)
        try:
            assert await relay.deliver(MESSAGE) == "echo: hi"
            assert backend.received == [message_body(MESSAGE)]
            assert backend.received[0] == {
                "connection": "ns/bot", "platform": "telegram", "chat": {"id": "42"},
                "sender": {"id": "7", "name": "Ann Example"}, "text": "hi",
                "messageId": "3", "time": "2026-01-01T12:00:00Z"}
            backend.fail_status = 500
            with pytest.raises(BackendError, match="HTTP 500"):
                await relay.deliver(MESSAGE)
            backend.fail_status = None
            backend.hold = asyncio.Event()
            slow = HttpRelay(backend.url, timeout=0.3)
            with pytest.raises(BackendError, match="did not answer"):
                await slow.deliver(MESSAGE)
            await slow.close()
        finally:
            await relay.close()
    gone = HttpRelay(backend.url, timeout=1)
    with pytest.raises(BackendError, match="unreachable"):
        await gone.deliver(MESSAGE)
    await gone.close()
    assert await EchoRelay().deliver(MESSAGE) == "echo: hi"


# ------------------------------------------------------------------------------ health


async def test_health_liveness_readiness_and_metrics() -> None:
    import aiohttp

    from switchboard_gateway import metrics
    from switchboard_gateway.health import HealthServer

    ready = False
    server = HealthServer(host="127.0.0.1", health_port=0, metrics_port=0,
                          ready=lambda: ready, state=lambda: "retrying")
    await server.start()
    base = f"http://127.0.0.1:{server.health_port}"
    try:
        async with aiohttp.ClientSession() as http:
            async def get(url: str) -> tuple[int, str]:
                async with http.get(url) as response:
                    return response.status, await response.text()

            assert (await get(base + "/healthz"))[0] == 200
            assert await get(base + "/readyz") == (503, "not ready: retrying\n")
            ready = True
            assert (await get(base + "/readyz"))[0] == 200
            metrics.set_state("telegram", State.CONNECTED)
            status, text = await get(f"http://127.0.0.1:{server.metrics_port}/metrics")
            assert status == 200
            assert 'switchboard_gateway_state{platform="telegram",state="connected"} 1.0' in text
            server._last_beat -= 60  # as if the loop had not run the heartbeat for a minute
            assert (await get(base + "/healthz"))[0] == 503
    finally:
        await server.stop()


def test_status_bounds_and_cleans_an_error_message_however_it_was_made() -> None:
    """The second layer: an AdapterError built from raw platform text (not through
    describe()) still reaches status bounded, printable and redacted."""
    redact.register_secret("s3cret-token-value")
    try:
        raw = "upstream\r\n\x1b[2Jforged line s3cret-token-value\x00" + "B" * 9000
        status = build_status(State.RETRYING, attempt=1, max_attempts=3,
                              error=AdapterError("x", raw, True), state_since="now", pod="p")
    finally:
        redact.clear_secrets()
    message = status["lastError"]["message"]
    assert message.startswith("upstream") and message.isprintable()
    assert len(message) <= redact.MAX_PLATFORM_TEXT and "s3cret-token-value" not in message


def test_webhook_settings_name_what_is_missing_and_qq_needs_no_secret_token() -> None:
    base = {"SWITCHBOARD_CONNECTION": "c", "SWITCHBOARD_NAMESPACE": "ns",
            "SWITCHBOARD_BACKEND_ECHO": "true", "SWITCHBOARD_DELIVERY": "webhook"}
    telegram = {**base, "SWITCHBOARD_PLATFORM": "telegram",
                "SWITCHBOARD_TELEGRAM_TOKEN": "1:abc"}
    with pytest.raises(ConfigError) as missing:
        GatewayConfig.from_env(telegram)
    assert "SWITCHBOARD_WEBHOOK_URL is required" in str(missing.value)
    assert "SWITCHBOARD_WEBHOOK_SECRET_TOKEN is required" in str(missing.value)
    with pytest.raises(ConfigError, match="A-Z, a-z, 0-9"):
        GatewayConfig.from_env({**telegram, "SWITCHBOARD_WEBHOOK_URL": "https://h/x",
                                "SWITCHBOARD_WEBHOOK_SECRET_TOKEN": "has spaces in it"})
    ok = GatewayConfig.from_env({**telegram, "SWITCHBOARD_WEBHOOK_URL": "https://h/x",
                                 "SWITCHBOARD_WEBHOOK_SECRET_TOKEN": "tok_en-1"})
    assert ok.delivery == "webhook" and "tok_en-1" not in repr(ok)
    qq = GatewayConfig.from_env({**base, "SWITCHBOARD_PLATFORM": "qqbot",
                                 "SWITCHBOARD_QQ_APP_ID": "1", "SWITCHBOARD_QQ_CLIENT_SECRET": "s",
                                 "SWITCHBOARD_WEBHOOK_URL": "https://h/qq"})
    assert qq.webhook_secret_token is None and qq.webhook_url == "https://h/qq"
    with pytest.raises(ConfigError, match="SWITCHBOARD_DELIVERY must be one of"):
        GatewayConfig.from_env({**telegram, "SWITCHBOARD_DELIVERY": "push"})
