"""The QQ Bot session survives a gateway restart (status.qqSession).

A new process reads the session its predecessor stored and resumes it: the platform (FakeQQ,
which keeps a detached session resumable for its resume window, also when the socket died
without a close frame) replays what was sent while no gateway was connected. The stored seq is
the last *handled* dispatch, written within the status write budget.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from kubernetes import config as kube_config

from switchboard_gateway.adapter import State
from switchboard_gateway.config import Secret
from switchboard_gateway.qqbot import SESSION_FIELD, QQBotAdapter, QQBotSettings
from switchboard_gateway.relay import EchoRelay
from switchboard_gateway.status import KubeStatusWriter, StatusReporter
from switchboard_testkit.fake_qq import DEFAULT_APP_ID, DEFAULT_CLIENT_SECRET, FakeQQ
from switchboard_testkit.gateway_harness import GatewayProcess, PConn

WAIT = 10.0  # upper bound of every wait
USER = "A1B2C3D4E5F60718293A4B5C6D7E8F90"


@pytest.fixture
async def fake() -> AsyncIterator[FakeQQ]:
    async with FakeQQ(heartbeat_interval_ms=300) as server:
        yield server


@pytest.fixture
def qq_pconn(make_pconn: Callable[..., PConn]) -> PConn:
    return make_pconn("qqbot")


def qq_env(pconn: PConn, fake: FakeQQ, pod: str) -> dict[str, str]:
    return pconn.env(
        pod=pod,
        SWITCHBOARD_API_BASE_URL=fake.base_url,
        SWITCHBOARD_QQ_APP_ID=DEFAULT_APP_ID,
        SWITCHBOARD_QQ_CLIENT_SECRET=DEFAULT_CLIENT_SECRET,
        SWITCHBOARD_RECONNECT=json.dumps({"maxAttempts": 5, "delaySeconds": [0.2, 0.4]}),
        SWITCHBOARD_BACKEND_ECHO="true",
    )


def settings_for(fake: FakeQQ, **overrides: Any) -> QQBotSettings:
    values: dict[str, Any] = dict(
        connection="qq-test", app_id=DEFAULT_APP_ID,
        client_secret=Secret(DEFAULT_CLIENT_SECRET), api_base_url=fake.base_url,
        delays=(0.2, 0.4), max_attempts=5, handshake_timeout=3.0, request_timeout=3.0,
        backend_delays=(0.1, 0.2))
    return QQBotSettings(**(values | overrides))


def session_of(status: dict[str, Any]) -> dict[str, Any]:
    return status.get(SESSION_FIELD) or {}


async def barrier(fake: FakeQQ) -> str:
    """Messages are handled in order: once a fresh one is answered, every earlier one is done."""
    marker = fake.inject_message(USER, "barrier")
    await fake.wait_for_sent(lambda m: m.msg_id == marker, timeout=WAIT)
    return marker


async def poll(predicate: Callable[[], bool], what: str, timeout: float = WAIT) -> None:  # noqa: ASYNC109
    """For conditions outside the fake (which wakes its own waiters): checked every 20 ms."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not met within {timeout}s")
        await asyncio.sleep(0.02)


def answered_once(fake: FakeQQ, msg_ids: list[str]) -> None:
    replied = [m.msg_id for m in fake.sent_messages]
    for msg_id in msg_ids:
        assert replied.count(msg_id) == 1, f"{msg_id} answered {replied.count(msg_id)} times"


@pytest.mark.cluster
async def test_restarted_gateway_resumes_the_stored_session_and_replays_what_it_missed(
        qq_pconn: PConn, fake: FakeQQ,
        gateway: Callable[[dict[str, str]], GatewayProcess]) -> None:
    first_gw = gateway(qq_env(qq_pconn, fake, "gw-a"))
    await qq_pconn.wait_state("connected", timeout=WAIT, gatewayPod="gw-a")
    session = fake.current_session_id
    assert session is not None
    first = fake.inject_message(USER, "before the kill")
    await fake.wait_for_sent(lambda m: m.msg_id == first, timeout=WAIT)
    handled = fake.session_seq(session)
    stored = session_of(await qq_pconn.wait_status(
        lambda s: session_of(s).get("seq") == handled, timeout=WAIT,
        what="qqSession.seq of the handled message"))
    assert stored["sessionId"] == session and stored["appId"] == DEFAULT_APP_ID
    assert stored["updatedAt"].endswith("Z")
    tokens = {fake.access_token}

    # SIGKILL: no final status write, no close frame; the platform keeps the session.
    await first_gw.kill()
    await fake.wait_until(lambda: fake.live_connections == 0, timeout=WAIT,
                          what="the fake noticed the dead socket")
    missed = [fake.inject_message(USER, f"missed {i}") for i in range(3)]
    assert fake.session_seq(session) == handled + 3  # buffered for a Resume

    second_gw = gateway(qq_env(qq_pconn, fake, "gw-b"))
    await qq_pconn.wait_state("connected", timeout=WAIT, gatewayPod="gw-b")
    assert fake.resume_requests == [(session, handled)]  # the stored session and seq
    assert (fake.identify_count, fake.resume_count) == (1, 1)
    await barrier(fake)
    answered_once(fake, [first, *missed])
    assert [m.text for m in fake.sent_messages] == [
        "echo: before the kill", "echo: missed 0", "echo: missed 1", "echo: missed 2",
        "echo: barrier"]
    moved = session_of(await qq_pconn.wait_status(
        lambda s: session_of(s).get("seq") == fake.session_seq(session), timeout=WAIT,
        what="qqSession.seq moved past the replayed messages"))
    assert moved["sessionId"] == session and moved["seq"] > handled + 3
    assert moved["updatedAt"] >= stored["updatedAt"]
    tokens.add(fake.access_token)

    # SIGTERM: the final write keeps the session, the close keeps it resumable.
    assert await second_gw.terminate() == 0
    final = qq_pconn.status()
    assert final["state"] == "disconnected"
    assert session_of(final) == moved
    await fake.wait_until(lambda: fake.live_connections == 0, timeout=WAIT)
    late = fake.inject_message(USER, "while terminated")
    third_gw = gateway(qq_env(qq_pconn, fake, "gw-c"))
    await fake.wait_for_sent(lambda m: m.msg_id == late, timeout=WAIT)
    assert fake.resume_requests[-1] == (session, moved["seq"])
    assert fake.identify_count == 1
    await barrier(fake)
    answered_once(fake, [first, *missed, late])
    assert await third_gw.terminate() == 0

    for gw in (first_gw, second_gw, third_gw):
        logs = gw.logs()
        for secret in (DEFAULT_CLIENT_SECRET, *tokens):
            assert secret is not None and secret not in logs
    for secret in (DEFAULT_CLIENT_SECRET, *tokens):
        assert all(secret not in json.dumps(e.status) for e in qq_pconn.history)


