"""QQ Bot back-pressure: while the backend is down, the inbox holds at most inbox_limit
messages; past it the gateway stops reading (a resumable close) and the platform replays the
rest on Resume. The fake QQ is the one of test_qqbot_e2e (its Resume replays what a session
missed); the backend is down, then up."""

from __future__ import annotations

import asyncio
import tracemalloc
from collections.abc import AsyncIterator, Callable

import pytest
from test_qqbot_e2e import (  # noqa: F401 (fixtures)
    HB_MS,
    USER,
    WAIT,
    RecordingSink,
    Running,
    qq_pconn,
    settings_for,
    sink,
    start,
)

from switchboard_gateway.adapter import BackendError, InboundMessage
from switchboard_gateway.qqbot import QQBotAdapter
from switchboard_gateway.relay import EchoRelay
from switchboard_testkit.fake_qq import FakeQQ
from switchboard_testkit.gateway_harness import PConn

MESSAGES, LIMIT = 10_000, 1000  # LIMIT: QQBotSettings.inbox_limit's default


@pytest.fixture
async def fake() -> AsyncIterator[FakeQQ]:
    """A platform that keeps every dispatch of the outage for Resume."""
    async with FakeQQ(heartbeat_interval_ms=HB_MS, replay_limit=MESSAGES) as server:
        yield server


class DownThenUp:
    """Refuses everything until ``up`` is set; then answers each message once."""

    def __init__(self) -> None:
        self.up = asyncio.Event()
        self.taken: list[str] = []
        self.attempts = 0

    async def deliver(self, message: InboundMessage) -> str | None:
        self.attempts += 1
        if not self.up.is_set():
            raise BackendError("backend answered HTTP 503")
        self.taken.append(message.text)
        return None  # no reply: the test counts what the backend took, in order


async def test_ten_thousand_messages_while_the_backend_is_down_stay_bounded_then_all_arrive(
        fake: FakeQQ, sink: RecordingSink, start: Callable[..., Running]) -> None:  # noqa: F811
    relay = DownThenUp()
    running = start(relay=relay, backend_delays=(0.05,))
    await sink.connected()
    tracemalloc.start()
    held_peak = 0
    for i in range(MESSAGES):
        fake.inject_message(USER, f"m{i}")
        if i % 500 == 0:
            await asyncio.sleep(0)
            held_peak = max(held_peak, len(running.adapter._unhandled))
    for _ in range(100):  # the inbox fills up and the gateway stops reading
        await asyncio.sleep(0.05)
        held_peak = max(held_peak, len(running.adapter._unhandled))
    _, peak_bytes = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert held_peak <= LIMIT
    print(f"\nheld at most {held_peak} of {MESSAGES} messages; Python heap peak while the "
          f"backend was down: {peak_bytes / 2**20:.1f} MiB")

    relay.up.set()
    for _ in range(1200):
        if len(relay.taken) >= MESSAGES:
            break
        await asyncio.sleep(0.1)
    print(f"taken {len(relay.taken)}, resumes {fake.resume_count}, "
          f"connections {fake.connection_count}")
    assert relay.taken == [f"m{i}" for i in range(MESSAGES)]  # each once, in order
    assert fake.resume_count >= 1 and fake.identify_count == 1
    assert not running.task.done()


async def test_dispatches_the_platform_does_not_replay_are_counted_as_lost(
        sink: RecordingSink, qq_pconn: PConn) -> None:  # noqa: F811
    """The platform's replay buffer is bounded: a Resume after a long gap skips the oldest
    dispatches. The seq gap says how many; they are dead letters, not silence."""
    async with FakeQQ(heartbeat_interval_ms=HB_MS, replay_limit=5) as fake:
        adapter = QQBotAdapter(settings_for(fake, delays=(0.5,)), sink, EchoRelay(),
                               store=sink.reporter)
        stop = asyncio.Event()
        task = asyncio.create_task(adapter.run(stop))
        try:
            await sink.connected()
            fake.close_next(4009)
            await fake.wait_until(lambda: fake.live_connections == 0, timeout=WAIT,
                                  what="the connection closed")
            sent = [fake.inject_message(USER, f"missed {i}") for i in range(20)]
            await sink.connected(2)
            await fake.wait_for_sent(lambda m: m.msg_id == sent[-1], timeout=WAIT)
            assert len(fake.sent_messages) == 5  # what was replayed is answered
            status = await qq_pconn.wait_status(
                lambda s: (s.get("deadLetters") or {}).get("count") == 15, WAIT,
                "15 dispatches counted as not replayed")
            assert status["deadLetters"]["last"]["reason"] == "not_replayed"
        finally:
            stop.set()
            await asyncio.wait_for(task, WAIT)
