"""Operator scale benchmark on the real control plane (etcd + kube-apiserver + controllers).

    .venv/bin/python bench/operator_scale.py [--connections 100] [--idle-seconds 60]

Prints:
- the time from creating N PlatformConnections until every gateway Deployment exists (and
  until every connection's status was written: observedGeneration),
- the operator's peak RSS (VmHWM of the process),
- API requests made by the operator during an idle window, by component and verb. Counted
  in the operator itself: every HTTP request of its aiohttp sessions (kopf's watches included,
  through the session our kopf login hands to kopf) goes through an aiohttp TraceConfig into
  switchboard_operator_api_requests_total; a long-lived watch counts once when it is opened,
- the delay between a restart's due time (status.nextRestartTime) and the pod deletion, p50
  and p99, for a restart of every connection with all of them due within the same few seconds
  (the worst case for the scheduler).

Gateway pods get a nodeSelector no node matches: the Deployments and their pods exist (Pending)
and are deleted and replaced as usual, without starting N gateway processes on this machine.
The benchmark acts as every gateway (server-side apply of status, field manager
switchboard-gateway) to report the retryable fatal errors.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from kubernetes import client, watch

from switchboard_testkit.cluster import Cluster
from switchboard_testkit.controlplane import wait_for
from switchboard_testkit.net import free_port

REPO = Path(__file__).resolve().parents[1]
GROUP, VERSION, PLURAL = "switchboard.dev", "v1alpha1", "platformconnections"
NS = "bench"


def connection(i: int, restart_delay: int = 10) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}", "kind": "PlatformConnection",
        "metadata": {"name": f"bot-{i:05d}"},
        "spec": {"platform": "telegram", "telegram": {"tokenSecretRef": {"name": "tg"}},
                 "backend": {"echo": True},
                 "gateway": {"nodeSelector": {"switchboard.dev/bench-no-node": "true"}},
                 "restartPolicy": {"initialDelaySeconds": restart_delay,
                                   "maxDelaySeconds": max(60, restart_delay)}},
    }


def scrape(port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.rpartition(" ")
            out[key] = float(value)
    return out


def requests_by_kind(metrics: dict[str, float]) -> dict[str, float]:
    return {k.split("{", 1)[1].rstrip("}"): v for k, v in metrics.items()
            if k.startswith("switchboard_operator_api_requests_total")}


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--connections", "-n", type=int, default=100)
    p.add_argument("--idle-seconds", type=float, default=60)
    p.add_argument("--workdir", type=Path, default=None)
    p.add_argument("--restart-delay", type=int, default=None,
                   help="restartPolicy.initialDelaySeconds (default: 10, or 1 s per 40 "
                        "connections if more); must exceed the time it takes to report every "
                        "fatal error (about 12 s for 1000), or restarts are overdue on arrival")
    args = p.parse_args()
    n = args.connections
    if args.restart_delay is None:
        args.restart_delay = max(10, n // 40)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="switchboard-bench-"))
    cluster = Cluster(workdir)
    t = time.monotonic()
    cluster.start()
    print(f"control plane up in {time.monotonic() - t:.1f}s ({workdir})", flush=True)
    op: subprocess.Popen[bytes] | None = None
    try:
        api = cluster.api_client()
        core, apps = client.CoreV1Api(api), client.AppsV1Api(api)
        custom = client.CustomObjectsApi(api)
        cluster.kubectl("apply", "--server-side", "-f",
                        str(REPO / "crds" / "platformconnections.switchboard.dev.yaml"))
        cluster.kubectl("wait", "--for=condition=Established", "--timeout=60s",
                        "crd/platformconnections.switchboard.dev")
        core.create_namespace({"metadata": {"name": NS}})
        wait_for(lambda: core.read_namespaced_service_account("default", NS), 60, "namespace")
        core.create_namespaced_secret(NS, {"metadata": {"name": "tg", "labels": {
                                               "switchboard.dev/credentials": "true"}},
                                           "stringData": {"token": "1:bench"}})

        metrics_port, health_port = free_port(), free_port()
        log = open(workdir / "operator.log", "ab")
        op = subprocess.Popen(
            [sys.executable, "-m", "switchboard_operator.main", "--namespace", NS,
             "--metrics-port", str(metrics_port), "--health-port", str(health_port),
             "--health-address", "127.0.0.1"],
            env=cluster.env(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        wait_for(lambda: scrape(metrics_port).get("switchboard_leader") == 1, 60, "leader")

        # -- creation: time until every Deployment exists ------------------------------------
        t0 = time.monotonic()
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(lambda i: custom.create_namespaced_custom_object(
                GROUP, VERSION, NS, PLURAL, connection(i, args.restart_delay)), range(n)))
        created = time.monotonic() - t0
        selector = "app.kubernetes.io/managed-by=switchboard-operator"
        wait_for(lambda: len(apps.list_namespaced_deployment(
            NS, label_selector=selector).items) >= n, 60 + n, "all Deployments", interval=0.2)
        all_deployments = time.monotonic() - t0

        def reconciled() -> bool:
            items = custom.list_namespaced_custom_object(GROUP, VERSION, NS, PLURAL)["items"]
            return sum(1 for i in items if (i.get("status") or {}).get("observedGeneration")
                       == i["metadata"]["generation"]) >= n
        wait_for(reconciled, 60 + n, "all statuses", interval=0.5)
        all_status = time.monotonic() - t0
        print(f"created {n} PlatformConnections in {created:.2f}s; every Deployment existed "
              f"after {all_deployments:.2f}s; every status written after {all_status:.2f}s",
              flush=True)

        # -- idle: requests over a quiet window ------------------------------------------------
        # The controller-manager creates ReplicaSets and pods at its own client rate limit, and
        # every Deployment status change is a (real) reason for the operator to update Ready:
        # the idle window starts once nothing but Lease renewals (PUT) happened for 10 s.
        def busy() -> float:
            return sum(v for k, v in requests_by_kind(scrape(metrics_port)).items()
                       if 'verb="PUT"' not in k)

        def settled() -> bool:
            a = busy()
            time.sleep(10)  # a settle window, not a wait for a result
            return busy() == a
        t_settle = time.monotonic()
        wait_for(settled, 600, "the operator to settle", interval=0.5)
        print(f"settled (no operator writes for 10 s) {time.monotonic() - t_settle:.0f}s "
              "after every status was written", flush=True)
        before = requests_by_kind(scrape(metrics_port))
        time.sleep(args.idle_seconds)  # the measured idle window itself
        after = requests_by_kind(scrape(metrics_port))
        diff = {k: after.get(k, 0) - before.get(k, 0) for k in after}
        diff = {k: v for k, v in diff.items() if v}
        total = sum(diff.values())
        print(f"API requests by the operator over {args.idle_seconds:.0f} idle seconds: "
              f"{total:.0f} " + json.dumps(diff), flush=True)

        # -- restart delay: every connection reports a retryable fatal --------------------------
        due: dict[str, float] = {}
        deleted: dict[str, float] = {}
        pod_owner: dict[str, str] = {}
        pods = core.list_namespaced_pod(NS).items
        for pod in pods:
            pod_owner[pod.metadata.name] = pod.metadata.labels["switchboard.dev/connection"]
        stop = threading.Event()

        relisted: set[str] = set()

        # Both watches list, then watch from the list's resourceVersion, and list again when
        # the stream ends or errs: under a burst of 1000 deletions the apiserver may close a
        # watch whose (Python) reader is too slow, and events would be lost.
        def watch_pods() -> None:
            while not stop.is_set():
                listed = core.list_namespaced_pod(NS)
                now = time.time()
                present = {p.metadata.name for p in listed.items
                           if not p.metadata.deletion_timestamp}
                for name in pod_owner:
                    if name not in present and name not in deleted:
                        deleted[name] = now  # an upper bound: seen only on this list
                        relisted.add(name)
                w = watch.Watch()
                # deserialize=False: plain JSON is several times faster to read than models.
                for ev in w.stream(core.list_namespaced_pod, NS, timeout_seconds=600,
                                   resource_version=listed.metadata.resource_version,
                                   deserialize=False):
                    if ev["type"] == "ERROR":
                        break
                    meta = ev["object"]["metadata"]
                    if (ev["type"] == "DELETED" or meta.get("deletionTimestamp")) \
                            and meta["name"] not in deleted:
                        deleted[meta["name"]] = time.time()
                    if stop.is_set():
                        return

        def note_due(obj: dict[str, Any]) -> None:
            st = obj.get("status") or {}
            if st.get("nextRestartTime") and obj["metadata"]["name"] not in due:
                due[obj["metadata"]["name"]] = datetime.fromisoformat(
                    st["nextRestartTime"].replace("Z", "+00:00")).timestamp()

        def watch_conns() -> None:
            while not stop.is_set():
                listed = custom.list_namespaced_custom_object(GROUP, VERSION, NS, PLURAL)
                for item in listed["items"]:
                    note_due(item)
                w = watch.Watch()
                for ev in w.stream(custom.list_namespaced_custom_object, GROUP, VERSION, NS,
                                   PLURAL, timeout_seconds=600,
                                   resource_version=listed["metadata"]["resourceVersion"]):
                    if ev["type"] == "ERROR":
                        break
                    note_due(ev["object"])
                    if stop.is_set():
                        return

        def quietly(fn: Any) -> Any:
            def run() -> None:
                try:
                    fn()
                except Exception:  # the cluster stops under the watch at the end
                    pass
            return run

        for fn in (watch_pods, watch_conns):
            threading.Thread(target=quietly(fn), daemon=True).start()
        since = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")

        def report(pod_name: str) -> None:
            name = pod_owner[pod_name]
            body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "PlatformConnection",
                    "metadata": {"name": name, "namespace": NS},
                    "status": {"state": "fatal", "attempt": 10, "maxAttempts": 10,
                               "attempts": "10/10", "stateSince": since, "gatewayPod": pod_name,
                               "lastError": {"code": "telegram_network_error",
                                             "message": "bench", "retryable": True}}}
            custom.patch_namespaced_custom_object_status(
                GROUP, VERSION, NS, PLURAL, name, body, field_manager="switchboard-gateway",
                force=True, _content_type="application/apply-patch+yaml")

        t1 = time.monotonic()
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(report, pod_owner))
        print(f"reported {len(pod_owner)} retryable fatal errors in "
              f"{time.monotonic() - t1:.2f}s (all due {args.restart_delay} s after {since})",
              flush=True)
        wait_for(lambda: all(p in deleted for p in pod_owner), 120 + n / 10,
                 "every restart", interval=0.2)
        stop.set()
        delays = [deleted[p] - due[pod_owner[p]] for p in pod_owner if pod_owner[p] in due]
        if not delays:
            delays = [float("nan")]
            print("no nextRestartTime was seen: every restart was overdue when its report "
                  "arrived (raise --restart-delay)", flush=True)
        if relisted:
            print(f"{len(relisted)} deletions were seen only on a re-list after the bench's "
                  "watch was closed (their delay is an upper bound)", flush=True)
        print(f"restart delay after the due time over {len(delays)} restarts: "
              f"p50 {statistics.median(delays) * 1000:.0f} ms, "
              f"p99 {percentile(delays, 0.99) * 1000:.0f} ms, "
              f"max {max(delays) * 1000:.0f} ms, min {min(delays) * 1000:.0f} ms", flush=True)
        m = scrape(metrics_port)
        # The operator's own measure (due time to deletion response), as a cross-check.
        count = m.get("switchboard_restart_delay_seconds_count", 0) or float("nan")
        cumulative = {k.split('le="', 1)[1].split('"', 1)[0]: v for k, v in m.items()
                      if k.startswith("switchboard_restart_delay_seconds_bucket")}
        print("operator's histogram of the same delays: " + ", ".join(
            f"<= {le} s: {v / count:.0%}" for le, v in cumulative.items()
            if le in ("0.5", "1.0", "2.0", "5.0", "10.0")) + f" (of {count:.0f})", flush=True)
        print(f"operator peak RSS: {peak_rss_mib(op.pid):.1f} MiB", flush=True)
        print(f"operator: reconciles {m.get('switchboard_reconciles_total', 0):.0f}, "
              f"errors {m.get('switchboard_reconcile_errors_total', 0):.0f}", flush=True)
    finally:
        if op is not None and op.poll() is None:
            os.killpg(op.pid, signal.SIGTERM)
            try:
                op.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(op.pid, signal.SIGKILL)
        cluster.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
