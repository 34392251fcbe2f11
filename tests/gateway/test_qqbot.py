"""The QQ Bot adapter's pure decisions: close codes, ladder, burst rule, token and heartbeat
timing, payloads and message parsing (no socket, no clock)."""

from __future__ import annotations

import pytest

from switchboard_gateway.config import GatewayConfig, QQReconnect, Secret
from switchboard_gateway.qqbot import QQBotSettings
from switchboard_gateway.qqbot_protocol import (
    QUICK_DISCONNECTS,
    Cause,
    Exhausted,
    HeartbeatMonitor,
    Next,
    Op,
    ReconnectLadder,
    RetryPlan,
    backoff_delay,
    classify_close,
    heartbeat_payload,
    heartbeat_period,
    identify_payload,
    parse_expires_in,
    parse_message,
    resume_payload,
    token_refresh_after,
)

# ------------------------------------------------------------------------------ close codes

FATAL = {
    4001: "qqbot_invalid_opcode",
    4002: "qqbot_invalid_payload",
    4010: "qqbot_invalid_shard",
    4011: "qqbot_sharding_required",
    4012: "qqbot_invalid_version",
    4013: "qqbot_intents_rejected",
    4014: "qqbot_intents_rejected",
    4914: "qqbot_delisted",
    4915: "qqbot_banned",
}


@pytest.mark.parametrize(("code", "error_code"), sorted(FATAL.items()))
def test_fatal_close_codes_never_reconnect(code: int, error_code: str) -> None:
    decision = classify_close(code)
    assert decision.fatal and decision.next is Next.FATAL
    assert decision.error_code == error_code
    assert decision.cause is Cause.CLOSE_CODE


@pytest.mark.parametrize("code", [4006, 4007, *range(4900, 4914)])
def test_session_dropping_close_codes_identify(code: int) -> None:
    decision = classify_close(code)
    assert decision.next is Next.IDENTIFY
    assert not decision.fatal and not decision.refresh_token and not decision.rate_limited
    assert decision.cause is Cause.CLOSE_CODE


def test_4009_resumes() -> None:
    decision = classify_close(4009)
    assert (decision.next, decision.error_code) == (Next.RESUME, "qqbot_session_timeout")
    assert not decision.refresh_token and not decision.rate_limited


def test_4008_waits_and_keeps_the_session() -> None:
    decision = classify_close(4008)
    assert decision.next is Next.RESUME and decision.rate_limited
    assert decision.cause is Cause.RATE_LIMITED and decision.error_code == "qqbot_rate_limited"


def test_4004_fetches_a_new_token_and_keeps_the_session() -> None:
    decision = classify_close(4004)
    assert decision.next is Next.RESUME and decision.refresh_token
    assert decision.error_code == "qqbot_token_invalid"


@pytest.mark.parametrize(("code", "error_code"), [
    (None, "qqbot_connection_lost"), (1006, "qqbot_connection_lost"),
    (1000, "qqbot_connection_closed"), (1001, "qqbot_connection_closed"),
    (1011, "qqbot_connection_closed"),
])
def test_network_level_closes_resume_and_count_as_errors(code: int | None,
                                                          error_code: str) -> None:
    decision = classify_close(code)
    assert decision.next is Next.RESUME and decision.error_code == error_code
    assert decision.cause is Cause.ERROR


@pytest.mark.parametrize("code", [4000, 4003, 4005, 4899, 4916, 4999])
def test_unknown_platform_close_codes_resume(code: int) -> None:
    decision = classify_close(code)
    assert decision.next is Next.RESUME and not decision.fatal
    assert decision.cause is Cause.CLOSE_CODE


def test_every_code_in_the_reference_table_is_decided_as_the_reference() -> None:
    # The reference's table, restated as sets: a regression in one branch shows here.
    never = {4001, 4002, *range(4010, 4015), 4914, 4915}
    identify = {4006, 4007, *range(4900, 4914)}
    for code in range(4000, 5000):
        decision = classify_close(code)
        if code in never:
            assert decision.next is Next.FATAL, code
        elif code in identify:
            assert decision.next is Next.IDENTIFY, code
        else:
            assert decision.next is Next.RESUME, code


# --------------------------------------------------------------------------------- back-off


@pytest.mark.parametrize(("attempt", "delay"), [
    (1, 2), (2, 5), (3, 10), (4, 30), (5, 60), (6, 60), (100, 60)])
def test_backoff_steps_last_repeats(attempt: int, delay: float) -> None:
    assert backoff_delay(attempt, (2, 5, 10, 30, 60)) == delay


def test_backoff_rejects_bad_input() -> None:
    with pytest.raises(ValueError):
        backoff_delay(0, (1,))
    with pytest.raises(ValueError):
        backoff_delay(1, ())


def plan(ladder: ReconnectLadder, cause: Cause = Cause.ERROR, *,
         rate_limited: bool = False) -> RetryPlan:
    result = ladder.failure(cause, "qqbot_x", "boom", rate_limited=rate_limited)
    assert isinstance(result, RetryPlan)
    return result


