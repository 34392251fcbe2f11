"""``switchboard-gateway``: one platform connection, reported honestly into its CR status.

Lifecycle:
- load the config (env), start health/metrics, the status reporter and the relay, then run the
  adapter for the platform until SIGTERM/SIGINT;
- FatalAdapterError (ladder exhausted, bad token, polling conflict): report `fatal` with the
  error and *stay alive*, serving /healthz (alive) and /readyz (not ready). Exiting would let the
  kubelet restart the container on its own CrashLoopBackOff schedule and the pod would flap
  between `connecting` and `fatal`; instead the operator reads `lastError.retryable` and decides
  (restart with its back-off, open the circuit, or wait for a person);
- SIGTERM: stop the adapter (bounded), write the final state (`disconnected`, unless `fatal`,
  which stays for the operator) and exit 0 well within the grace period.
An invalid environment is reported as a non-retryable fatal `gateway_config_invalid` when the
connection is known (so it shows in status); otherwise the process exits with 78 (EX_CONFIG).
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
from typing import Any

from switchboard_contract import Delivery, ErrorCode
from switchboard_gateway import metrics, poller_lease, redact
from switchboard_gateway.adapter import (
    Adapter,
    AdapterError,
    FatalAdapterError,
    Relay,
    State,
    StatusSink,
    supervise,
)
from switchboard_gateway.config import ConfigError, GatewayConfig
from switchboard_gateway.health import HealthServer, Readiness
from switchboard_gateway.poller_lease import PollerLease
from switchboard_gateway.progress import Progress
from switchboard_gateway.relay import make_relay
from switchboard_gateway.status import KubeStatusWriter, StatusReporter, load_api_client

log = logging.getLogger("switchboard.gateway")

EX_CONFIG = 78
ADAPTER_STOP_TIMEOUT = 5.0  # the pod's grace period is 30 s by default; we need far less
FINAL_WRITE_TIMEOUT = 5.0


def make_adapter(config: GatewayConfig, sink: StatusSink, relay: Relay,
                 lease: PollerLease | None = None,
                 readiness: Readiness | None = None) -> Adapter:
    """Adapters are imported lazily: a Telegram gateway never loads the QQ code and vice versa."""
    if config.platform == "telegram" and config.delivery == Delivery.WEBHOOK:
        from switchboard_gateway.telegram_webhook import TelegramWebhookAdapter

        return TelegramWebhookAdapter(config, sink, relay, readiness=readiness)
    if config.platform == "telegram":
        from switchboard_gateway.telegram import TelegramAdapter

        return TelegramAdapter(config, sink, relay,
                               poll_window=None if lease is None else lease.poll_window)
    if config.platform == "qqbot" and config.delivery == Delivery.WEBHOOK:
        from switchboard_gateway.qqbot_webhook import QQBotWebhookAdapter

        return QQBotWebhookAdapter(config, sink, relay, readiness=readiness)
    if config.platform == "qqbot":
        from switchboard_gateway.qqbot import QQBotAdapter

        return QQBotAdapter(config, sink, relay)
    raise ConfigError(f"unknown platform {config.platform!r}")


def setup_logging(level: str = "INFO") -> None:
    logging.basicConfig(
        level=getattr(logging, level, logging.INFO),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    redact.install()
    # PTB logs a traceback for every non-JSON error page (502 from nginx); the adapter reports
    # those errors itself, once, short and redacted.
    logging.getLogger("telegram.request.BaseRequest").setLevel(logging.CRITICAL)


async def run(config: GatewayConfig, stop: asyncio.Event | None = None,
              reporter: StatusReporter | None = None) -> int:
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        try:
            loop.add_signal_handler(signum, stop.set)
        except (NotImplementedError, RuntimeError, ValueError):
            pass  # not the main thread (in-process tests): the caller sets `stop`
    if reporter is None:
        writer = KubeStatusWriter(config.namespace, config.connection)
        reporter = StatusReporter(writer, platform=config.platform, pod_name=config.pod_name,
                                  pod_uid=config.pod_uid)
    await reporter.start()
    metrics.initialise(config.platform)
    readiness = Readiness(lambda: reporter.connected, lambda: reporter.state is State.FATAL)
    health = HealthServer(host=config.bind_address, health_port=config.health_port,
                          metrics_port=config.metrics_port, ready=readiness.ready,
                          on_ready=readiness.seen.set,
                          state=lambda: reporter.state.value if reporter.state else "")
    await health.start()
    if reporter.task is not None:
        health.vital(reporter.task)  # no status writer: nothing could say so but liveness
    log.info("gateway for %s (%s) up: health :%d, metrics :%d", config.connection_ref,
             config.platform, health.health_port, health.metrics_port)
    relay = make_relay(config)
    await relay.start()
    lease = _poller_lease(config)
    try:
        await _serve(config, reporter, relay, lease, stop, readiness)
    finally:
        if lease is not None:
            await lease.release()  # first: the adapter has stopped; the next pod may poll
        await relay.close()
        await reporter.close(State.DISCONNECTED, timeout=FINAL_WRITE_TIMEOUT)
        await health.stop()
        final = reporter.state.value if reporter.state else "-"
        log.info("gateway stopped (final state %s)", final)
    return 0


def _poller_lease(config: GatewayConfig) -> PollerLease | None:
    if config.poller_lease is None:
        return None  # run by hand or in-process: no fence (docs/gateway.md)
    return poller_lease.from_config(config.namespace, config.poller_lease, config.pod_name,
                                    config.poller_lease_timing, load_api_client())


async def _serve(config: GatewayConfig, reporter: StatusReporter, relay: Relay,
                 lease: PollerLease | None, stop: asyncio.Event,
                 readiness: Readiness | None = None) -> None:
    """Run the adapter while this pod holds the poller Lease; until ``stop``.

    A lost Lease (not renewed in time) stops the adapter and waits for the Lease again, with a
    fresh adapter once it is back: a pause in `connecting`, not a fatal, since nothing is wrong
    with the connection. A fatal keeps the Lease (and the pod alive) until the operator acts.
    """
    async def waiting(why: AdapterError | None) -> None:
        await reporter.report(State.CONNECTING, error=why)

    while True:
        if lease is not None and not await lease.acquire(stop, waiting):
            return
        lost = asyncio.Event()
        holder = None if lease is None else asyncio.create_task(_hold(lease, lost),
                                                                name="poller-lease")
        try:
            error = await _run_adapter(config, reporter, relay, stop, lost, lease, readiness)
            if error is None and lost.is_set() and not stop.is_set():
                await reporter.report(State.CONNECTING, error=AdapterError(
                    ErrorCode.LEASE_LOST, "the poller Lease was not renewed in time: polling "
                    "paused until this pod holds it again", True))
                continue
            if isinstance(error, FatalAdapterError):
                log.error("adapter gave up: %s (retryable=%s)", error.error.message,
                          error.error.retryable)
                attempt, max_attempts = reporter.attempts
                await reporter.report(State.FATAL, attempt=attempt, max_attempts=max_attempts,
                                      error=error.error)
            elif error is not None:  # a bug: still tell the operator, who restarts us
                log.error("adapter crashed: %s", redact.describe(error), exc_info=error)
                await reporter.report(State.FATAL, error=AdapterError(
                    ErrorCode.INTERNAL_ERROR, redact.describe(error), True))
            # Fatal: keep serving health until the operator acts (see module docstring).
            await stop.wait()
            return
        finally:
            if holder is not None:
                holder.cancel()
                await asyncio.gather(holder, return_exceptions=True)


async def _hold(lease: PollerLease, lost: asyncio.Event) -> None:
    try:
        await lease.hold()
    finally:
        lost.set()


async def _run_adapter(config: GatewayConfig, reporter: StatusReporter, relay: Relay,
                       stop: asyncio.Event, lost: asyncio.Event,
                       lease: PollerLease | None = None,
                       readiness: Readiness | None = None) -> BaseException | None:
    """One adapter, until it ends or ``stop`` or ``lost`` fires; what it failed with."""
    try:
        adapter = make_adapter(config, reporter, relay, lease, readiness)
    except Exception as exc:  # e.g. the adapter module failed to import
        return exc
    halt = asyncio.Event()
    halting = asyncio.create_task(_first_of(stop, lost, then=halt), name="adapter-halt")
    task = asyncio.create_task(adapter.run(halt), name=f"{config.platform}-adapter")
    stalls: list[FatalAdapterError] = []
    watchdog = _watch(adapter, config, reporter, task, stalls)
    try:
        await _wait_adapter(task, halt)
    finally:
        halting.cancel()
        if watchdog is not None:
            watchdog.cancel()
    error = task.exception() if task.done() and not task.cancelled() else None
    if stalls and not halt.is_set():
        error = stalls[0]
    return error


async def _first_of(*events: asyncio.Event, then: asyncio.Event) -> None:
    waits = [asyncio.create_task(e.wait()) for e in events]
    try:
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        then.set()
    finally:
        for w in waits:
            w.cancel()


def _watch(adapter: Any, config: GatewayConfig, reporter: StatusReporter,
           task: asyncio.Task[None], stalls: list[FatalAdapterError]
           ) -> asyncio.Task[None] | None:
    """The progress watchdog (progress.py): a connected adapter that stalls is cancelled and
    reported as a retryable fatal, for the operator to restart."""
    progress = getattr(adapter, "progress", None)
    if not isinstance(progress, Progress):
        return None

    def stall(error: FatalAdapterError) -> None:
        log.error("%s", error.error.message)
        stalls.append(error)
        task.cancel()

    # Supervised like the adapters' tasks: should the watchdog itself die, that is reported.
    return supervise(asyncio.create_task(progress.watch(
        config.stall_after, lambda: reporter.connected, stall), name="progress-watchdog"),
        stall, may_return=True)


async def _wait_adapter(task: asyncio.Task[None], stop: asyncio.Event) -> None:
    """Until the adapter ends; once stop fires, give it ADAPTER_STOP_TIMEOUT, then cancel it."""
    stopping = asyncio.create_task(stop.wait())
    try:
        await asyncio.wait((task, stopping), return_when=asyncio.FIRST_COMPLETED)
        if not task.done():
            await asyncio.wait((task,), timeout=ADAPTER_STOP_TIMEOUT)
    finally:
        stopping.cancel()
        if not task.done():
            log.warning("adapter did not stop within %.0fs; cancelling it", ADAPTER_STOP_TIMEOUT)
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


async def report_config_error(config_env: dict[str, str], error: ConfigError) -> int:
    """Show a broken configuration in status (non-retryable) and wait for SIGTERM."""
    name, namespace = config_env.get("SWITCHBOARD_CONNECTION"), config_env.get(
        "SWITCHBOARD_NAMESPACE")
    if not name or not namespace:
        return EX_CONFIG
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    try:
        writer = KubeStatusWriter(namespace, name)
    except Exception as exc:
        log.error("cannot reach the API server to report it: %s", redact.describe(exc))
        return EX_CONFIG
    reporter = StatusReporter(writer, platform=config_env.get("SWITCHBOARD_PLATFORM", "unknown"),
                              pod_name=config_env.get("SWITCHBOARD_POD_NAME", ""),
                              pod_uid=config_env.get("SWITCHBOARD_POD_UID", ""))
    await reporter.start()
    await reporter.restore(timeout=2.0)  # keep e.g. status.qqSession for the fixed pod
    await reporter.report(State.FATAL, error=AdapterError(
        ErrorCode.CONFIG_INVALID, str(error), False))
    await stop.wait()
    await reporter.close(None)
    return 0


def main() -> None:
    setup_logging(os.environ.get("SWITCHBOARD_LOG_LEVEL", "INFO").upper())
    os.environ.setdefault("PTB_TIMEDELTA", "true")  # PTB 22: time periods as timedelta
    try:
        config = GatewayConfig.from_env()
    except ConfigError as exc:
        log.error("%s", exc)
        sys.exit(asyncio.run(report_config_error(dict(os.environ), exc)))
    logging.getLogger().setLevel(getattr(logging, config.log_level, logging.INFO))
    sys.exit(asyncio.run(run(config)))


if __name__ == "__main__":
    main()
