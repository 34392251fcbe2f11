"""`make demo`: the whole story on this machine, end to end, with nothing mocked but the platforms.

Starts (or reuses) the cluster in .cluster/ (a real kubelet and containerd node, or with
`--node local` the test kit's local node), installs the Helm chart with the image `make image`
built, starts a fake Telegram and a fake QQ server (listening inside the node's network
namespace), creates one PlatformConnection for each (on the real node also a Telegram bot
whose updates come by webhook, through the Service the operator makes), sends a message
through each and shows the echoed reply, then cuts Telegram off and lets you watch the
connection go through `retrying N/10`, a restart by the operator, and back to `connected`.
Every process it starts is recorded in .cluster/state.json; `make cluster-down` stops them all.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

from kubernetes import client

from switchboard_testkit import diagnose, localnode, netns, realnode
from switchboard_testkit.binaries import REPO
from switchboard_testkit.cluster import Cluster
from switchboard_testkit.controlplane import State, log_tails, pid_alive, stop_pid, wait_for
from switchboard_testkit.net import free_port
from switchboard_testkit.realnode import RealNodeCluster

NS = "demo"
TOKEN = "123456:demo-token-not-a-real-one"
HOOK_TOKEN = "654321:demo-webhook-token-not-a-real-one"
HOOK_URL = f"http://{realnode.WEBHOOK_TEST_HOST}/telegram/telegram-webhook"
QQ_APP_ID, QQ_SECRET = "102000001", "demo-client-secret"
T0 = time.monotonic()


def step(msg: str) -> None:
    print(f"[demo {time.monotonic() - T0:5.0f}s] {msg}", flush=True)


def post(url: str, body: dict[str, Any] | None = None, timeout: float = 30) -> Any:
    req = urllib.request.Request(url, data=json.dumps(body or {}).encode(),
                                 headers={"Content-Type": "application/json"}, method="POST")
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        return json.loads(resp.read() or b"null")


def webhook_manifests(base: str) -> str:
    """The real node only: a Telegram bot whose updates come by webhook, through the Service
    the operator makes (the local node has no Services)."""
    return f"""
apiVersion: v1
kind: Secret
metadata:
  name: telegram-webhook
  namespace: {NS}
  labels: {{switchboard.dev/credentials: "true"}}
stringData: {{token: "{HOOK_TOKEN}"}}
---
apiVersion: switchboard.dev/v1alpha1
kind: PlatformConnection
metadata: {{name: telegram-webhook, namespace: {NS}}}
spec:
  platform: telegram
  apiBaseURL: {base}
  telegram:
    tokenSecretRef: {{name: telegram-webhook}}
    reconnect: {{maxAttempts: 10, initialDelaySeconds: 1, maxDelaySeconds: 2}}
  backend: {{echo: true}}
  # Plain http: the demo's public host has no certificate (the chart's values allow it).
  delivery: {{mode: webhook, webhook: {{url: "{HOOK_URL}"}}}}
"""


def manifests(tg_base: str, qq_base: str) -> str:
    return f"""
apiVersion: v1
kind: Secret
metadata: {{name: telegram-bot, namespace: {NS}, labels: {{switchboard.dev/credentials: "true"}}}}
stringData: {{token: "{TOKEN}"}}
---
apiVersion: v1
kind: Secret
metadata: {{name: qq-bot, namespace: {NS}, labels: {{switchboard.dev/credentials: "true"}}}}
stringData: {{appId: "{QQ_APP_ID}", clientSecret: "{QQ_SECRET}"}}
---
apiVersion: switchboard.dev/v1alpha1
kind: PlatformConnection
metadata: {{name: telegram-bot, namespace: {NS}}}
spec:
  platform: telegram
  apiBaseURL: {tg_base}
  telegram:
    tokenSecretRef: {{name: telegram-bot}}
    # Short ladder so the demo fits in a few minutes (default: 10 attempts, 5 s doubling to 60 s).
    reconnect: {{maxAttempts: 10, initialDelaySeconds: 1, maxDelaySeconds: 2}}
  backend: {{echo: true}}
  restartPolicy: {{initialDelaySeconds: 5, maxDelaySeconds: 60}}
