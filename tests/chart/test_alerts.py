"""The chart's alert rules checked by the real promtool: `check rules`, and `test rules` on the
timelines a real outage produces.

The outage timeline is not written by hand: it follows the project's own ladders (the gateway's
reconnect delays, the operator's restart back-off, the circuit breaker's threshold) with their
defaults, and turns each phase into the Ready reason the operator exports in
``switchboard_connection_ready`` / ``switchboard_connection_needs_person``. A reason that ends
gets a staleness marker, as a real scrape of a removed series does.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
import yaml

from switchboard_gateway.config import TelegramReconnect
from switchboard_operator.backoff import restart_delay
from switchboard_operator.circuit import CircuitPolicy
from switchboard_operator.conditions import Reason, needs_person
from switchboard_testkit.binaries import REPO, Binaries

CHART = REPO / "helm" / "switchboard"
SCRAPE = 30  # seconds: the ServiceMonitor's default interval
NOT_READY_FOR = 30  # minutes: the chart's default notReadyForMinutes
Timeline = list[tuple[float, Reason]]  # (second the phase starts, Ready's reason)


def rendered_rules(binaries: Binaries, tmp: Path) -> tuple[Path, dict[str, dict[str, Any]]]:
    out = subprocess.run(
        [str(binaries.helm), "template", "sb", str(CHART), "--namespace", "switchboard-system",
         "--set", "metrics.prometheusRule.enabled=true",
         "--show-only", "templates/prometheusrule.yaml"],
        check=True, text=True, capture_output=True).stdout
    groups = yaml.safe_load(out)["spec"]["groups"]
    path = tmp / "rules.yaml"
    path.write_text(yaml.safe_dump({"groups": groups}))
    rules = {r["alert"]: r for g in groups for r in g["rules"] if "alert" in r}
    return path, rules


def telegram_outage(minutes: float) -> Timeline:
    """Ready's reasons while the platform is down for ``minutes`` (defaults everywhere), then
    Connected. A gateway walks its reconnect ladder (Retrying), gives up with a retryable fatal
    (RestartScheduled for the operator's back-off), and its replacement starts (Connecting)."""
    ladder = TelegramReconnect()
    walk = sum(ladder.delay(n) for n in range(1, ladder.max_attempts + 1))
    timeline: Timeline = []
    t, failures = 0.0, 0
    while t < minutes * 60:
        timeline += [(t, Reason.CONNECTING), (t + 5, Reason.RETRYING)]
        t += 5 + walk
        failures += 1
        assert failures < CircuitPolicy().failure_threshold, "the circuit would open: model it"
        timeline.append((t, Reason.RESTART_SCHEDULED))
        t += restart_delay(failures)
    return [(s, r) for s, r in timeline if s < minutes * 60] + [(minutes * 60, Reason.CONNECTED)]


def reason_at(timeline: Timeline, second: float) -> Reason:
    return [r for s, r in timeline if s <= second][-1]


def ready_series(namespace: str, connection: str, timeline: Timeline,
                 minutes: float) -> list[dict[str, str]]:
    """promtool input series of both gauges, sampled every SCRAPE seconds."""
    samples = [reason_at(timeline, i * SCRAPE) for i in range(int(minutes * 60 / SCRAPE) + 1)]
    out = []
    for reason in dict.fromkeys(samples):
        ready = "1" if reason == Reason.CONNECTED else "0"
        person = "1" if needs_person("True" if ready == "1" else "False", reason) else "0"
        for metric, value in (("switchboard_connection_ready", ready),
                              ("switchboard_connection_needs_person", person)):
            values, was = [], False
            for current in samples:
                now = current == reason
                values.append(value if now else ("stale" if was else "_"))
                was = now
            labels = f'namespace="{namespace}",connection="{connection}",reason="{reason}"'
            out.append({"series": f"{metric}{{{labels}}}", "values": " ".join(values)})
    return out


def expected(rule: dict[str, Any], labels: dict[str, str], reason: str | None = None,
             ) -> dict[str, Any]:
    """The alert promtool must see: the rule's labels plus ``labels``, its annotations with
    $labels filled in (and the queried Ready reason, for the one annotation that asks)."""
    def fill(text: str) -> str:
        text = re.sub(r"\{\{ with .*? \| query \}\}(.*?)\{\{ \. \| first \| label \"reason\" \}\}"
                      r"(.*?)\{\{ end \}\}",
                      lambda m: f"{m[1]}{reason}{m[2]}" if reason else "", text)
        return re.sub(r"\{\{ \$labels\.(\w+) \}\}", lambda m: all_labels[m[1]], text)
    all_labels = {**rule["labels"], **labels}
    return {"exp_labels": all_labels,
            "exp_annotations": {k: fill(v) for k, v in rule["annotations"].items()}}


def promtool_test(binaries: Binaries, tmp: Path, rules: Path,
                  tests: Sequence[dict[str, Any]]) -> None:
    spec = tmp / "test.yaml"
    spec.write_text(yaml.safe_dump({"rule_files": [str(rules)], "evaluation_interval": "1m",
                                    "tests": list(tests)}, width=10_000))
    result = subprocess.run([str(binaries.promtool), "test", "rules", str(spec)],
                            text=True, capture_output=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.fixture
def rules(binaries: Binaries, tmp_path: Path) -> tuple[Path, dict[str, dict[str, Any]]]:
    return rendered_rules(binaries, tmp_path)


def test_promtool_check_rules_is_clean(binaries: Binaries,
                                       rules: tuple[Path, dict[str, Any]]) -> None:
    result = subprocess.run([str(binaries.promtool), "check", "rules", str(rules[0])],
                            text=True, capture_output=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 5 rules found" in result.stdout, result.stdout


def test_a_60_minute_outage_alerts_by_30_minutes_and_resolves(
        binaries: Binaries, tmp_path: Path, rules: tuple[Path, dict[str, Any]]) -> None:
    path, by_name = rules
    outage = telegram_outage(60)
    # The ladder really does cross retrying -> fatal (restart) -> retrying inside the window
    # that used to reset the old alert's `for:`.
    assert {r for s, r in outage if s < NOT_READY_FOR * 60} >= {
        Reason.RETRYING, Reason.RESTART_SCHEDULED, Reason.CONNECTING}
    bot = {"namespace": "team-a", "connection": "bot"}
    fire_at = NOT_READY_FOR + 1  # `for:` plus one evaluation
    quiet = [{"eval_time": f"{m}m", "alertname": a, "exp_alerts": []}
             for m in (10, 29, 45, 59) for a in ("SwitchboardConnectionNeedsPerson",
                                                 "SwitchboardCircuitOpen")]
    promtool_test(binaries, tmp_path, path, [{
        "interval": f"{SCRAPE}s",
        "input_series": [*ready_series("team-a", "bot", outage, 70),
                         {"series": 'switchboard_circuit_state{namespace="team-a",'
                                    'connection="bot"}', "values": "0x140"}],
        "alert_rule_test": [
            {"eval_time": f"{NOT_READY_FOR - 2}m", "alertname": "SwitchboardConnectionNotReady",
             "exp_alerts": []},
            *({"eval_time": f"{m}m", "alertname": "SwitchboardConnectionNotReady",
               "exp_alerts": [expected(by_name["SwitchboardConnectionNotReady"], bot,
                                       reason_at(outage, m * 60))]}
              for m in (fire_at, 45, 59)),
            {"eval_time": "62m", "alertname": "SwitchboardConnectionNotReady", "exp_alerts": []},
            *quiet,
        ]}])


def test_an_open_circuit_keeps_alerting_through_a_failing_probe(
        binaries: Binaries, tmp_path: Path, rules: tuple[Path, dict[str, Any]]) -> None:
    path, by_name = rules
    bot = {"namespace": "team-a", "connection": "bot"}
    # closed 2m, open 5m, half-open 2m (the probe fails), open 5m, half-open 2m (connects): closed.
    phases = "0x4 2x10 1x4 2x10 1x4 0x10"
    promtool_test(binaries, tmp_path, path, [{
        "interval": f"{SCRAPE}s",
        "input_series": [{"series": 'switchboard_circuit_state{namespace="team-a",'
                                    'connection="bot"}', "values": phases}],
        "alert_rule_test": [
            *({"eval_time": f"{m}m", "alertname": "SwitchboardCircuitOpen",
               "exp_alerts": [expected(by_name["SwitchboardCircuitOpen"], bot)]}
              for m in (4, 8, 10, 14, 16, 18)),  # 8m-10m, 16m-18m: a half-open probe
            {"eval_time": "20m", "alertname": "SwitchboardCircuitOpen", "exp_alerts": []},
        ]}])


@pytest.mark.parametrize("reason", [Reason.SECRET_MISSING, Reason.CREDENTIALS_INVALID,
                                    Reason.POLICY_VIOLATION, Reason.POLLING_CONFLICT])
def test_the_critical_alert_fires_for_what_a_person_must_fix_and_resolves(
        binaries: Binaries, tmp_path: Path, rules: tuple[Path, dict[str, Any]],
        reason: Reason) -> None:
    path, by_name = rules
    bot = {"namespace": "team-a", "connection": "bot"}
    broken: Timeline = [(0, reason), (40 * 60, Reason.CONNECTED)]
    promtool_test(binaries, tmp_path, path, [{
        "interval": f"{SCRAPE}s",
        "input_series": ready_series("team-a", "bot", broken, 50),
        "alert_rule_test": [
            {"eval_time": "4m", "alertname": "SwitchboardConnectionNeedsPerson", "exp_alerts": []},
            *({"eval_time": f"{m}m", "alertname": "SwitchboardConnectionNeedsPerson",
               "exp_alerts": [expected(by_name["SwitchboardConnectionNeedsPerson"],
                                       {**bot, "reason": str(reason)})]} for m in (6, 35)),
            # Paged already: the warning does not fire on top of it.
            {"eval_time": "35m", "alertname": "SwitchboardConnectionNotReady", "exp_alerts": []},
            {"eval_time": "42m", "alertname": "SwitchboardConnectionNeedsPerson",
             "exp_alerts": []},
        ]}])


@pytest.mark.parametrize("reason", [Reason.RETRYING, Reason.RESTART_SCHEDULED,
                                    Reason.CIRCUIT_OPEN, Reason.CIRCUIT_HALF_OPEN,
                                    Reason.CONNECTING, Reason.BACKEND_UNAVAILABLE])
def test_a_retryable_reason_never_pages(binaries: Binaries, tmp_path: Path,
                                        rules: tuple[Path, dict[str, Any]],
                                        reason: Reason) -> None:
    path, by_name = rules
    bot = {"namespace": "team-a", "connection": "bot"}
    promtool_test(binaries, tmp_path, path, [{
        "interval": f"{SCRAPE}s",
        "input_series": ready_series("team-a", "bot", [(0, reason)], 40),
        "alert_rule_test": [
            {"eval_time": "35m", "alertname": "SwitchboardConnectionNeedsPerson",
             "exp_alerts": []},
            {"eval_time": "35m", "alertname": "SwitchboardConnectionNotReady",
             "exp_alerts": [expected(by_name["SwitchboardConnectionNotReady"], bot, reason)]},
        ]}])


def test_operator_down_fires_when_its_target_is_down_or_gone_and_resolves(
        binaries: Binaries, tmp_path: Path, rules: tuple[Path, dict[str, Any]]) -> None:
    path, by_name = rules
    job = "sb-switchboard-metrics"  # the chart's Service: the job a ServiceMonitor gives it
    down = expected(by_name["SwitchboardOperatorDown"], {})
    promtool_test(binaries, tmp_path, path, [{
        # up 5m, down 10m, up again 10m; then the target is gone from discovery (absent).
        "interval": "1m",
        "input_series": [{"series": f'up{{job="{job}",namespace="switchboard-system"}}',
                          "values": "1x5 0x10 1x10"}],
        "alert_rule_test": [
            {"eval_time": "4m", "alertname": "SwitchboardOperatorDown", "exp_alerts": []},
            {"eval_time": "12m", "alertname": "SwitchboardOperatorDown", "exp_alerts": [down]},
            {"eval_time": "20m", "alertname": "SwitchboardOperatorDown", "exp_alerts": []},
            {"eval_time": "40m", "alertname": "SwitchboardOperatorDown", "exp_alerts": [down]},
        ]}])


def test_refused_webhook_requests_alert_when_they_keep_coming_not_for_a_stray_one(
        binaries: Binaries, tmp_path: Path, rules: tuple[Path, dict[str, Any]]) -> None:
    path, by_name = rules
    alert = "SwitchboardWebhookRefusingRequests"

    def refused(connection: str, values: str) -> dict[str, str]:
        return {"series": "switchboard_gateway_webhook_refused_total{"
                          f'namespace="team-a",connection="{connection}",pod="{connection}-1",'
                          f'platform="telegram",reason="secret_token"}}', "values": values}

    hook = {"namespace": "team-a", "connection": "hook", "reason": "secret_token"}
    promtool_test(binaries, tmp_path, path, [{
        "interval": f"{SCRAPE}s",
        # "stray": three forged requests once; "hook": one every scrape for 30 minutes.
        "input_series": [refused("stray", "0 3x100"), refused("hook", "0+1x60 60x60")],
        "alert_rule_test": [
            {"eval_time": "3m", "alertname": alert, "exp_alerts": []},
            *({"eval_time": f"{m}m", "alertname": alert,
               "exp_alerts": [expected(by_name[alert], hook)]} for m in (9, 20, 30)),
            {"eval_time": "45m", "alertname": alert, "exp_alerts": []},
        ]}])