def test_ladder_counts_attempts_then_exhausts_with_retryable_cause_summary() -> None:
    ladder = ReconnectLadder(steps=(2, 5), max_attempts=3)
    assert [(p.attempt, p.delay) for p in (plan(ladder), plan(ladder, Cause.CLOSE_CODE),
                                             plan(ladder, Cause.RATE_LIMITED,
                                                  rate_limited=True))] == [
        (1, 2), (2, 5), (3, 5)]
    result = ladder.failure(Cause.RATE_LIMITED, "qqbot_rate_limited", "close 4008",
                            rate_limited=True)
    assert isinstance(result, Exhausted)
    assert result.attempts == 3 and result.last_cause is Cause.RATE_LIMITED
    text = result.message()
    assert "gave up after 3 reconnect attempts" in text
    assert "last failure rate limited (close 4008)" in text
    assert "2 rate limited (close 4008), 1 closed by the platform, 1 connection errors" in text


@pytest.mark.parametrize(("cause", "phrase"), [
    (Cause.RATE_LIMITED, "last failure rate limited"),
    (Cause.CLOSE_CODE, "last failure closed by the platform"),
    (Cause.ERROR, "last failure connection errors"),
])
def test_exhaustion_message_tells_the_three_causes_apart(cause: Cause, phrase: str) -> None:
    ladder = ReconnectLadder(steps=(1,), max_attempts=1)
    plan(ladder, cause)
    result = ladder.failure(cause, "c", "detail")
    assert isinstance(result, Exhausted)
    assert phrase in result.message()
    others = {c for c in Cause if c is not cause}
    assert all(f"last failure {c.value}" not in result.message() for c in others)


def test_rate_limited_waits_at_least_the_longest_step_or_the_configured_wait() -> None:
    ladder = ReconnectLadder(steps=(2, 5, 10, 30, 60))
    assert plan(ladder, rate_limited=True).delay == 60  # the reference's 60 s
    configured = ReconnectLadder(steps=(2, 5), rate_limit_delay=7)
    assert plan(configured, rate_limited=True).delay == 7
    assert plan(configured).delay == 5  # not rate limited: the plain ladder


def test_stable_connection_resets_the_ladder_quick_one_does_not() -> None:
    ladder = ReconnectLadder(steps=(1, 2, 3), quick_window=5)
    plan(ladder)
    plan(ladder)
    # Reached READY but dropped 1 s after opening: quick, the counter goes on.
    assert ladder.on_disconnect(opened_at=100.0, ready=True, now=101.0) is True
    assert plan(ladder).attempt == 3
    # Up for 6 s after READY: the platform is fine, the next failure is attempt 1 again.
    assert ladder.on_disconnect(opened_at=100.0, ready=True, now=106.0) is False
    assert plan(ladder).attempt == 1


def test_long_connection_that_never_got_ready_does_not_reset() -> None:
    ladder = ReconnectLadder(steps=(1,), quick_window=5)
    plan(ladder)
    ladder.on_disconnect(opened_at=0.0, ready=False, now=60.0)
    assert plan(ladder).attempt == 2


def test_three_quick_disconnects_in_a_row_are_a_burst() -> None:
    ladder = ReconnectLadder(steps=(1, 2, 3, 40), quick_window=5, burst_size=3)
    codes = []
    for i in range(4):
        ladder.on_disconnect(opened_at=10.0 * i, ready=True, now=10.0 * i + 1)
        p = plan(ladder)
        codes.append((p.error_code, p.delay, p.burst))
    assert codes == [("qqbot_x", 1, False), ("qqbot_x", 2, False),
                     (QUICK_DISCONNECTS, 40, True), (QUICK_DISCONNECTS, 40, True)]
    # A connection that stays up ends the burst.
    ladder.on_disconnect(opened_at=100.0, ready=True, now=120.0)
    assert not ladder.in_burst and plan(ladder) == RetryPlan(1, 1, "qqbot_x", False)


def test_failures_before_the_socket_opened_leave_the_burst_count_alone() -> None:
    ladder = ReconnectLadder(steps=(1,), burst_size=3)
    ladder.on_disconnect(opened_at=0.0, ready=False, now=1.0)
    ladder.on_disconnect(opened_at=2.0, ready=False, now=3.0)
    assert ladder.on_disconnect(opened_at=None, ready=False, now=4.0) is False
    assert ladder.quick_in_a_row == 2
    ladder.on_disconnect(opened_at=5.0, ready=True, now=5.5)
    assert ladder.in_burst


def test_ladder_validates_its_policy() -> None:
    with pytest.raises(ValueError):
        ReconnectLadder(steps=())
    with pytest.raises(ValueError):
        ReconnectLadder(max_attempts=0)


# ------------------------------------------------------------------------------------ token


@pytest.mark.parametrize(("value", "seconds"), [("7200", 7200.0), (" 60 ", 60.0), (30, 30.0)])
def test_expires_in_parsing(value: object, seconds: float) -> None:
    assert parse_expires_in(value) == seconds