---
apiVersion: switchboard.dev/v1alpha1
kind: PlatformConnection
metadata: {{name: qq-bot, namespace: {NS}}}
spec:
  platform: qqbot
  apiBaseURL: {qq_base}
  qqbot:
    credentialsSecretRef: {{name: qq-bot}}
  backend: {{echo: true}}
"""


class Demo:
    def __init__(self, workdir: Path, node: str = "real") -> None:
        self.real = node == "real"
        self.cluster: Cluster | RealNodeCluster = (
            RealNodeCluster(workdir) if self.real else Cluster(workdir))
        self.env = self.cluster.env()
        # Where pods reach the fake platforms: the node address on the real node.
        self.platform_host = netns.NODE_IP if self.real else "127.0.0.1"

    def run(self, cmd: list[str], **kw: Any) -> subprocess.CompletedProcess[str]:
        return subprocess.run(cmd, env=self.env, text=True, check=True, capture_output=True,
                              **kw)

    def core(self) -> client.CoreV1Api:
        return client.CoreV1Api(self.cluster.api_client())

    def explain(self) -> str:
        """Every pod of the demo that is not Ready, with its reason and last log lines."""
        try:
            core = self.core()
            pods = [p for ns in ("switchboard-system", NS)
                    for p in core.list_namespaced_pod(ns).items
                    if not p.status.container_statuses
                    or not all(s.ready for s in p.status.container_statuses)]
        except Exception:  # the cluster itself may be what failed: say nothing more
            return ""
        return "\n".join(diagnose.describe(p, self.cluster.workdir) for p in pods)

    def kubectl(self, *args: str, **kw: Any) -> subprocess.CompletedProcess[str]:
        return self.run([str(self.cluster.binaries.kubectl), *args], **kw)

    def start_cluster(self) -> None:
        state_file = self.cluster.workdir / "state.json"
        if state_file.exists():
            state = State.load(self.cluster.workdir)
            if state.pids and all(pid_alive(p) for p in state.pids.values()) \
                    and ("netns" in state.extra) == self.real:
                self.cluster.attach(state)
                step(f"reusing the running cluster ({self.cluster.workdir})")
                return
            self.cluster.stop()
        step("starting etcd, kube-apiserver, kube-controller-manager and "
             + ("a real node (containerd, kubelet, kube-proxy, CoreDNS) ..." if self.real
                else "the local node ..."))
        self.cluster.start()
        step(f"control plane ready in {self.cluster.timings['total']:.1f}s; "
             f"kubeconfig: {self.cluster.kubeconfig}")

    def spawn_fake(self, name: str, argv: list[str]) -> None:
        state = self.cluster.plane.state
        assert state
        old = state.pids.get(name)
        if old and pid_alive(old):
            stop_pid(old)
        if isinstance(self.cluster, RealNodeCluster):
            argv = [*argv, f"--node-holder={self.cluster.holder}"]
        self.cluster.plane._spawn(name, [sys.executable, "-m", *argv], env=self.env, host=True)

    def install_chart(self) -> None:
        step("helm install switchboard (operator, RBAC, CRD) ...")
        helm = str(self.cluster.binaries.helm)
        # A crash-looping operator stops the wait at once, with its own last log lines.
        diagnose.run_watching(
            [helm, "upgrade", "--install", "switchboard", str(REPO / "helm/switchboard"),
             "--namespace", "switchboard-system", "--create-namespace",
             *(realnode.CHART_VALUES if self.real else localnode.CHART_VALUES),
             "--wait", "--timeout", "3m"],
            env=self.env, core=self.core(), namespaces=["switchboard-system"],
            workdir=self.cluster.workdir, timeout=240)
        step("operator running (in its container on the real node)" if self.real
             else "operator running (as a local process on the local node)")

    def main(self) -> None:
        self.start_cluster()
        self.install_chart()

        tg_port, tg_ctl, qq_port, qq_ctl = free_port(), free_port(), free_port(), free_port()
        host = self.platform_host
        step(f"starting a fake Telegram Bot API on {host}:{tg_port} "
             f"and a fake QQ Bot gateway on {host}:{qq_port}")
        self.spawn_fake("fake-telegram", ["switchboard_testkit.fake_telegram",
                                          f"--port={tg_port}", f"--control-port={tg_ctl}",
                                          f"--token={TOKEN}"])
        self.spawn_fake("fake-qq", ["switchboard_testkit.fake_qq", f"--port={qq_port}",
                                    f"--control-port={qq_ctl}", f"--app-id={QQ_APP_ID}",
                                    f"--client-secret={QQ_SECRET}",
                                    "--heartbeat-interval-ms=5000"])
        tg = f"http://127.0.0.1:{tg_ctl}/_fake"
        qq = f"http://127.0.0.1:{qq_ctl}/_fake"
        fakes = [tg, qq]
        hook_port, hook_ctl = free_port(), free_port()
        hook = f"http://127.0.0.1:{hook_ctl}/_fake"
        if self.real:
            step(f"and a second fake Telegram on {host}:{hook_port} that pushes by webhook")
            self.spawn_fake("fake-telegram-webhook", [
                "switchboard_testkit.fake_telegram", f"--port={hook_port}",
                f"--control-port={hook_ctl}", f"--token={HOOK_TOKEN}", "--allow-http-webhooks"])
            fakes.append(hook)
        wait_for(lambda: all(_up(f"{f}/state") for f in fakes), 30, "the fake servers")

        names = ["telegram-bot", "qq-bot"] + (["telegram-webhook"] if self.real else [])
        step(f"creating namespace demo, its Secrets and {len(names)} PlatformConnections")
        self._ensure_namespace()
        self.kubectl("apply", "-f", "-", input=manifests(
            f"http://{host}:{tg_port}/bot", f"http://{host}:{qq_port}"))
        if self.real:
            self.kubectl("apply", "-f", "-",
                         input=webhook_manifests(f"http://{host}:{hook_port}/bot"))
            service = wait_for(lambda: self._cluster_ip("telegram-webhook-gateway"), 60,
                               "the webhook Service")
            step(f"the webhook's public host {realnode.WEBHOOK_TEST_HOST} routes to the "
                 f"gateway's Service ({service}:80), as a load balancer would")
            post(f"{hook}/route_webhook", {"host": realnode.WEBHOOK_TEST_HOST,
                                           "address": f"{service}:80"})
        step("waiting for the connections to become Ready ...")
        diagnose.run_watching(
            [str(self.cluster.binaries.kubectl), "-n", NS, "wait", "--for=condition=Ready",
             "--timeout=180s", *(f"platformconnection/{n}" for n in names)],
            env=self.env, core=self.core(), namespaces=[NS, "switchboard-system"],
            workdir=self.cluster.workdir, timeout=200)
        print(self.kubectl("-n", NS, "get", "platformconnections").stdout, flush=True)

        step("sending 'hello switchboard' through each platform")
        post(f"{tg}/inject_message", {"chat_id": 4242, "text": "hello switchboard"})
        reply = post(f"{tg}/wait_for_sent", {"timeout": 30, "contains": "hello switchboard"})
        step(f"telegram reply: {_text(reply)!r}")
        post(f"{qq}/inject_message", {"openid": "demo-user", "content": "hello switchboard"})
        reply = post(f"{qq}/wait_for_sent", {"timeout": 30, "contains": "hello switchboard"})
        step(f"qq reply: {_text(reply)!r}")
        if self.real:
            post(f"{hook}/inject_message", {"chat_id": 4343, "text": "hello by webhook"})
            reply = post(f"{hook}/wait_for_sent", {"timeout": 30, "contains": "by webhook"})
            step(f"telegram webhook reply: {_text(reply)!r} (Telegram posted the update to "
                 f"{HOOK_URL}, through the Service)")

        step("outage: the fake Telegram now answers every call with 502 Bad Gateway "
             "(the gateway sees it when its current long poll ends, within 30 s)")
        post(f"{tg}/fail_next", {"n": 100000, "status": 502, "method": None})
        self.watch_until(lambda r: r.get("restarts", 0) >= 1, "the operator restarts the gateway",
                         timeout=240)
        step("the platform recovers (fake Telegram answers again)")
        post(f"{tg}/clear_faults")
        self.watch_until(lambda r: r.get("state") == "connected", "connected again", timeout=240)
        print(self.kubectl("-n", NS, "get", "platformconnections", "-o", "wide").stdout,
              flush=True)
        step("what the operator recorded as Events on telegram-bot:")
        print(self.kubectl("-n", NS, "get", "events", "--sort-by=.lastTimestamp",
                           "--field-selector", "involvedObject.name=telegram-bot").stdout,
              flush=True)
        self.outro()

    def _cluster_ip(self, service: str) -> str | None:
        got = subprocess.run([str(self.cluster.binaries.kubectl), "-n", NS, "get", "service",
                              service, "-o", "jsonpath={.spec.clusterIP}"], env=self.env,
                             capture_output=True, text=True)
        return got.stdout.strip() or None if got.returncode == 0 else None

    def _ensure_namespace(self) -> None:
        got = subprocess.run([str(self.cluster.binaries.kubectl), "get", "namespace", NS],
                             env=self.env, capture_output=True)
        if got.returncode != 0:
            self.kubectl("create", "namespace", NS)

    def watch_until(self, done: Any, what: str, timeout: float) -> None:
        """Print `kubectl get platformconnections` lines for telegram-bot whenever they change."""
        step(f"watching kubectl get platformconnections until {what} ...")
        deadline, last = time.monotonic() + timeout, ""
        while time.monotonic() < deadline:
            status = json.loads(self.kubectl("-n", NS, "get", "platformconnection",
                                             "telegram-bot", "-o", "json").stdout).get("status", {})
            line = self.kubectl("-n", NS, "get", "platformconnection", "telegram-bot",
                                "--no-headers").stdout.strip()
            shown = line.rsplit(None, 1)[0]  # without AGE, which changes every second
            if shown != last:
                print(f"    {line}", flush=True)
                last = shown
            if done(status):
                return
            time.sleep(0.5)  # display refresh rate of this watch, not a wait for a condition
        raise TimeoutError(f"demo: {what} did not happen within {timeout:.0f}s")

    def outro(self) -> None:
        print(f"""
