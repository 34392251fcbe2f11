"""Least privilege against a hostile spec: the operator reads only labelled Secrets, refuses what
the cluster's policy forbids before anything runs, and the CRD reserves the contract's env."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Callable, Iterator

import pytest
from kubernetes.client.rest import ApiException
from opkit import NO_NODE, Kit, Operator, secret, telegram_conn

from switchboard_operator.secrets import CREDENTIALS_LABEL
from switchboard_testkit.controlplane import wait_for


def test_only_labelled_secrets_reach_the_operator(kit: Kit, operator: Operator) -> None:
    for i in range(20):  # unrelated Secrets of the namespace, as Helm's release Secrets are
        kit.core.create_namespaced_secret(kit.ns, {"metadata": {"name": f"unrelated-{i}"},
                                                   "stringData": {"blob": "x" * 4096}})
    kit.core.create_namespaced_secret(kit.ns, secret("tg"))
    kit.create(telegram_conn("bot"))
    wait_for(lambda: kit.deployment("bot").spec.replicas == 1, 30, "the gateway Deployment")
    assert operator.metric("switchboard_secrets_cached") == 1

    # Deleted (or no longer labelled): its digests go too.
    kit.core.delete_namespaced_secret("tg", kit.ns)
    wait_for(lambda: operator.metric("switchboard_secrets_cached") == 0, 15,
             "the deleted Secret to leave the cache")
    kit.wait_ready("bot", "False", "SecretMissing")


def test_an_unlabelled_secret_says_what_to_do_and_labelling_heals(
        kit: Kit, operator: Operator) -> None:
    unlabelled = secret("tg")
    del unlabelled["metadata"]["labels"]
    kit.core.create_namespaced_secret(kit.ns, unlabelled)
    kit.create(telegram_conn("bot"))
    ready = kit.wait_ready("bot", "False", "SecretMissing")
    assert f"kubectl label secret tg {CREDENTIALS_LABEL}=true" in ready["message"]
    (warning,) = kit.events("bot", "SecretMissing")
    assert warning.type == "Warning" and "not labelled" in warning.message
    assert kit.deployment("bot").spec.replicas == 0

    kit.core.patch_namespaced_secret("tg", kit.ns,
                                     {"metadata": {"labels": {CREDENTIALS_LABEL: "true"}}})
    wait_for(lambda: kit.deployment("bot").spec.replicas == 1, 15, "scaled to 1")


@pytest.mark.parametrize("name", ["SWITCHBOARD_API_BASE_URL", "switchboard_backend_url",
                                  "HTTPS_PROXY", "https_proxy", "All_Proxy", "NO_PROXY"])
def test_reserved_and_proxy_env_names_are_refused_at_apply(kit: Kit, name: str) -> None:
    body = telegram_conn("bot", gateway={"env": [{"name": name, "value": "http://evil:3128"}]})
    with pytest.raises(ApiException) as refused:
        kit.create(body)
    assert refused.value.status == 422
    assert "reserved" in json.loads(refused.value.body)["message"]


def test_value_from_with_an_unknown_source_is_refused_at_apply(kit: Kit) -> None:
    body = telegram_conn("bot", gateway={"env": [
        {"name": "X", "valueFrom": {"secretKeyRef": {"name": "a", "key": "b"},
                                    "configMapKeyRef": {"name": "c", "key": "d"}}}]})
    with pytest.raises(ApiException) as refused:
        kit.create(body)
    assert refused.value.status == 422


class Listener:
    """A TCP listener of the test's own on 127.0.0.1 that counts who connects."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.accepted = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted += 1
            conn.close()


@pytest.fixture
def listener() -> Iterator[Listener]:
    it = Listener()
    yield it
    it.sock.close()


def test_exfiltration_through_api_base_url_is_refused_before_anything_runs(
        kit: Kit, start_operator: Callable[..., Operator], listener: Listener) -> None:
    # The cluster's default policy (no --policy: official hosts over https only).
    start_operator("strict", "--policy", "{}")
    db = secret("db-credentials", password="s3cret-db-password")
    kit.core.create_namespaced_secret(kit.ns, db)
    # No NO_NODE selector: a gateway created for this spec would run on the local node.
    body = telegram_conn("thief", "db-credentials",
                         apiBaseURL=f"http://127.0.0.1:{listener.port}/bot",
                         gateway={"image": "attacker.example/gw:1"})
    body["spec"]["telegram"]["tokenSecretRef"]["key"] = "password"
    kit.create(body)

    ready = kit.wait_ready("thief", "False", "PolicyViolation")
    assert "127.0.0.1" in ready["message"] and "attacker.example/gw:1" in ready["message"]
    (warning,) = kit.events("thief", "PolicyViolation")
    assert warning.type == "Warning"
    with pytest.raises(ApiException) as absent:
        kit.deployment("thief")
    assert absent.value.status == 404
    assert kit.pods("thief") == [] and listener.accepted == 0
    assert "s3cret-db-password" not in json.dumps(kit.get("thief"))


def test_a_tightened_policy_scales_a_running_gateway_to_zero(
        kit: Kit, start_operator: Callable[..., Operator]) -> None:
    first = start_operator("lenient", "--standalone", "--policy", json.dumps(
        {"insecureAPIHosts": ["127.0.0.1"], "allowNodeSelector": True,
         "allowTolerations": True}))
    kit.core.create_namespaced_secret(kit.ns, secret("tg"))
    kit.create(telegram_conn("bot", gateway={"nodeSelector": NO_NODE,
                                             "tolerations": [{"operator": "Exists"}]}))
    wait_for(lambda: kit.deployment("bot").spec.replicas == 1, 30, "replicas 1")
    first.stop()
    # The same operator restarted with the admin's stricter policy: no tolerations.
    start_operator("strict", "--standalone", "--policy",
                   json.dumps({"insecureAPIHosts": ["127.0.0.1"], "allowNodeSelector": True}))
    ready = kit.wait_ready("bot", "False", "PolicyViolation")
    assert "tolerations" in ready["message"]
    wait_for(lambda: kit.deployment("bot").spec.replicas == 0, 15, "scaled to 0")