@pytest.mark.cluster
async def test_a_stored_session_the_platform_forgot_identifies_at_once(
        qq_pconn: PConn, fake: FakeQQ) -> None:
    api = kube_config.new_client_from_config(config_file=str(qq_pconn.kubeconfig))
    writer = KubeStatusWriter(qq_pconn.namespace, qq_pconn.name, api_client=api)
    # What a previous process left, for a session the platform no longer knows.
    await writer.apply({"state": "connected", "stateSince": "2026-01-01T00:00:00Z",
                        "gatewayPod": "gw-old", SESSION_FIELD: {
                            "sessionId": "expired-session", "seq": 7,
                            "appId": DEFAULT_APP_ID, "updatedAt": "2026-01-01T00:00:00Z"}})
    reporter = StatusReporter(writer, platform="qqbot", pod_name="gw-new")
    await reporter.start()
    adapter = QQBotAdapter(settings_for(fake), reporter, EchoRelay())  # reporter is the store
    stop = asyncio.Event()
    task = asyncio.create_task(adapter.run(stop))
    try:
        status = await qq_pconn.wait_status(
            lambda s: s.get("state") == "connected" and s.get("gatewayPod") == "gw-new"
            and session_of(s).get("sessionId") == fake.current_session_id, timeout=WAIT,
            what="connected with the new session stored")
        assert fake.resume_requests == [("expired-session", 7)]  # tried first
        assert fake.identify_count == 1  # then identified, at once
        assert fake.connection_count == 2
        assert "retrying" not in qq_pconn.states()  # no ladder step for it
        assert status["attempts"] == "0/5" and "lastError" not in status
        msg = fake.inject_message(USER, "after identify")
        await fake.wait_for_sent(lambda m: m.msg_id == msg, timeout=WAIT)
    finally:
        stop.set()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(task, WAIT)
        await reporter.close()


class CountingWriter:
    """A status writer in memory: counts the applies."""

    def __init__(self) -> None:
        self.writes: list[tuple[float, dict[str, Any]]] = []

    async def apply(self, status: dict[str, Any], resource_version: str | None = None) -> None:
        self.writes.append((time.monotonic(), status))

    async def read(self) -> dict[str, Any]:
        return {"metadata": {"resourceVersion": "1"},
                "status": self.writes[-1][1] if self.writes else {}}


async def test_seq_writes_of_a_busy_link_stay_within_the_write_budget(fake: FakeQQ) -> None:
    writer = CountingWriter()
    reporter = StatusReporter(writer, platform="qqbot", pod_name="gw-0")  # 1/s, burst 2
    await reporter.start()
    adapter = QQBotAdapter(settings_for(fake), reporter, EchoRelay())
    stop = asyncio.Event()
    task = asyncio.create_task(adapter.run(stop))
    try:
        await poll(lambda: reporter.state is State.CONNECTED and not reporter.pending,
                   "connected")
        before = len(writer.writes)
        started = time.monotonic()
        ids = []
        for i in range(50):
            ids.append(fake.inject_message(USER, f"m{i}"))
            await asyncio.sleep(0.02)
        await fake.wait_until(lambda: len(fake.sent_messages) >= 50, timeout=WAIT,
                              what="50 replies")
        answered_once(fake, ids)
        last = fake.session_seq()
        await poll(
            lambda: bool(writer.writes) and session_of(writer.writes[-1][1]).get("seq") == last,
            "the last handled seq written")
        elapsed = time.monotonic() - started
        during = len(writer.writes) - before
        # One write a second at most (the lazy seq writes leave the burst for state changes).
        assert 1 <= during <= elapsed / reporter.min_interval + 1, (during, elapsed)
        times = [at for at, _ in writer.writes]
        for i in range(len(times) - 3):
            assert times[i + 3] - times[i] >= 0.95
    finally:
        stop.set()
        await asyncio.wait_for(task, WAIT)
        await reporter.close()
    assert writer.writes[-1][1]["state"] == "disconnected"
    assert session_of(writer.writes[-1][1])["seq"] == fake.session_seq()
