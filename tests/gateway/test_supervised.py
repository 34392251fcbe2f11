"""No background task of the gateway dies unseen: the gateway in-process (main.run), the fake
platforms on 127.0.0.1, status in a real PlatformConnection. An exception is injected into one
task at a time; within 2 s status says `fatal` (gateway_internal_error, retryable: the operator
restarts it) or liveness fails (for the tasks that write status or prove the loop turns)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import pytest
import telegram as ptb
from kubernetes import config as kube_config

from switchboard_gateway import health, main, qqbot, status
from switchboard_gateway.config import GatewayConfig, Secret
from switchboard_gateway.status import KubeStatusWriter, StatusReporter
from switchboard_gateway.telegram import TelegramAdapter
from switchboard_testkit.fake_qq import DEFAULT_APP_ID, DEFAULT_CLIENT_SECRET, FakeQQ
from switchboard_testkit.fake_telegram import GATEWAY_TEST_TOKEN, FakeTelegram
from switchboard_testkit.gateway_harness import PConn
from switchboard_testkit.net import free_port

pytestmark = pytest.mark.cluster

WITHIN = 2.0


class Injected(RuntimeError):
    """The fault a test puts into one task."""


async def _boom(*_: Any, **__: Any) -> None:
    raise Injected("injected fault")


def _config(pconn: PConn, **values: Any) -> GatewayConfig:
    values.setdefault("backend_echo", True)
    return GatewayConfig(connection=pconn.name, namespace=pconn.namespace,
                         platform=pconn.platform, pod_name="gw-0",
                         bind_address="127.0.0.1", health_port=free_port(),
                         metrics_port=free_port(), **values)


@pytest.fixture
async def run_gateway(pconn: PConn) -> AsyncIterator[Callable[[GatewayConfig], Any]]:
    stops: list[tuple[asyncio.Event, asyncio.Task[int]]] = []

    async def go(config: GatewayConfig) -> None:
        api = kube_config.new_client_from_config(config_file=str(pconn.kubeconfig))
        reporter = StatusReporter(KubeStatusWriter(pconn.namespace, pconn.name, api_client=api),
                                  platform=config.platform, pod_name="gw-0")
        stop = asyncio.Event()
        stops.append((stop, asyncio.create_task(main.run(config, stop, reporter))))

    yield go
    for stop, task in stops:
        stop.set()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(task, 15)


async def _fatal_within(pconn: PConn, started: float) -> dict[str, Any]:
    found = await pconn.wait_status(
        lambda s: s.get("state") == "fatal"
        and (s.get("lastError") or {}).get("code") == "gateway_internal_error", 10,
        "a fatal internal error")
    assert time.monotonic() - started <= WITHIN + 0.5, "reported too late"
    assert found["lastError"]["retryable"] is True
    assert "injected fault" in found["lastError"]["message"]
    return found


async def _unhealthy_within(port: int, started: float) -> str:
    async with aiohttp.ClientSession() as http:
        while time.monotonic() - started < WITHIN:
            with contextlib.suppress(aiohttp.ClientConnectionError):  # not listening yet
                async with http.get(f"http://127.0.0.1:{port}/healthz") as resp:
                    if resp.status == 503:
                        return await resp.text()
            await asyncio.sleep(0.05)
    raise AssertionError(f"/healthz still 200 after {WITHIN}s")


@pytest.fixture
async def telegram() -> AsyncIterator[FakeTelegram]:
    async with FakeTelegram(GATEWAY_TEST_TOKEN) as fake:
        yield fake


async def test_the_telegram_probe_dying_is_a_fatal_report(
        pconn: PConn, telegram: FakeTelegram, run_gateway: Any,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(TelegramAdapter, "_probe_loop", _boom)
    started = time.monotonic()
    await run_gateway(_config(pconn, api_base_url=telegram.base_url,
                              telegram_token=Secret(GATEWAY_TEST_TOKEN), poll_timeout=1.0))
    await _fatal_within(pconn, started)


@pytest.fixture
async def qq() -> AsyncIterator[FakeQQ]:
    async with FakeQQ(heartbeat_interval_ms=300) as fake:
        yield fake


@pytest.fixture
def qq_pconn(make_pconn: Callable[..., PConn]) -> PConn:
    return make_pconn("qqbot")


def _qq_config(pconn: PConn, fake: FakeQQ) -> GatewayConfig:
    return _config(pconn, api_base_url=fake.base_url, qq_app_id=DEFAULT_APP_ID,
                   qq_client_secret=Secret(DEFAULT_CLIENT_SECRET))


@pytest.mark.parametrize("target", ["worker", "heartbeat"])
async def test_a_qq_task_dying_is_a_fatal_report(
        qq_pconn: PConn, qq: FakeQQ, target: str,
        monkeypatch: pytest.MonkeyPatch) -> None:
    if target == "worker":
        monkeypatch.setattr(qqbot.QQBotAdapter, "_worker", _boom)
    else:
        def payload(*_: Any) -> Any:
            raise Injected("injected fault")
        monkeypatch.setattr(qqbot, "heartbeat_payload", payload)
    api = kube_config.new_client_from_config(config_file=str(qq_pconn.kubeconfig))
    reporter = StatusReporter(KubeStatusWriter(qq_pconn.namespace, qq_pconn.name,
                                               api_client=api), platform="qqbot",
                              pod_name="gw-0")
    stop = asyncio.Event()
    started = time.monotonic()
    task = asyncio.create_task(main.run(_qq_config(qq_pconn, qq), stop, reporter))
    try:
        await _fatal_within(qq_pconn, started)
    finally:
        stop.set()
        await asyncio.wait_for(task, 15)


@pytest.mark.parametrize("target", ["status writer", "loop heartbeat"])
async def test_the_status_writer_or_the_loop_heartbeat_dying_fails_liveness(
        pconn: PConn, telegram: FakeTelegram, target: str,
        monkeypatch: pytest.MonkeyPatch) -> None:
    config = _config(pconn, api_base_url=telegram.base_url,
                     telegram_token=Secret(GATEWAY_TEST_TOKEN), poll_timeout=1.0)
    api = kube_config.new_client_from_config(config_file=str(pconn.kubeconfig))
    reporter = StatusReporter(KubeStatusWriter(pconn.namespace, pconn.name, api_client=api),
                              platform="telegram", pod_name="gw-0")
    if target == "status writer":
        monkeypatch.setattr(status.StatusReporter, "_run", _boom)
    else:
        monkeypatch.setattr(health.HealthServer, "_beat", _boom)
    stop = asyncio.Event()
    started = time.monotonic()
    task = asyncio.create_task(main.run(config, stop, reporter))
    try:
        text = await _unhealthy_within(config.health_port, started)
        assert "stopped" in text and "injected fault" in text
    finally:
        stop.set()
        await asyncio.wait_for(task, 15)


async def test_a_connected_gateway_whose_loop_stops_moving_is_reported_stalled(
        pconn: PConn, telegram: FakeTelegram, run_gateway: Any,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A wedge no timeout catches (a bug: an await that never returns) while `connected`:
    the watchdog reports it (retryable: the operator restarts the pod)."""
    original, polls = ptb.Bot.get_updates, []

    async def wedged(self: Any, *args: Any, **kwargs: Any) -> Any:
        polls.append(1)
        if len(polls) > 2:
            await asyncio.Event().wait()
        return await original(self, *args, **kwargs)

    monkeypatch.setattr(ptb.Bot, "get_updates", wedged)
    await run_gateway(_config(pconn, api_base_url=telegram.base_url,
                              telegram_token=Secret(GATEWAY_TEST_TOKEN), poll_timeout=0.5,
                              probe_timeout=1.0, stall_after=3.0))
    await pconn.wait_state("connected")
    stalled = await pconn.wait_status(
        lambda s: (s.get("lastError") or {}).get("code") == "gateway_stalled", 10,
        "the stall reported")
    assert stalled["state"] == "fatal" and stalled["lastError"]["retryable"] is True
    assert "no progress for 3s" in stalled["lastError"]["message"]
    activity = stalled.get("lastActivity") or {}
    assert activity.get("platformAnsweredAt", "").endswith("Z")


async def test_a_held_message_is_progress_not_a_stall(
        pconn: PConn, telegram: FakeTelegram, run_gateway: Any) -> None:
    """The backend is down for longer than stall_after: the gateway holds the message and
    retries; that is BackendUnavailable, not a stalled gateway."""
    await run_gateway(_config(pconn, api_base_url=telegram.base_url,
                              telegram_token=Secret(GATEWAY_TEST_TOKEN), poll_timeout=0.5,
                              probe_timeout=1.0, stall_after=3.0, backend_echo=False,
                              backend_url=f"http://127.0.0.1:{free_port()}/relay",
                              backend_timeout=1.0))
    await pconn.wait_state("connected")
    telegram.inject_message(31, "held")
    await pconn.wait_status(lambda s: (s.get("lastError") or {}).get("code") == "backend_error",
                            10, "the backend error")
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        await pconn.wait_status(lambda s: s.get("state") == "fatal", 5, "no stall")
    assert time.monotonic() - started >= 5
