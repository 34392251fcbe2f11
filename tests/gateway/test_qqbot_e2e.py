"""The QQ Bot adapter end to end: FakeQQ on 127.0.0.1, shrunken delays, and the gateway's real
StatusReporter writing into a real PlatformConnection on the real control plane.

The sink wraps the StatusReporter and records, for every report, when it was made, when it
returned (landed) and, for `retrying`, the status the API server held right after: the adapter
awaits the report before its back-off sleep, so that read proves "landed before the sleep".
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from kubernetes import config as kube_config

from switchboard_gateway import metrics
from switchboard_gateway.adapter import (
    AdapterError,
    BackendError,
    FatalAdapterError,
    InboundMessage,
    State,
)
from switchboard_gateway.config import Secret
from switchboard_gateway.qqbot import QQBotAdapter, QQBotSettings
from switchboard_gateway.relay import EchoRelay
from switchboard_gateway.status import KubeStatusWriter, StatusReporter
from switchboard_testkit.fake_qq import DEFAULT_APP_ID, DEFAULT_CLIENT_SECRET, FakeQQ
from switchboard_testkit.gateway_harness import GatewayProcess, PConn

pytestmark = pytest.mark.cluster

WAIT = 10.0  # upper bound of every wait
HB_MS = 300  # Hello's heartbeat_interval for most tests
STEPS = (0.2, 0.4)
USER = "A1B2C3D4E5F60718293A4B5C6D7E8F90"
GROUP = "0DEADBEEF0DEADBEEF0DEADBEEF0ABCD"


# ------------------------------------------------------------------------------- fixtures


@pytest.fixture
def qq_pconn(make_pconn: Callable[..., PConn]) -> PConn:
    """A qqbot PlatformConnection (no operator runs) and its gateway's least-privilege
    kubeconfig, which the StatusReporter writes with, as in a pod."""
    return make_pconn("qqbot")


@dataclass
class Report:
    state: State
    attempt: int
    max_attempts: int
    error: AdapterError | None
    called_at: float
    landed_at: float
    answered: int  # READY + RESUMED the fake had sent when the report was made
    stored: dict[str, Any] | None  # the CR status right after a `retrying` report returned


@dataclass
class RecordingSink:
    reporter: StatusReporter
    writer: KubeStatusWriter
    fake: FakeQQ
    reports: list[Report] = field(default_factory=list)
    _change: asyncio.Event = field(default_factory=asyncio.Event)

    async def report(self, state: State, *, attempt: int = 0, max_attempts: int = 0,
                     error: AdapterError | None = None) -> None:
        loop = asyncio.get_running_loop()
        called = loop.time()
        answered = self.fake.identify_count + self.fake.resume_count
        await self.reporter.report(state, attempt=attempt, max_attempts=max_attempts,
                                   error=error)
        landed = loop.time()
        stored = None
        if state is State.RETRYING:
            stored = (await self.writer.read()).get("status")
        self.reports.append(Report(state, attempt, max_attempts, error, called, landed,
                                   answered, stored))
        self._change.set()
        self._change = asyncio.Event()

    async def wait_for(self, predicate: Callable[[Report], bool], after: int = 0,
                       timeout: float = WAIT) -> Report:  # noqa: ASYNC109
        """The first report from index ``after`` on matching ``predicate``."""
        async with asyncio.timeout(timeout):
            while True:
                change = self._change
                for report in self.reports[after:]:
                    if predicate(report):
                        return report
                await change.wait()

    async def connected(self, n: int = 1) -> Report:
        """The n-th `connected` report."""
        found: list[Report] = []

        def nth(report: Report) -> bool:
            if report.state is State.CONNECTED and report not in found:
                found.append(report)
            return len(found) >= n

        return await self.wait_for(nth)

    def states(self) -> list[State]:
        return [r.state for r in self.reports]

    def retrying(self) -> list[Report]:
        return [r for r in self.reports if r.state is State.RETRYING]


@pytest.fixture
async def fake() -> AsyncIterator[FakeQQ]:
    async with FakeQQ(heartbeat_interval_ms=HB_MS) as server:
        yield server


@pytest.fixture
async def sink(qq_pconn: PConn, fake: FakeQQ) -> AsyncIterator[RecordingSink]:
    api = kube_config.new_client_from_config(config_file=str(qq_pconn.kubeconfig))
    writer = KubeStatusWriter(qq_pconn.namespace, qq_pconn.name, api_client=api)
    reporter = StatusReporter(writer, platform="qqbot", pod_name="qq-test-pod")
    await reporter.start()
    yield RecordingSink(reporter, writer, fake)
    await reporter.close(final=None)


def settings_for(fake: FakeQQ, **overrides: Any) -> QQBotSettings:
    values: dict[str, Any] = dict(
        connection="qq-test", app_id=DEFAULT_APP_ID,
        client_secret=Secret(DEFAULT_CLIENT_SECRET), api_base_url=fake.base_url,
        delays=STEPS, max_attempts=5, handshake_timeout=3.0, request_timeout=3.0,
        backend_delays=(0.1, 0.2))
    return QQBotSettings(**(values | overrides))


@dataclass
class Running:
    adapter: QQBotAdapter
    task: asyncio.Task[None]
    stop: asyncio.Event

    async def fatal(self, timeout: float = WAIT) -> FatalAdapterError:  # noqa: ASYNC109
        with pytest.raises(FatalAdapterError) as info:
            await asyncio.wait_for(asyncio.shield(self.task), timeout)
        return info.value


@pytest.fixture
async def start(fake: FakeQQ, sink: RecordingSink) -> AsyncIterator[Callable[..., Running]]:
    running: list[Running] = []

    def go(relay: Any = None, **overrides: Any) -> Running:
        adapter = QQBotAdapter(settings_for(fake, **overrides), sink, relay or EchoRelay())
        stop = asyncio.Event()
        r = Running(adapter, asyncio.create_task(adapter.run(stop)), stop)
        running.append(r)
        return r

    yield go
    for r in running:
        r.stop.set()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(r.task, WAIT)


def answered_once(fake: FakeQQ, msg_ids: list[str]) -> None:
    replied = [m.msg_id for m in fake.sent_messages]
    for msg_id in msg_ids:
        assert replied.count(msg_id) == 1, f"{msg_id} answered {replied.count(msg_id)} times"


async def barrier(fake: FakeQQ) -> None:
    """Messages are handled in order: once a fresh one is answered, every earlier one is done
    (including any duplicate that would have been answered twice)."""
    marker = fake.inject_message(USER, "barrier")
    await fake.wait_for_sent(lambda m: m.msg_id == marker, timeout=WAIT)


# --------------------------------------------------------------------------------- basics


async def test_connects_relays_c2c_and_group_and_reports_connected_after_ready(
        fake: FakeQQ, sink: RecordingSink, start: Callable[..., Running]) -> None:
    start()
    connected = await sink.connected()
    assert sink.states()[:2] == [State.CONNECTING, State.CONNECTED]
    assert connected.answered == 1  # written only after the platform sent READY
    c2c = fake.inject_message(USER, "hi")
    group = fake.inject_message(USER, "hello all", group_openid=GROUP)
    first = await fake.wait_for_sent(lambda m: m.msg_id == c2c, timeout=WAIT)
    second = await fake.wait_for_sent(lambda m: m.msg_id == group, timeout=WAIT)
    assert (first.scene, first.target, first.text) == ("c2c", USER, "echo: hi")
    assert (second.scene, second.target, second.text) == ("group", GROUP, "echo: hello all")
    stored = (await sink.writer.read())["status"]
    assert stored["state"] == "connected" and stored["gatewayPod"] == "qq-test-pod"


async def test_stop_closes_the_socket_promptly_even_during_back_off(
        fake: FakeQQ, sink: RecordingSink, start: Callable[..., Running]) -> None:
    running = start(delays=(30.0,))
    await sink.connected()
    await fake.refuse_connections()
    await sink.wait_for(lambda r: r.state is State.RETRYING)
    t0 = time.monotonic()
    running.stop.set()
    await asyncio.wait_for(running.task, 3.0)  # not the 30 s back-off
    assert time.monotonic() - t0 < 2.0
    await fake.accept_connections()

    second = start()
    await sink.connected(2)
    second.stop.set()
    await asyncio.wait_for(second.task, 3.0)
    await fake.wait_until(lambda: fake.live_connections == 0, timeout=WAIT)


# ---------------------------------------------------------------------- close-code table

FATAL = [(4001, "qqbot_invalid_opcode"), (4002, "qqbot_invalid_payload"),
         (4010, "qqbot_invalid_shard"), (4011, "qqbot_sharding_required"),
         (4012, "qqbot_invalid_version"), (4013, "qqbot_intents_rejected"),
         (4014, "qqbot_intents_rejected"), (4914, "qqbot_delisted"), (4915, "qqbot_banned")]


@pytest.mark.parametrize(("code", "error_code"), FATAL)
async def test_fatal_close_code_stops_without_reconnecting(
        fake: FakeQQ, sink: RecordingSink, start: Callable[..., Running], code: int,
        error_code: str) -> None:
    running = start()
    await sink.connected()
    fake.close_next(code, "go away")
    error = (await running.fatal()).error
    assert (error.code, error.retryable) == (error_code, False)
    assert f"close {code}" in error.message and "go away" in error.message
    assert fake.connection_count == 1
    assert State.RETRYING not in sink.states()


@pytest.mark.parametrize(("code", "error_code"), [
    (4006, "qqbot_session_invalid"), (4007, "qqbot_invalid_seq"),
    (4900, "qqbot_server_error"), (4913, "qqbot_server_error")])
async def test_session_dropping_close_code_identifies_anew(
        fake: FakeQQ, sink: RecordingSink, start: Callable[..., Running], code: int,
        error_code: str) -> None:
    running = start()
    await sink.connected()
    old_session = fake.current_session_id
    fake.close_next(code)
    retry = await sink.wait_for(lambda r: r.state is State.RETRYING)
    assert retry.error is not None and retry.error.code == error_code
    assert f"close {code}" in retry.error.message and retry.attempt == 1
    await sink.connected(2)
    assert (fake.identify_count, fake.resume_count) == (2, 0)
    assert running.adapter.session_id == fake.current_session_id != old_session


async def test_4009_resumes_and_no_message_is_lost_or_doubled(
        fake: FakeQQ, sink: RecordingSink, start: Callable[..., Running]) -> None:
    running = start(delays=(0.5,))
    await sink.connected()
    session = fake.current_session_id
    fake.close_next(4009)
    await fake.wait_until(lambda: fake.live_connections == 0, timeout=WAIT,
                          what="the connection closed")
    # While the adapter backs off, the platform buffers these for the Resume.
    missed = [fake.inject_message(USER, f"missed {i}") for i in range(3)]
    assert len(fake.sent_messages) == 0
    await sink.connected(2)
    assert (fake.identify_count, fake.resume_count) == (1, 1)
    assert running.adapter.session_id == session
    await barrier(fake)
    answered_once(fake, missed)
    assert [m.text for m in fake.sent_messages[:3]] == [f"echo: missed {i}" for i in range(3)]
    retry = sink.retrying()[0]
    assert retry.error is not None and retry.error.code == "qqbot_session_timeout"


async def test_4008_waits_the_rate_limit_delay_then_resumes(
        fake: FakeQQ, sink: RecordingSink, start: Callable[..., Running]) -> None:
    start(rate_limit_delay=1.0)
    await sink.connected()
    loop = asyncio.get_running_loop()
    closed_at = loop.time()
    fake.close_next(4008)
    retry = await sink.wait_for(lambda r: r.state is State.RETRYING)
    await fake.wait_until(lambda: fake.connection_count == 2, timeout=WAIT)
    reconnected_at = loop.time()
    assert retry.error is not None and retry.error.code == "qqbot_rate_limited"
    # The sleep is 1.0 s (not the 0.2 s ladder step), and starts after the report landed.
    assert reconnected_at - retry.landed_at >= 1.0
    assert reconnected_at - closed_at >= 1.0
    await sink.connected(2)
    assert (fake.identify_count, fake.resume_count) == (1, 1)


async def test_4004_fetches_a_new_token_and_resumes(
        fake: FakeQQ, sink: RecordingSink, start: Callable[..., Running]) -> None:
    start()
    await sink.connected()
    assert fake.calls["getAppAccessToken"] == 1
    fake.close_next(4009)
    fake.close_next(4004, on="identify")  # the platform rejects the Resume's token
    retry = await sink.wait_for(
        lambda r: r.error is not None and r.error.code == "qqbot_token_invalid")
    assert retry.state is State.RETRYING and retry.attempt == 2
    assert "close 4004" in retry.error.message  # type: ignore[union-attr]
    await sink.connected(2)
    assert fake.calls["getAppAccessToken"] == 2  # fetched anew only because of the 4004
    assert (fake.identify_count, fake.resume_count) == (1, 1)  # same session, resumed
    msg = fake.inject_message(USER, "after 4004")
    await fake.wait_for_sent(lambda m: m.msg_id == msg, timeout=WAIT)


async def test_token_expired_early_is_replaced_without_an_extra_attempt(
        fake: FakeQQ, sink: RecordingSink, start: Callable[..., Running]) -> None:
    start()
    await sink.connected()
    fake.expire_tokens()  # the platform drops the token long before its announced expiry
    fake.close_next(4009)
    await sink.connected(2)
    assert [r.error.code for r in sink.retrying()] == [  # type: ignore[union-attr]
        "qqbot_session_timeout"]  # the 401 on GET /gateway cost no ladder step
    assert fake.calls["getAppAccessToken"] == 2 and fake.resume_count == 1
    msg = fake.inject_message(USER, "after refresh")
    await fake.wait_for_sent(lambda m: m.msg_id == msg, timeout=WAIT)


async def test_token_is_refreshed_before_it_expires() -> None:
    # Own fake: 3 s tokens; the adapter refreshes at 80 % (2.4 s), the fake hands out a new
    # one within 1.5 s of expiry, so the reply after 2.6 s needs no 401 round trip.
    async with FakeQQ(heartbeat_interval_ms=HB_MS, token_ttl=3.0) as server:
        sink = _ListSink()
        stop = asyncio.Event()
        adapter = QQBotAdapter(settings_for(server), sink, EchoRelay())
        task = asyncio.create_task(adapter.run(stop))
        try:
            await server.wait_until(lambda: server.identify_count == 1, timeout=WAIT)
            first = server.access_token
            await asyncio.sleep(2.6)  # the passing of time is what is under test
            msg = server.inject_message(USER, "late")
            await server.wait_for_sent(lambda m: m.msg_id == msg, timeout=WAIT)
            assert server.calls["getAppAccessToken"] == 2
            assert server.calls["c2c_message"] == 1  # first try succeeded: no 401, no retry
            assert server.access_token != first
        finally:
            stop.set()
            await asyncio.wait_for(task, WAIT)


@dataclass
class _ListSink:
    reports: list[tuple[State, int, AdapterError | None]] = field(default_factory=list)

    async def report(self, state: State, *, attempt: int = 0, max_attempts: int = 0,
                     error: AdapterError | None = None) -> None:
        self.reports.append((state, attempt, error))


# ------------------------------------------------------------------ op 7, op 9, dead peer


@pytest.mark.parametrize("stable", [True, False], ids=["stable", "quick"])
async def test_op7_reconnects_and_resumes(
        fake: FakeQQ, sink: RecordingSink, start: Callable[..., Running],
        stable: bool) -> None:
    # The quick variant keeps the 5 s default window; waiting for the `connected` write may
    # take up to a second (the reporter coalesces writes).
    start(quick_window=0.5 if stable else 5.0)
    await sink.connected()
    if stable:
        await asyncio.sleep(0.6)  # outlive the quick window: time is the condition here
    assert fake.send_reconnect() == 1
    await sink.connected(2)
    assert (fake.identify_count, fake.resume_count) == (1, 1)
    if stable:  # a planned reconnect of a healthy link: at once, not a failure
        assert State.RETRYING not in sink.states()
        assert sink.states()[-2:] == [State.CONNECTING, State.CONNECTED]
    else:  # op 7 right after connecting counts like any quick disconnect
        retry = sink.retrying()[0]
        assert retry.attempt == 1 and retry.error is not None
        assert retry.error.code == "qqbot_reconnect_requested"
    msg = fake.inject_message(USER, "after op 7")
    await fake.wait_for_sent(lambda m: m.msg_id == msg, timeout=WAIT)


@pytest.mark.parametrize("resumable", [False, True])
async def test_op9_clears_the_session_unless_resumable(
        fake: FakeQQ, sink: RecordingSink, start: Callable[..., Running],
        resumable: bool) -> None:
    running = start()
    await sink.connected()
    old_session = fake.current_session_id
    assert fake.send_invalid_session(resumable) == 1
    await sink.connected(2)
    if resumable:
        assert (fake.identify_count, fake.resume_count) == (1, 1)
        assert running.adapter.session_id == old_session
    else:
        assert (fake.identify_count, fake.resume_count) == (2, 0)
        assert running.adapter.session_id == fake.current_session_id != old_session


async def test_dead_peer_is_detected_within_three_heartbeat_intervals(
        fake: FakeQQ, sink: RecordingSink, start: Callable[..., Running]) -> None:
    interval = 0.5
    fake.heartbeat_interval_ms = int(interval * 1000)
    start()
    await sink.connected()
    await fake.wait_until(lambda: fake.heartbeat_count >= 2, timeout=WAIT)
    loop = asyncio.get_running_loop()
    went_deaf = loop.time()
    fake.stop_acking()  # socket stays open, nothing answers: only the ACK watchdog can tell
    lost = fake.inject_message(USER, "sent to a dead peer")
    retry = await sink.wait_for(lambda r: r.state is State.RETRYING)
    detected = retry.called_at - went_deaf
    assert retry.error is not None and retry.error.code == "qqbot_heartbeat_timeout"
    # The deadline is two intervals after the last ACK, which came at most 0.8 interval
    # before the peer died: not on the first missed ACK, and well before TCP would notice.
    assert interval <= detected <= 3 * interval, detected
    await sink.connected(2)
    assert fake.resume_count == 1
    await fake.wait_for_sent(lambda m: m.msg_id == lost, timeout=WAIT)
    await barrier(fake)
    answered_once(fake, [lost])


# --------------------------------------------------------------- ladder, burst, exhaustion


async def test_retrying_n_of_max_lands_before_each_sleep_and_burst_escalates(
        fake: FakeQQ, sink: RecordingSink, start: Callable[..., Running]) -> None:
    loop = asyncio.get_running_loop()
    attempts_at: list[float] = []  # when each GET /gateway (one per connection try) arrived

    async def watch() -> None:
        while True:
            n = len(attempts_at)
            await fake.wait_until(lambda n=n: fake.calls["gateway"] > n, timeout=600)
            attempts_at.extend([loop.time()] * (fake.calls["gateway"] - n))

    watcher = asyncio.create_task(watch())
    try:
        fake.drop_quickly(3)  # Hello, then a TCP reset: three quick disconnects in a row
        start(delays=(0.2, 0.3, 0.9), max_attempts=5)
        await sink.connected()
        retries = sink.retrying()
        assert [(r.attempt, r.max_attempts) for r in retries] == [(1, 5), (2, 5), (3, 5)]
        for n, retry in enumerate(retries, start=1):
            assert retry.error is not None
            assert retry.stored is not None  # what the API server held before the sleep
            assert retry.stored["state"] == "retrying"
            assert retry.stored["attempts"] == f"{n}/5" and retry.stored["attempt"] == n
            assert retry.stored["lastError"]["code"] == retry.error.code
            assert retry.stored["lastError"]["retryable"] is True
            assert retry.landed_at - retry.called_at < 1.5  # within about a second
            assert retry.landed_at <= attempts_at[n]  # the next try starts after it landed
        assert [r.error.code for r in retries] == [  # type: ignore[union-attr]
            "qqbot_connection_lost", "qqbot_connection_lost", "qqbot_quick_disconnects"]
        assert "3 disconnects in a row" in retries[2].error.message  # type: ignore[union-attr]
        # The burst waits the longest step (0.9 s), not step 3 of a longer ladder.
        assert attempts_at[3] - retries[2].landed_at >= 0.9
        stored = (await sink.writer.read())["status"]
        assert stored["state"] == "connected" and "lastError" not in stored
    finally:
        watcher.cancel()


@pytest.mark.parametrize("cause", ["errors", "rate_limited", "close_codes"])
async def test_exhaustion_is_a_retryable_fatal_that_names_the_cause(
        fake: FakeQQ, sink: RecordingSink, start: Callable[..., Running], cause: str) -> None:
    running = start(delays=(0.1,), max_attempts=3, rate_limit_delay=0.1)
    await sink.connected()
    if cause == "errors":
        await fake.refuse_connections()
        expected = "last failure connection errors"
    elif cause == "rate_limited":
        for _ in range(3):
            fake.close_next(4008, on="identify")
        fake.close_next(4008)
        expected = "last failure rate limited (close 4008)"
    else:
        for _ in range(3):
            fake.close_next(4900, on="identify")
        fake.close_next(4900)
        expected = "last failure closed by the platform"
    error = (await running.fatal()).error
    assert (error.code, error.retryable) == ("qq_reconnect_exhausted", True)
    assert "gave up after 3 reconnect attempts" in error.message
    assert expected in error.message
    assert [(r.attempt, r.max_attempts) for r in sink.retrying()] == [(1, 3), (2, 3), (3, 3)]
    assert sink.retrying()[-1].stored["attempts"] == "3/3"  # type: ignore[index]
    await fake.accept_connections()


async def test_invalid_credentials_are_a_non_retryable_fatal(
        fake: FakeQQ, sink: RecordingSink, start: Callable[..., Running]) -> None:
    wrong = "wrongClientSecret0123456789abcdef"
    running = start(client_secret=Secret(wrong))
    error = (await running.fatal()).error
    assert (error.code, error.retryable) == ("qqbot_invalid_credentials", False)
    assert wrong not in error.message and fake.connection_count == 0


# ---------------------------------------------------------------------- backend, secrets


@dataclass
class FlakyRelay:
    failures: int
    calls: list[str] = field(default_factory=list)

    async def deliver(self, message: InboundMessage) -> str | None:
        self.calls.append(message.message_id)
        if len(self.calls) <= self.failures:
            raise BackendError("backend answered HTTP 503")
        return f"ok: {message.text}"


async def test_failing_backend_is_retried_and_never_kills_the_adapter(
        fake: FakeQQ, sink: RecordingSink, start: Callable[..., Running],
        qq_pconn: PConn) -> None:
    errors = metrics.ERRORS.labels(platform="qqbot", code="backend_error")
    before = errors._value.get()
    relay = FlakyRelay(failures=3)
    running = start(relay=relay)
    await sink.connected()
    msg = fake.inject_message(USER, "patience")
    sent = await fake.wait_for_sent(lambda m: m.msg_id == msg, timeout=WAIT)
    assert sent.text == "ok: patience" and relay.calls == [msg] * 4
    assert errors._value.get() - before == 3
    assert not running.task.done()
    await barrier(fake)
    answered_once(fake, [msg])
    assert State.RETRYING not in sink.states()
    # Shown in status as Telegram does: still connected, lastError backend_error, cleared after.
    held = [r for r in sink.reports if r.error is not None]
    assert held and all(r.state is State.CONNECTED and r.error.code == "backend_error"
                        and "retry" in r.error.message for r in held)  # type: ignore[union-attr]
    assert sink.reports[-1].state is State.CONNECTED and sink.reports[-1].error is None
    await qq_pconn.wait_status(lambda st: st.get("state") == "connected"
                               and "lastError" not in st, timeout=WAIT)


async def test_secret_and_tokens_never_reach_logs_status_or_errors(
        fake: FakeQQ, sink: RecordingSink, start: Callable[..., Running],
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    running = start(max_attempts=2, delays=(0.1,))
    await sink.connected()
    tokens = {fake.access_token}
    fake.expire_tokens()
    fake.close_next(4009)  # -> Resume with the old token -> 4004 -> a new token
    await sink.connected(2)
    tokens.add(fake.access_token)
    msg = fake.inject_message(USER, "hi")
    await fake.wait_for_sent(lambda m: m.msg_id == msg, timeout=WAIT)
    fake.close_next(4915)
    fatal = await running.fatal()
    stored = json.dumps((await sink.writer.read())["status"])
    texts = [caplog.text, stored, str(fatal), *(repr(r) for r in sink.reports)]
    assert len(tokens) == 2 and None not in tokens
    assert fake.calls["getAppAccessToken"] == 2  # the refresh path really ran
    for secret in (DEFAULT_CLIENT_SECRET, *tokens):
        assert secret is not None
        for text in texts:
            assert secret not in text


# ------------------------------------------------------------- the gateway process, qqbot


def qq_env(pconn: PConn, fake: FakeQQ, reconnect: dict[str, Any] | None = None,
           **extra: str) -> dict[str, str]:
    env = pconn.env(
        SWITCHBOARD_API_BASE_URL=fake.base_url,
        SWITCHBOARD_QQ_APP_ID=DEFAULT_APP_ID,
        SWITCHBOARD_QQ_CLIENT_SECRET=DEFAULT_CLIENT_SECRET,
        SWITCHBOARD_RECONNECT=json.dumps(reconnect or {"maxAttempts": 5,
                                                       "delaySeconds": [0.2, 0.4]}),
        SWITCHBOARD_BACKEND_ECHO="true",
    )
    env.update(extra)
    return env


def metric(text: str, name: str, **labels: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            sample, value = line.rsplit(" ", 1)
            if all(f'{k}="{v}"' in sample for k, v in labels.items()):
                return float(value)
    return 0.0


async def test_gateway_process_serves_qqbot_resumes_and_stops_cleanly(
        qq_pconn: PConn, fake: FakeQQ,
        gateway: Callable[[dict[str, str]], GatewayProcess]) -> None:
    gw = gateway(qq_env(qq_pconn, fake, SWITCHBOARD_LOG_LEVEL="DEBUG"))
    await gw.wait_serving()
    status = await qq_pconn.wait_state("connected", timeout=WAIT)
    assert status["attempts"] == "0/5" and "lastError" not in status
    tokens = {fake.access_token}
    msg = fake.inject_message(USER, "via the process")
    sent = await fake.wait_for_sent(lambda m: m.msg_id == msg, timeout=WAIT)
    assert sent.text == "echo: via the process"

    fake.close_next(4009)
    await qq_pconn.wait_state("retrying", timeout=WAIT, attempts="1/5")
    await qq_pconn.wait_state("connected", timeout=WAIT)
    assert fake.resume_count == 1
    text = await gw.metrics()
    assert metric(text, "switchboard_gateway_reconnect_attempts_total", platform="qqbot") == 1
    assert metric(text, "switchboard_gateway_errors_total",
                  code="qqbot_session_timeout") == 1
    assert metric(text, "switchboard_gateway_messages_received_total", platform="qqbot") == 1
    assert metric(text, "switchboard_gateway_messages_sent_total", platform="qqbot") == 1

    started = time.monotonic()
    assert await gw.terminate() == 0
    assert time.monotonic() - started < 5
    assert qq_pconn.status()["state"] == "disconnected"
    await fake.wait_until(lambda: fake.live_connections == 0, timeout=WAIT)
    logs = gw.logs()
    assert "resumed" in logs  # DEBUG logging was on and the adapter did log
    for secret in (DEFAULT_CLIENT_SECRET, *tokens):
        assert secret is not None and secret not in logs
        assert all(secret not in json.dumps(e.status) for e in qq_pconn.history)


async def test_gateway_process_reports_exhaustion_as_retryable_fatal_and_stays_up(
        qq_pconn: PConn, fake: FakeQQ,
        gateway: Callable[[dict[str, str]], GatewayProcess]) -> None:
    gw = gateway(qq_env(qq_pconn, fake, {"maxAttempts": 2, "delaySeconds": [0.2]}))
    await qq_pconn.wait_state("connected", timeout=WAIT)
    await fake.refuse_connections()
    status = await qq_pconn.wait_state("fatal", timeout=WAIT)
    assert status["lastError"]["code"] == "qq_reconnect_exhausted"
    assert status["lastError"]["retryable"] is True
    assert "last failure connection errors" in status["lastError"]["message"]
    attempts = [e.status.get("attempts") for e in qq_pconn.history
                if e.status.get("state") == "retrying"]
    assert attempts[-2:] == ["1/2", "2/2"]
    assert gw.alive()
    assert (await gw.http_get(gw.health_url + "/readyz"))[0] == 503
    assert await gw.terminate() == 0
    assert qq_pconn.status()["state"] == "fatal"  # kept for the operator
    await fake.accept_connections()
