"""progress.py on a fake clock: the stall rule and the coarse lastActivity writes."""

from __future__ import annotations

from typing import Any

from switchboard_gateway.progress import ACTIVITY_RESOLUTION, Progress, stalled


class Store:
    def __init__(self) -> None:
        self.fields: dict[str, Any] = {}
        self.writes = 0

    def field(self, name: str) -> Any:
        return self.fields.get(name)

    def set_field(self, name: str, value: Any) -> int:
        self.fields[name] = value
        self.writes += 1
        return self.writes

    async def restore(self, names: tuple[str, ...], timeout: float) -> dict[str, Any]:  # noqa: ASYNC109
        return {}


def test_only_a_connected_gateway_that_does_not_move_is_stalled() -> None:
    assert stalled(now=100, last=0, stall_after=60, connected=True)
    assert not stalled(now=100, last=50, stall_after=60, connected=True)
    assert not stalled(now=100, last=0, stall_after=60, connected=False)  # retrying: its ladder


def test_a_deliberate_wait_is_not_a_stall() -> None:
    now = [0.0]
    progress = Progress(clock=lambda: now[0])
    progress.moved(idle_for=50)  # a back-off of 50 s
    now[0] = 90
    assert not stalled(now[0], progress.last, 60, True)
    now[0] = 111
    assert stalled(now[0], progress.last, 60, True)


def test_last_activity_is_written_coarsely_not_per_message() -> None:
    now, store = [0.0], Store()
    progress = Progress(store, clock=lambda: now[0])
    for i in range(100):  # a busy minute: 100 messages, 100 polls
        now[0] = i * 0.5
        progress.delivered()
        progress.answered()
    assert store.writes == 2  # one per key
    assert set(store.fields["lastActivity"]) == {"platformAnsweredAt", "messageDeliveredAt"}
    now[0] = ACTIVITY_RESOLUTION + 1
    progress.answered()
    assert store.writes == 3