Done in {time.monotonic() - T0:.0f}s. Everything still runs; explore with:
  export KUBECONFIG={self.cluster.kubeconfig}
  export PATH={':'.join(self.cluster.binaries.path_dirs)}:$PATH
  kubectl -n {NS} get platformconnections -o wide
  kubectl -n {NS} describe platformconnection telegram-bot

With a real bot on a real cluster (not this one: `helm upgrade --install` works on both):
  helm upgrade --install switchboard ./helm/switchboard -n switchboard-system --create-namespace
  kubectl create secret generic my-bot --from-literal=token=<token from @BotFather>
  kubectl label secret my-bot switchboard.dev/credentials=true
and a PlatformConnection like the one above without apiBaseURL (see README).
Stop everything this demo started: make cluster-down
""", flush=True)


def _up(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return resp.status == 200
    except OSError:
        return False


def _text(reply: Any) -> str:
    result = reply.get("result") if isinstance(reply, dict) else reply
    if isinstance(result, dict):
        return str(result.get("text") or result.get("content") or result)
    return str(result)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=REPO / ".cluster")
    parser.add_argument("--node", choices=["real", "local"], default="real")
    args = parser.parse_args(argv)
    demo = Demo(args.workdir, args.node)
    try:
        demo.main()
    except Exception as exc:
        step(f"FAILED: {exc}")
        if isinstance(exc, subprocess.CalledProcessError) and exc.stderr:
            print(exc.stderr.strip(), file=sys.stderr)
        if not isinstance(exc, diagnose.PodCrashed):
            print(demo.explain(), file=sys.stderr)
        if (args.workdir / "logs").exists():
            print(log_tails(args.workdir, 20), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
