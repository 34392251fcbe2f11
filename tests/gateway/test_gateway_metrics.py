"""What a gateway serves on /metrics: every labelled counter exported at 0 from the start,
and nothing promtool's linter objects to."""

from __future__ import annotations

import asyncio
import subprocess

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from switchboard_contract import DeadLetterReason, ErrorCode
from switchboard_gateway import metrics
from switchboard_gateway.adapter import State
from switchboard_gateway.health import HealthServer
from switchboard_testkit.binaries import Binaries


async def served_metrics() -> str:
    server = HealthServer(host="127.0.0.1", health_port=0, metrics_port=0,
                          ready=lambda: True, state=lambda: "connected")
    await server.start()
    try:
        async with aiohttp.ClientSession() as http, \
                http.get(f"http://127.0.0.1:{server.metrics_port}/metrics") as response:
            assert response.status == 200
            return await response.text()
    finally:
        await server.stop()


def samples(text: str) -> set[tuple[str, frozenset[tuple[str, str]]]]:
    """(sample name, label set) of every sample in the exposition."""
    return {(sample.name, frozenset(sample.labels.items()))
            for family in text_string_to_metric_families(text) for sample in family.samples}


def has(got: set[tuple[str, frozenset[tuple[str, str]]]], name: str, **labels: str) -> bool:
    return (name, frozenset(labels.items())) in got


async def test_labelled_counters_are_exported_at_zero_before_their_first_event() -> None:
    metrics.initialise("qqbot")
    got = samples(await served_metrics())
    for name in ("reconnect_attempts", "messages_received", "messages_sent",
                 "duplicate_messages"):
        assert has(got, f"switchboard_gateway_{name}_total", platform="qqbot"), name
    for reason in DeadLetterReason:
        assert has(got, "switchboard_gateway_dead_letters_total", platform="qqbot",
                   reason=reason.value), reason
    for code in (ErrorCode.BACKEND_ERROR, ErrorCode.QQ_BANNED, ErrorCode.QQ_HEARTBEAT_TIMEOUT):
        assert has(got, "switchboard_gateway_errors_total", platform="qqbot", code=code.value)
    # Only the platform's own codes (and the shared ones): no Telegram code on a QQ gateway.
    qq_codes = {dict(labels)["code"] for name, labels in got
                if name == "switchboard_gateway_errors_total"
                and dict(labels).get("platform") == "qqbot"}
    assert qq_codes and not any(c.startswith("telegram_") for c in qq_codes), sorted(qq_codes)
    assert has(got, "switchboard_gateway_backend_latency_seconds_count", platform="qqbot")
    assert has(got, "switchboard_gateway_status_writes_total", result="error")


def test_promtool_check_metrics_is_clean_on_the_gateway_exposition(binaries: Binaries) -> None:
    metrics.initialise("telegram")
    metrics.set_state("telegram", State.CONNECTED)
    text = asyncio.run(served_metrics())
    lint = subprocess.run([str(binaries.promtool), "check", "metrics"], input=text, text=True,
                          capture_output=True, timeout=30)
    assert lint.returncode == 0 and not lint.stdout.strip(), lint.stdout + lint.stderr
