"""Gateway configuration from the environment the operator gives the pod (docs/design.md).

Everything is validated up front with messages that name the variable; credentials are wrapped in
:class:`Secret` so a stray ``repr(config)`` or f-string can never print them.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from switchboard_contract import Delivery
from switchboard_contract.backoff import doubling
from switchboard_gateway import redact

PLATFORMS = ("telegram", "qqbot")
# Telegram's alphabet for setWebhook's secret_token.
SECRET_TOKEN_SHAPE = re.compile(r"[A-Za-z0-9_-]{1,256}")


class ConfigError(ValueError):
    """The environment is wrong; the message names the variable (and never holds a secret)."""


class Secret:
    """A credential. ``str()``/``repr()`` show ``***``; only :meth:`reveal` gives the value.

    Creating one registers the value with :mod:`redact`, so it is scrubbed from every log line,
    status message and exception text the gateway produces from then on.
    """

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value
        redact.register_secret(value)

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(("Secret", self._value))

    def __bool__(self) -> bool:
        return bool(self._value)


@dataclass(frozen=True)
class TelegramReconnect:
    """spec.telegram.reconnect plus the 409 ladder.

    Network ladder: the delay before retry n is min(initial * 2^(n-1), max). The conflict ladder
    waits min(initial * (2n + 2), max): 20, 30, 40, 50, 60 s with the defaults (the reference's
    delays), and shrinks with the same two knobs in tests.
    """

    max_attempts: int = 10
    initial_delay: float = 5.0
    max_delay: float = 60.0
    conflict_retries: int = 5

    def delay(self, attempt: int) -> float:
        return doubling(self.initial_delay, attempt, self.max_delay)

    def conflict_delay(self, attempt: int) -> float:
        return min(self.initial_delay * (2 * attempt + 2), self.max_delay)


@dataclass(frozen=True)
class QQReconnect:
    """spec.qqbot.reconnect: attempt n waits delays[n-1] (the last entry repeats)."""

    max_attempts: int = 100
    delays: tuple[float, ...] = (2.0, 5.0, 10.0, 30.0, 60.0)

    def delay(self, attempt: int) -> float:
        return self.delays[min(attempt, len(self.delays)) - 1]


@dataclass(frozen=True)
class LeaseTiming:
    """The poller Lease's timings (client-go's roles, doubled: a gateway restart costs a
    platform reconnect, an operator fail-over only a pause). A holder that has not renewed
    within ``renew_deadline`` stops polling, at least ``seconds - renew_deadline`` before
    another pod may take the expired Lease over."""

    seconds: int = 30
    renew_deadline: float = 20.0
    renew_period: float = 5.0
    wait_period: float = 1.0  # how often a waiting pod looks again

    def problem(self) -> str | None:
        if not 0 < self.renew_period < self.renew_deadline < self.seconds:
            return ("SWITCHBOARD_POLLER_RENEW_PERIOD < SWITCHBOARD_POLLER_RENEW_DEADLINE < "
                    "SWITCHBOARD_POLLER_LEASE_SECONDS is required")
        return None


@dataclass(frozen=True)
class GatewayConfig:
    connection: str
    namespace: str
    platform: str
    pod_name: str
    pod_uid: str = ""
    api_base_url: str | None = None
    backend_url: str | None = None
    backend_echo: bool = False
    backend_timeout: float = 10.0
    telegram_token: Secret | None = None
    # Where the token comes from, for messages (set by the operator: "Secret x, key y").
    telegram_token_source: str = "SWITCHBOARD_TELEGRAM_TOKEN"
    telegram_reconnect: TelegramReconnect = field(default_factory=TelegramReconnect)
    qq_app_id: str | None = None
    qq_client_secret: Secret | None = None
    qq_reconnect: QQReconnect = field(default_factory=QQReconnect)
    qq_intents: int | None = None
    bind_address: str = "0.0.0.0"
    health_port: int = 8080
    metrics_port: int = 9090
    # Telegram tuning (not in the CRD; settable through spec.gateway.env).
    probe_interval: float = 90.0  # getMe liveness probe, as the reference gateway
    probe_timeout: float = 15.0
    poll_timeout: float = 30.0  # getUpdates long-poll timeout
    # A connected gateway whose loop moves not for this long reports fatal gateway_stalled.
    stall_after: float = 300.0
    # The poller fence (poller_lease.py): the Lease this pod must hold to reach the platform.
    # None (running by hand, in-process tests): no fence.
    poller_lease: str | None = None
    poller_lease_timing: LeaseTiming = field(default_factory=LeaseTiming)
    log_level: str = "INFO"
    # Webhook delivery (spec.delivery): the platform posts to webhook_url, routed to
    # webhook_port; getWebhookInfo every webhook_info_interval says whether that works.
    delivery: str = Delivery.POLLING
    webhook_url: str | None = None
    webhook_port: int = 8443
    webhook_max_connections: int = 40
    webhook_secret_token: Secret | None = None
    webhook_info_interval: float = 30.0
    # How long a webhook gateway waits for its first readiness probe before setWebhook.
    webhook_ready_wait: float = 15.0

    @property
    def connection_ref(self) -> str:
        return f"{self.namespace}/{self.connection}"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> GatewayConfig:
        env = os.environ if env is None else env
        errors: list[str] = []

        def get(name: str, default: str | None = None) -> str | None:
            value = env.get(name)
            return default if value is None or value.strip() == "" else value.strip()

        def need(name: str) -> str:
            value = get(name)
            if value is None:
                errors.append(f"{name} is required")
                return ""
            return value

        def number(name: str, default: float, *, minimum: float = 0.0) -> float:
            raw = get(name)
            if raw is None:
                return default
            try:
                value = float(raw)
            except ValueError:
                errors.append(f"{name} must be a number, got {raw!r}")
                return default
            if not math.isfinite(value) or value < minimum:
                errors.append(f"{name} must be >= {minimum:g}, got {raw!r}")
                return default
            return value

        def port(name: str, default: int) -> int:
            value = number(name, default)
            if value != int(value) or not 0 <= value <= 65535:
                errors.append(f"{name} must be a port number (0-65535)")
                return default
            return int(value)

        connection = need("SWITCHBOARD_CONNECTION")
        namespace = need("SWITCHBOARD_NAMESPACE")
        platform = need("SWITCHBOARD_PLATFORM")
        if platform and platform not in PLATFORMS:
            errors.append(f"SWITCHBOARD_PLATFORM must be one of {', '.join(PLATFORMS)}, "
                          f"got {platform!r}")

        api_base_url = get("SWITCHBOARD_API_BASE_URL")
        if api_base_url is not None and not _is_http_url(api_base_url):
            errors.append("SWITCHBOARD_API_BASE_URL must be an absolute http(s) URL")

        backend_url = get("SWITCHBOARD_BACKEND_URL")
        echo_raw = (get("SWITCHBOARD_BACKEND_ECHO", "false") or "false").lower()
        if echo_raw not in ("true", "false", "1", "0", "yes", "no"):
            errors.append(f"SWITCHBOARD_BACKEND_ECHO must be true or false, got {echo_raw!r}")
        backend_echo = echo_raw in ("true", "1", "yes")
        if backend_echo == (backend_url is not None):
            errors.append("exactly one of SWITCHBOARD_BACKEND_URL and "
                          "SWITCHBOARD_BACKEND_ECHO=true is required")
        elif backend_url is not None and not _is_http_url(backend_url):
            errors.append("SWITCHBOARD_BACKEND_URL must be an absolute http(s) URL")
        backend_timeout = number("SWITCHBOARD_BACKEND_TIMEOUT", 10.0, minimum=0.001)

        reconnect = _reconnect_json(get("SWITCHBOARD_RECONNECT"), errors)
        telegram_token: Secret | None = None
        token_source = get("SWITCHBOARD_TELEGRAM_TOKEN_SOURCE") or "SWITCHBOARD_TELEGRAM_TOKEN"
        qq_app_id: str | None = None
        qq_secret: Secret | None = None
        telegram_reconnect = TelegramReconnect()
        qq_reconnect = QQReconnect()
        qq_intents: int | None = None
        if platform == "telegram":
            # Empty or malformed is the adapter's to report, as invalid credentials naming the
            # Secret and key, not a configuration error naming a variable nobody set.
            telegram_token = Secret(get("SWITCHBOARD_TELEGRAM_TOKEN") or "")
            telegram_reconnect = _telegram_reconnect(
                reconnect, get("SWITCHBOARD_TELEGRAM_CONFLICT_RETRIES"), errors)
        elif platform == "qqbot":
            qq_app_id = need("SWITCHBOARD_QQ_APP_ID")
            secret = need("SWITCHBOARD_QQ_CLIENT_SECRET")
            qq_secret = Secret(secret) if secret else None
            qq_reconnect = _qq_reconnect(reconnect, errors)
            intents = get("SWITCHBOARD_QQ_INTENTS")
            if intents is not None:
                try:
                    qq_intents = int(intents)
                except ValueError:
                    errors.append("SWITCHBOARD_QQ_INTENTS must be an integer")

        delivery = get("SWITCHBOARD_DELIVERY", Delivery.POLLING) or Delivery.POLLING
        webhook_url: str | None = None
        webhook_token: Secret | None = None
        if delivery not in tuple(Delivery):
            errors.append(f"SWITCHBOARD_DELIVERY must be one of {', '.join(Delivery)}, "
                          f"got {delivery!r}")
        elif delivery == Delivery.WEBHOOK:
            webhook_url = need("SWITCHBOARD_WEBHOOK_URL")
            if webhook_url and not _is_http_url(webhook_url):
                errors.append("SWITCHBOARD_WEBHOOK_URL must be an absolute http(s) URL")
            # Telegram's secret_token; QQ signs its callbacks with the bot secret instead.
            token = need("SWITCHBOARD_WEBHOOK_SECRET_TOKEN") if platform == "telegram" else ""
            if token and not SECRET_TOKEN_SHAPE.fullmatch(token):
                errors.append("SWITCHBOARD_WEBHOOK_SECRET_TOKEN must be 1-256 characters of "
                              "A-Z, a-z, 0-9, _ and -")
            webhook_token = Secret(token) if token else None
        max_connections = number("SWITCHBOARD_WEBHOOK_MAX_CONNECTIONS", 40, minimum=1)
        if max_connections != int(max_connections) or max_connections > 100:
            errors.append("SWITCHBOARD_WEBHOOK_MAX_CONNECTIONS must be a whole number 1-100")

        default_timing = LeaseTiming()
        lease_seconds = number("SWITCHBOARD_POLLER_LEASE_SECONDS", default_timing.seconds,
                               minimum=1)
        if lease_seconds != int(lease_seconds):
            errors.append("SWITCHBOARD_POLLER_LEASE_SECONDS must be a whole number")
        timing = LeaseTiming(
            seconds=int(lease_seconds),
            renew_deadline=number("SWITCHBOARD_POLLER_RENEW_DEADLINE",
                                  default_timing.renew_deadline, minimum=0.001),
            renew_period=number("SWITCHBOARD_POLLER_RENEW_PERIOD", default_timing.renew_period,
                                minimum=0.001),
            wait_period=number("SWITCHBOARD_POLLER_WAIT_PERIOD", default_timing.wait_period,
                               minimum=0.001))
        if (problem := timing.problem()) is not None:
            errors.append(problem)

        config = cls(
            connection=connection,
            namespace=namespace,
            platform=platform,
            pod_name=get("SWITCHBOARD_POD_NAME") or os.environ.get("HOSTNAME", "") or "",
            pod_uid=get("SWITCHBOARD_POD_UID") or "",
            api_base_url=api_base_url,
            backend_url=backend_url,
            backend_echo=backend_echo,
            backend_timeout=backend_timeout,
            telegram_token=telegram_token,
            telegram_token_source=token_source,
            telegram_reconnect=telegram_reconnect,
            qq_app_id=qq_app_id,
            qq_client_secret=qq_secret,
            qq_reconnect=qq_reconnect,
            qq_intents=qq_intents,
            bind_address=get("SWITCHBOARD_BIND_ADDRESS", "0.0.0.0") or "0.0.0.0",
            health_port=port("SWITCHBOARD_HEALTH_PORT", 8080),
            metrics_port=port("SWITCHBOARD_METRICS_PORT", 9090),
            probe_interval=number("SWITCHBOARD_PROBE_INTERVAL", 90.0, minimum=0.1),
            probe_timeout=number("SWITCHBOARD_PROBE_TIMEOUT", 15.0, minimum=0.1),
            poll_timeout=number("SWITCHBOARD_POLL_TIMEOUT", 30.0),
            stall_after=number("SWITCHBOARD_STALL_AFTER", 300.0, minimum=1.0),
            poller_lease=get("SWITCHBOARD_POLLER_LEASE"),
            poller_lease_timing=timing,
            log_level=(get("SWITCHBOARD_LOG_LEVEL", "INFO") or "INFO").upper(),
            delivery=delivery,
            webhook_url=webhook_url,
            webhook_port=port("SWITCHBOARD_WEBHOOK_PORT", 8443),
            webhook_max_connections=int(max_connections),
            webhook_secret_token=webhook_token,
            webhook_info_interval=number("SWITCHBOARD_WEBHOOK_INFO_INTERVAL", 30.0,
                                         minimum=0.1),
            webhook_ready_wait=number("SWITCHBOARD_WEBHOOK_READY_WAIT", 15.0),
        )
        if config.stall_after <= config.poll_timeout + config.probe_timeout:
            errors.append("SWITCHBOARD_STALL_AFTER must be longer than SWITCHBOARD_POLL_TIMEOUT "
                          "plus SWITCHBOARD_PROBE_TIMEOUT (an idle long poll is not a stall)")
        if errors:
            raise ConfigError("invalid gateway configuration: " + "; ".join(errors))
        return config


def _is_http_url(value: str) -> bool:
    parts = urlsplit(value)
    return parts.scheme in ("http", "https") and bool(parts.hostname)


def _reconnect_json(raw: str | None, errors: list[str]) -> dict[str, Any]:
    if raw is None:
        return {}
    try:
        value = json.loads(raw)
    except ValueError:
        errors.append("SWITCHBOARD_RECONNECT must be a JSON object")
        return {}
    if not isinstance(value, dict):
        errors.append("SWITCHBOARD_RECONNECT must be a JSON object")
        return {}
    return value


def _positive(data: dict[str, Any], key: str, default: float, errors: list[str],
              *, integer: bool = False, minimum: float = 0.0) -> Any:
    value = data.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or value < minimum or (
            integer and value != int(value)) or not math.isfinite(value):
        kind = "an integer" if integer else "a number"
        errors.append(f"SWITCHBOARD_RECONNECT.{key} must be {kind} >= {minimum:g}")
        return default
    return int(value) if integer else float(value)


def _telegram_reconnect(data: dict[str, Any], conflict_env: str | None,
                        errors: list[str]) -> TelegramReconnect:
    d = TelegramReconnect()
    max_attempts = _positive(data, "maxAttempts", d.max_attempts, errors, integer=True, minimum=1)
    initial = _positive(data, "initialDelaySeconds", d.initial_delay, errors, minimum=0.001)
    maximum = _positive(data, "maxDelaySeconds", d.max_delay, errors, minimum=0.001)
    if maximum < initial:
        errors.append("SWITCHBOARD_RECONNECT.maxDelaySeconds must be >= initialDelaySeconds")
    # spec.telegram.conflictRetries: its own variable, or folded into the reconnect JSON.
    conflict = _positive(data, "conflictRetries", d.conflict_retries, errors, integer=True)
    if conflict_env is not None:
        try:
            conflict = int(conflict_env)
            if conflict < 0:
                raise ValueError
        except ValueError:
            errors.append("SWITCHBOARD_TELEGRAM_CONFLICT_RETRIES must be an integer >= 0")
    return TelegramReconnect(max_attempts, initial, maximum, conflict)


def _qq_reconnect(data: dict[str, Any], errors: list[str]) -> QQReconnect:
    d = QQReconnect()
    max_attempts = _positive(data, "maxAttempts", d.max_attempts, errors, integer=True, minimum=1)
    delays = data.get("delaySeconds", list(d.delays))
    if (not isinstance(delays, list) or not delays or any(
            isinstance(x, bool) or not isinstance(x, int | float) or x <= 0 for x in delays)):
        errors.append("SWITCHBOARD_RECONNECT.delaySeconds must be a non-empty list of "
                      "positive numbers")
        return QQReconnect(max_attempts, d.delays)
    return QQReconnect(max_attempts, tuple(float(x) for x in delays))
