"""Benchmark: the Telegram gateway relaying through a local backend, against python-telegram-bot
polling the same fake directly; and status writes on a link that flaps every second.

    .venv/bin/python bench/gateway_relay.py [--messages 300] [--burst 1000] [--flap-seconds 60]

Starts a real control plane (etcd + kube-apiserver, as the tests do), a PlatformConnection with
the gateway's least-privilege credentials, the fake Bot API in this process, the echo backend
(``python -m switchboard_gateway.backend``) and the gateway (``switchboard-gateway``) as
processes; then the same gateway with webhook delivery (the fake pushes). Figures:
- latency: one message at a time, from injecting the update into the fake until the fake received
  the reply (sendMessage); p50/p99 for the gateway (poll -> backend HTTP -> sendMessage) and for a
  plain PTB Application echoing in-process; "added" is the difference;
- throughput: a burst of messages queued at once, replies per second until all are answered;
- flapping: the fake refuses connections for 0.3 s every second; status writes per minute are
  read from the gateway's own switchboard_gateway_status_writes_total and the API watch.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

TOKEN = "424242424:AAbenchmarkTOKENforTHEswitchboardGW"
REPO = Path(__file__).resolve().parents[1]
BURST_CHATS = 13  # the burst comes from this many chats (a webhook pushes them at once)


def ptb_child(base_url: str, token: str) -> None:
    """The baseline: PTB's Application polling the fake and echoing in-process."""
    from telegram import Update
    from telegram.ext import Application, ContextTypes, MessageHandler, filters

    async def echo(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        assert update.message is not None and update.effective_chat is not None
        await context.bot.send_message(update.effective_chat.id,
                                       f"echo: {update.message.text}")

    app = Application.builder().token(token).base_url(base_url).build()
    app.add_handler(MessageHandler(filters.TEXT, echo))
    app.run_polling(poll_interval=0, timeout=10, drop_pending_updates=False)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def measure(fake, messages: int, burst: int) -> tuple[list[float], float]:  # type: ignore[no-untyped-def]
    latencies: list[float] = []
    for i in range(messages):
        before = len(fake.sent_messages)
        started = time.monotonic()
        fake.inject_message(1000 + i % 7, f"latency {i}")
        await fake.wait_until(lambda b=before: len(fake.sent_messages) > b, 10, "reply")
        latencies.append(time.monotonic() - started)
    before = len(fake.sent_messages)
    started = time.monotonic()
    for i in range(burst):
        fake.inject_message(2000 + i % BURST_CHATS, f"burst {i}")
    await fake.wait_until(lambda: len(fake.sent_messages) >= before + burst, 120, "burst")
    rate = burst / (time.monotonic() - started)
    return latencies, rate


def metric(text: str, name: str, **labels: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            found = dict(re.findall(r'(\w+)="([^"]*)"', line.split(" ")[0]))
            if all(found.get(k) == v for k, v in labels.items()):
                total += float(line.rsplit(" ", 1)[1])
    return total


async def run(args: argparse.Namespace) -> None:
    from kubernetes import client

    from switchboard_operator.children import DEFAULT_GATEWAY_RESOURCES
    from switchboard_testkit.cluster import Cluster
    from switchboard_testkit.fake_telegram import FakeTelegram
    from switchboard_testkit.gateway_harness import (
        GROUP,
        PLURAL,
        VERSION,
        GatewayProcess,
        PConn,
        install_crd,
        least_privilege_kubeconfig,
        pconn_spec,
    )
    from switchboard_testkit.net import free_port

    workdir = Path(tempfile.mkdtemp(prefix="switchboard-bench-"))
    cluster = Cluster(workdir / "cluster")
    print(f"starting the control plane in {workdir} ...", flush=True)  # removed unless --keep
    await asyncio.to_thread(cluster.start)
    backend_proc: asyncio.subprocess.Process | None = None
    try:
        install_crd(cluster, REPO / "crds/platformconnections.switchboard.dev.yaml")
        api = cluster.api_client()
        namespace = f"bench-{uuid.uuid4().hex[:6]}"
        client.CoreV1Api(api).create_namespace(
            client.V1Namespace(metadata=client.V1ObjectMeta(name=namespace)))
        name = "bench-bot"
        client.CustomObjectsApi(api).create_namespaced_custom_object(
            GROUP, VERSION, namespace, PLURAL, {
                "apiVersion": f"{GROUP}/{VERSION}", "kind": "PlatformConnection",
                "metadata": {"name": name}, "spec": pconn_spec("telegram")})
        kubeconfig = least_privilege_kubeconfig(cluster, api, namespace, name, workdir)
        pconn = PConn(name, namespace, "telegram", kubeconfig, api)
        pconn.start_watch()

        backend_proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "switchboard_gateway.backend", "--port", "0",
            stdout=subprocess.PIPE)
        assert backend_proc.stdout is not None
        backend_url = (await backend_proc.stdout.readline()).decode().split()[1]

        async with FakeTelegram(TOKEN, allow_http_webhooks=True) as fake:
            env = pconn.env(SWITCHBOARD_API_BASE_URL=fake.base_url,
                            SWITCHBOARD_TELEGRAM_TOKEN=TOKEN,
                            SWITCHBOARD_BACKEND_URL=backend_url,
                            SWITCHBOARD_POLL_TIMEOUT="10", SWITCHBOARD_LOG_LEVEL="WARNING")
            gw = GatewayProcess(env, workdir / "gateway.log")
            await gw.wait_serving()
            await fake.wait_until(lambda: fake.active_polls == 1, 20, "gateway polling")
            gw_lat, gw_rate = await measure(fake, args.messages, args.burst)
            gw_peak = peak_rss(gw.proc.pid)
            await gw.terminate()

            ptb = await asyncio.create_subprocess_exec(
                sys.executable, __file__, "--ptb-child", fake.base_url, TOKEN,
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            try:
                await fake.wait_until(lambda: fake.active_polls == 1, 20, "PTB polling")
                ptb_lat, ptb_rate = await measure(fake, args.messages, args.burst)
                ptb_peak = peak_rss(ptb.pid)
            finally:
                ptb.terminate()
                await asyncio.wait_for(ptb.wait(), 10)

            # The same gateway with webhook delivery: the fake posts each update to it.
            hook_port = free_port()
            fake.webhook.route("bench.example.test", f"127.0.0.1:{hook_port}")
            hook = GatewayProcess({
                **env, "SWITCHBOARD_POD_NAME": "gw-hook", "SWITCHBOARD_DELIVERY": "webhook",
                "SWITCHBOARD_WEBHOOK_URL": "http://bench.example.test/hook",
                "SWITCHBOARD_WEBHOOK_PORT": str(hook_port),
                "SWITCHBOARD_WEBHOOK_SECRET_TOKEN": "bench-secret-token",
                "SWITCHBOARD_WEBHOOK_READY_WAIT": "0"}, workdir / "gateway-webhook.log")
            await hook.wait_serving()
            await fake.wait_until(lambda: fake.webhook.active, 20, "webhook set")
            hook_lat, hook_rate = await measure(fake, args.messages, args.burst)
            hook_peak = peak_rss(hook.proc.pid)
            await hook.terminate()

            flap = await flapping(fake, pconn, env, workdir, args.flap_seconds, GatewayProcess)
        pconn.stop_watch()
    finally:
        if backend_proc is not None:
            backend_proc.terminate()
            await asyncio.wait_for(backend_proc.wait(), 5)
        cluster.stop()
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)

    ms = 1000.0

    def figures(lat: list[float]) -> str:
        return (f"p50 {percentile(lat, .5) * ms:6.2f} ms  p99 {percentile(lat, .99) * ms:6.2f} ms"
                f"  mean {statistics.mean(lat) * ms:6.2f} ms")

    print()
    print(f"relay latency, {args.messages} messages one at a time (inject -> reply at the fake)")
    print(f"  gateway (poll -> HTTP backend -> sendMessage): {figures(gw_lat)}")
    print(f"  PTB Application echoing in-process:          {figures(ptb_lat)}")
    print(f"  added by the gateway:                         p50 "
          f"{(percentile(gw_lat, .5) - percentile(ptb_lat, .5))*ms:+6.2f} ms"
          f"  p99 {(percentile(gw_lat, .99) - percentile(ptb_lat, .99))*ms:+6.2f} ms")
    print(f"  gateway by webhook (push -> backend -> send): {figures(hook_lat)}")
    print(f"  webhook / polling p50: {percentile(hook_lat, .5) / percentile(gw_lat, .5):4.2f}")
    print(f"throughput, burst of {args.burst} queued messages")
    print(f"  gateway {gw_rate:7.1f} msg/s    PTB {ptb_rate:7.1f} msg/s    "
          f"gateway by webhook {hook_rate:7.1f} msg/s ({BURST_CHATS} chats pushed at once)")
    request, limit = (_mib(DEFAULT_GATEWAY_RESOURCES["requests"]["memory"]),
                      _mib(DEFAULT_GATEWAY_RESOURCES["limits"]["memory"]))
    print("peak memory (VmHWM) after the burst")
    print(f"  gateway {gw_peak:6.1f} MiB    PTB Application {ptb_peak:6.1f} MiB"
          f"    ratio {gw_peak / ptb_peak:4.2f}    gateway by webhook {hook_peak:6.1f} MiB")
    print(f"  default gateway request {request:.0f} MiB = {request / gw_peak:4.2f}x the peak, "
          f"limit {limit:.0f} MiB = {limit / gw_peak:4.2f}x")
    print(f"flapping link ({args.flap_seconds:.0f} s, refused 0.3 s every second)")
    for key, value in flap.items():
        print(f"  {key}: {value}")


def peak_rss(pid: int) -> float:
    """The process's peak resident set (VmHWM), in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmHWM for pid {pid}")


def _mib(quantity: str) -> float:
    assert quantity.endswith("Mi"), quantity
    return float(quantity[:-2])


async def flapping(fake, pconn, env, workdir, seconds: float, GatewayProcess) -> dict[str, object]:  # type: ignore[no-untyped-def]
    env = {**env, "SWITCHBOARD_RECONNECT": json.dumps(
        {"maxAttempts": 1000, "initialDelaySeconds": 0.2, "maxDelaySeconds": 0.4}),
        "SWITCHBOARD_POD_NAME": "gw-flap", "SWITCHBOARD_BACKEND_ECHO": "true"}
    env.pop("SWITCHBOARD_BACKEND_URL")
    gw = GatewayProcess(env, workdir / "gateway-flap.log")
    await gw.wait_serving()
    await fake.wait_until(lambda: fake.active_polls == 1, 20, "gateway polling")
    await asyncio.sleep(1.5)
    before = await gw.metrics()
    watched_before = len(pconn.history)
    started = time.monotonic()
    flaps = 0
    while time.monotonic() - started < seconds:
        await fake.refuse_connections(duration=0.3)
        flaps += 1
        await asyncio.sleep(1.0)
    elapsed = time.monotonic() - started
    await asyncio.sleep(1.5)  # the last coalesced write lands
    after = await gw.metrics()
    watched = len(pconn.history) - watched_before
    await gw.terminate()
    per_min = 60.0 / elapsed

    def delta(name: str, **labels: str) -> float:
        return metric(after, name, **labels) - metric(before, name, **labels)

    writes = delta("switchboard_gateway_status_writes_total", result="ok")
    failures = delta("switchboard_gateway_errors_total", code="telegram_network_error")
    return {
        "link drops": flaps,
        "failed attempts reported as retrying (state changes ~2x this)": int(failures),
        "status writes (gateway metric)": int(writes),
        "status writes per minute": round(writes * per_min, 1),
        "status changes seen by an API watch per minute":
            round(watched * per_min, 1),
        "write errors": int(delta("switchboard_gateway_status_writes_total", result="error")),
    }


def main() -> None:
    if len(sys.argv) == 4 and sys.argv[1] == "--ptb-child":
        ptb_child(sys.argv[2], sys.argv[3])
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--messages", type=int, default=300)
    parser.add_argument("--burst", type=int, default=1000)
    parser.add_argument("--flap-seconds", type=float, default=60.0)
    parser.add_argument("--keep", action="store_true", help="keep the work directory (logs)")
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