@pytest.mark.parametrize("value", [None, "", "soon", "0", "-5", True, [1]])
def test_expires_in_rejects_garbage(value: object) -> None:
    with pytest.raises(ValueError):
        parse_expires_in(value)


@pytest.mark.parametrize(("lifetime", "after"), [
    (7200, 7140),  # 60 s before expiry
    (300, 240),  # 60 s before == 80 %
    (100, 80),  # 80 %: refreshing 60 s before would waste most of a short token
    (10, 8),
    (1, 0.8),
])
def test_token_refresh_timing(lifetime: float, after: float) -> None:
    assert token_refresh_after(lifetime) == pytest.approx(after)
    assert token_refresh_after(lifetime) < lifetime


# -------------------------------------------------------------------------------- heartbeat


def test_heartbeat_period_is_0_8_of_the_interval() -> None:
    assert heartbeat_period(41250) == pytest.approx(33.0)
    with pytest.raises(ValueError):
        heartbeat_period(0)


def test_missing_ack_for_two_intervals_is_a_dead_peer() -> None:
    monitor = HeartbeatMonitor(interval=1.0, factor=2.0, last_ack=10.0)
    assert not monitor.overdue(11.9)
    monitor.ack(11.0)
    assert not monitor.overdue(12.9) and monitor.deadline == 13.0
    assert monitor.overdue(13.0)


# --------------------------------------------------------------------------------- payloads


def test_identify_resume_and_heartbeat_payloads() -> None:
    ident = identify_payload("tok", 1107300352)
    assert ident["op"] == Op.IDENTIFY == 2
    assert ident["d"] == {"token": "QQBot tok", "intents": 1107300352, "shard": [0, 1],
                          "properties": ident["d"]["properties"]}  # type: ignore[index]
    assert resume_payload("tok", "sess", 42) == {
        "op": 6, "d": {"token": "QQBot tok", "session_id": "sess", "seq": 42}}
    assert resume_payload("tok", "sess", None)["d"]["seq"] == 0  # type: ignore[index]
    assert heartbeat_payload(None) == {"op": 1, "d": None}
    assert heartbeat_payload(7) == {"op": 1, "d": 7}


def test_parse_c2c_and_group_messages() -> None:
    c2c = parse_message("C2C_MESSAGE_CREATE", {
        "author": {"id": "U1", "user_openid": "U1"}, "content": "hi", "id": "M1",
        "timestamp": "2026-01-01T20:00:00+08:00"})
    assert c2c is not None and (c2c.scene, c2c.chat_id, c2c.sender_id, c2c.text) == (
        "c2c", "U1", "U1", "hi")
    assert c2c.reply_path == "/v2/users/U1/messages"
    group = parse_message("GROUP_AT_MESSAGE_CREATE", {
        "author": {"id": "U2", "member_openid": "U2"}, "content": " hello", "id": "M2",
        "group_openid": "G1", "timestamp": "2026-01-01T20:00:00+08:00"})
    assert group is not None and (group.scene, group.chat_id, group.sender_id, group.text) == (
        "group", "G1", "U2", "hello")
    assert group.reply_path == "/v2/groups/G1/messages"
    assert parse_message("GUILD_CREATE", {"id": "x"}) is None
    assert parse_message("C2C_MESSAGE_CREATE", {"content": "no id"}) is None
    assert parse_message("C2C_MESSAGE_CREATE", "not a dict") is None


# --------------------------------------------------------------------------------- settings


def test_settings_from_gateway_config() -> None:
    config = GatewayConfig(
        connection="bot", namespace="ns", platform="qqbot", pod_name="p",
        api_base_url="http://127.0.0.1:1/", qq_app_id="102000001",
        qq_client_secret=Secret("fakeClientSecret0123456789abcdef"),
        qq_reconnect=QQReconnect(7, (0.5, 1.0)), qq_intents=33554432)
    settings = QQBotSettings.from_config(config, heartbeat_ack_timeout_factor=3.0)
    assert (settings.connection, settings.app_id, settings.max_attempts, settings.delays,
            settings.intents, settings.heartbeat_ack_timeout_factor) == (
        "bot", "102000001", 7, (0.5, 1.0), 33554432, 3.0)
    assert settings.token_base == settings.api_base == "http://127.0.0.1:1"
    assert "fakeClientSecret" not in repr(settings)
    default = QQBotSettings.from_config(GatewayConfig(
        connection="bot", namespace="ns", platform="qqbot", pod_name="p",
        qq_app_id="1", qq_client_secret=Secret("fakeClientSecret0123456789abcdef")))
    assert default.token_base == "https://bots.qq.com"
    assert default.api_base == "https://api.sgroup.qq.com"
    assert default.intents == 1107300352 and default.max_attempts == 100
    with pytest.raises(ValueError):
        QQBotSettings.from_config(GatewayConfig(
            connection="bot", namespace="ns", platform="qqbot", pod_name="p"))
