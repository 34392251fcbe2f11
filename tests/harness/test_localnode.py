"""The local node runs pods as processes, with env, Secrets, ServiceAccount tokens and restarts."""

from __future__ import annotations

import json
import textwrap
from typing import Any

from kubernetes import client

from switchboard_testkit.cluster import Cluster
from switchboard_testkit.controlplane import pid_alive, wait_for
from switchboard_testkit.localnode import pod_dir

# A container that records its environment, then idles until it is killed.
RECORD_ENV = ("import json, os, time; "
              "open('env.json.tmp', 'w').write(json.dumps(dict(os.environ))); "
              "os.replace('env.json.tmp', 'env.json'); time.sleep(3600)")


def _deployment(name: str, env: list[dict[str, Any]], sa: str = "default") -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name},
        "spec": {"replicas": 1, "selector": {"matchLabels": {"app": name}},
                 "template": {"metadata": {"labels": {"app": name}}, "spec": {
                     "serviceAccountName": sa, "terminationGracePeriodSeconds": 5,
                     "containers": [{"name": "main", "image": "unused",
                                     "command": ["python3", "-c", RECORD_ENV], "env": env}]}}},
    }


def _running_pod(core: client.CoreV1Api, namespace: str, label: str,
                 exclude: str | None = None) -> client.V1Pod:
    def find() -> client.V1Pod | None:
        for pod in core.list_namespaced_pod(namespace, label_selector=label).items:
            if pod.metadata.name != exclude and pod.metadata.deletion_timestamp is None \
                    and pod.status.phase == "Running" and pod.status.container_statuses \
                    and pod.status.container_statuses[0].ready:
                return pod
        return None
    return wait_for(find, 60, f"a running pod {label}")  # type: ignore[return-value]


def _pid(pod: client.V1Pod) -> int:
    return int(pod.status.container_statuses[0].container_id.removeprefix("local://"))


def _recorded_env(cluster: Cluster, namespace: str, pod: client.V1Pod) -> dict[str, str]:
    path = pod_dir(cluster.workdir, namespace, pod.metadata.name) / "env.json"
    wait_for(path.exists, 30, f"{path}")
    return json.loads(path.read_text())


def test_deployment_pod_sees_env_secret_and_its_own_identity(
        cluster: Cluster, namespace: str, api: client.ApiClient) -> None:
    core, apps = client.CoreV1Api(api), client.AppsV1Api(api)
    core.create_namespaced_secret(namespace, {"metadata": {"name": "creds"},
                                              "stringData": {"token": "s3cr3t-value"}})
    core.create_namespaced_config_map(namespace, {"metadata": {"name": "cfg"},
                                                  "data": {"mode": "loud"}})
    apps.create_namespaced_deployment(namespace, _deployment("envcheck", [
        {"name": "PLAIN", "value": "hello"},
        {"name": "DERIVED", "value": "$(PLAIN)-world"},
        {"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "token"}}},
        {"name": "MODE", "valueFrom": {"configMapKeyRef": {"name": "cfg", "key": "mode"}}},
        {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
    ]))
    pod = _running_pod(core, namespace, "app=envcheck")
    env = _recorded_env(cluster, namespace, pod)
    assert env["PLAIN"] == "hello" and env["DERIVED"] == "hello-world"
    assert env["TOKEN"] == "s3cr3t-value" and env["MODE"] == "loud"
    assert env["POD_NAME"] == pod.metadata.name
    assert env["POD_IP"] == pod.status.pod_ip and env["POD_IP"].startswith("127.1.")

    # Its KUBECONFIG holds a token minted for the pod's ServiceAccount, not admin credentials.
    whoami = cluster.kubectl("--kubeconfig", env["KUBECONFIG"], "auth", "whoami", "-o", "json",
                             check=True)
    user = json.loads(whoami.stdout)["status"]["userInfo"]["username"]
    assert user == f"system:serviceaccount:{namespace}:default"


def test_deleting_the_pod_stops_its_process_and_the_replacement_starts_a_new_one(
        cluster: Cluster, namespace: str, api: client.ApiClient) -> None:
    core, apps = client.CoreV1Api(api), client.AppsV1Api(api)
    apps.create_namespaced_deployment(namespace, _deployment("restartme", []))
    first = _running_pod(core, namespace, "app=restartme")
    first_pid = _pid(first)
    assert pid_alive(first_pid)

    core.delete_namespaced_pod(first.metadata.name, namespace)
    wait_for(lambda: not pid_alive(first_pid), 30, "the deleted pod's process to stop")
    second = _running_pod(core, namespace, "app=restartme", exclude=first.metadata.name)
    assert second.metadata.name != first.metadata.name
    second_pid = _pid(second)
    assert second_pid != first_pid and pid_alive(second_pid)
    wait_for(lambda: not any(p.metadata.name == first.metadata.name for p in
                             core.list_namespaced_pod(namespace).items),
             30, "the deleted pod object to disappear")


def _pod(name: str, script: str, restart: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
            "spec": {"restartPolicy": restart, "containers": [
                {"name": "main", "image": "unused", "command": ["sh", "-c", script]}]}}


def test_non_zero_exit_shows_in_container_statuses(namespace: str,
                                                   api: client.ApiClient) -> None:
    core = client.CoreV1Api(api)
    core.create_namespaced_pod(namespace, _pod("once", "exit 3", "Never"))
    pod = wait_for(lambda: (p := core.read_namespaced_pod("once", namespace)).status.phase
                   == "Failed" and p, 30, "pod phase Failed")
    term = pod.status.container_statuses[0].state.terminated
    assert term.exit_code == 3 and term.reason == "Error"

    core.create_namespaced_pod(namespace, _pod("looping", "exit 7", "Always"))

    def restarted() -> client.V1ContainerStatus | None:
        statuses = core.read_namespaced_pod("looping", namespace).status.container_statuses
        s = statuses[0] if statuses else None
        return s if s and s.restart_count >= 1 and s.last_state.terminated else None

    status = wait_for(restarted, 30, "a restart with lastState.terminated")
    assert status.last_state.terminated.exit_code == 7


def test_liveness_probe_failure_restarts_the_container(cluster: Cluster, namespace: str,
                                                       api: client.ApiClient) -> None:
    core = client.CoreV1Api(api)
    # Serves HTTP on its pod IP until the file "sick" appears in its working directory.
    server = textwrap.dedent("""
        import http.server, os
        class H(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                self.send_response(500 if os.path.exists('sick') else 200); self.end_headers()
        http.server.HTTPServer((os.environ['POD_IP'], 8080), H).serve_forever()
    """)
    probe = {"httpGet": {"path": "/", "port": 8080}, "periodSeconds": 1, "failureThreshold": 2}
    core.create_namespaced_pod(namespace, {
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "probed"},
        "spec": {"terminationGracePeriodSeconds": 2, "containers": [{
            "name": "main", "image": "unused", "command": ["python3", "-c", server],
            "env": [{"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}],
            "readinessProbe": probe, "livenessProbe": probe}]}})

    def ready() -> bool:
        s = core.read_namespaced_pod("probed", namespace).status.container_statuses
        return bool(s and s[0].ready)

    wait_for(ready, 30, "readiness")
    (pod_dir(cluster.workdir, namespace, "probed") / "sick").touch()
    wait_for(lambda: core.read_namespaced_pod("probed", namespace)
             .status.container_statuses[0].restart_count >= 1, 30, "a liveness restart")

