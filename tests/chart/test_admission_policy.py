"""The chart's ValidatingAdmissionPolicy refuses at `kubectl apply` exactly what the operator's
own policy check (policy.py) refuses, with the same values, on the real API server."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import yaml
from test_chart import CHART, helm

from switchboard_operator.policy import Policy, violations
from switchboard_testkit.cluster import Cluster
from switchboard_testkit.controlplane import wait_for

OWN = "ghcr.io/switchboard-dev/switchboard:0.1.0"  # the chart's default image
VALUES = ("--set", "policy.insecureAPIHosts={127.0.0.1}",
          "--set", "policy.images={registry.example/bots/*}",
          "--set", "policy.webhookHosts={*.bots.example,hooks.example}",
          "--set", "policy.insecureWebhookHosts={plain.example}")
SAME = Policy(insecure_api_hosts=("127.0.0.1",), images=("registry.example/bots/*",),
              webhook_hosts=("*.bots.example", "hooks.example"),
              insecure_webhook_hosts=("plain.example",))


def webhook(url: str, **extra: Any) -> dict[str, Any]:
    return {"delivery": {"mode": "webhook", "webhook": {"url": url, **extra}}}


CASES: list[dict[str, Any]] = [
    {},
    {"apiBaseURL": "https://api.telegram.org/bot"},
    {"apiBaseURL": "https://API.telegram.org:8443/bot"},
    {"apiBaseURL": "https://api.telegram.org.evil.example/bot"},
    {"apiBaseURL": "http://api.telegram.org/bot"},
    {"apiBaseURL": "http://127.0.0.1:8081/bot"},
    {"apiBaseURL": "https://attacker.example/bot"},
    {"gateway": {"image": OWN}},
    {"gateway": {"image": "registry.example/bots/gw:2"}},
    {"gateway": {"image": "registry.example/other/gw:2"}},
    {"gateway": {"image": "attacker.example/gw:1"}},
    {"gateway": {"env": [{"name": "A", "value": "1"}]}},
    {"gateway": {"env": [{"name": "A", "valueFrom": {"secretKeyRef": {"name": "db",
                                                                       "key": "password"}}}]}},
    {"gateway": {"tolerations": [{"operator": "Exists"}]}},
    {"gateway": {"nodeSelector": {"kubernetes.io/hostname": "control-plane"}}},
    webhook("https://tg.bots.example/hook"),
    webhook("https://TG.Bots.Example:8443/hook"),
    webhook("https://bots.example.evil/hook"),
    webhook("https://bots.example/hook"),  # *.bots.example is its subdomains only
    webhook("https://hooks.example/tg/one"),
    webhook("http://hooks.example/tg/one"),
    webhook("http://plain.example/tg"),
    webhook("https://attacker.example/tg"),
    webhook("https://hooks.example/tg", ingress={
        "className": "nginx", "annotations": {"cert-manager.io/cluster-issuer": "le"}}),
    webhook("https://hooks.example/tg", ingress={"annotations": {
        "nginx.ingress.kubernetes.io/configuration-snippet": "more_set_headers x"}}),
]


def connection(name: str, extra: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": "switchboard.dev/v1alpha1", "kind": "PlatformConnection",
            "metadata": {"name": name},
            "spec": {"platform": "telegram", "telegram": {"tokenSecretRef": {"name": "tg"}},
                     "backend": {"echo": True}, **extra}}


@pytest.fixture
def admission_policy(cluster: Cluster, namespace: str) -> Iterator[str]:
    """The chart's policy and binding, renamed and bound to this test's namespace only (a
    cluster-wide binding would refuse the other tests' fakes)."""
    cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f",
                    str(CHART.parents[1] / "crds" / "platformconnections.switchboard.dev.yaml"))
    out = helm(cluster, "template", "sb", str(CHART), *VALUES,
               "--show-only", "templates/admissionpolicy.yaml").stdout
    vap, binding = [d for d in yaml.safe_load_all(out) if d]
    name = f"sb-test-{uuid.uuid4().hex[:6]}"
    vap["metadata"]["name"] = binding["metadata"]["name"] = binding["spec"]["policyName"] = name
    binding["spec"]["matchResources"] = {"namespaceSelector": {
        "matchLabels": {"kubernetes.io/metadata.name": namespace}}}
    cluster.kubectl("apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List",
                                                          "items": [vap, binding]}))
    yield name
    cluster.kubectl("delete", "validatingadmissionpolicybinding,validatingadmissionpolicy",
                    name, "--ignore-not-found")


def refusal(cluster: Cluster, namespace: str, body: dict[str, Any]) -> str | None:
    result = cluster.kubectl("-n", namespace, "apply", "--dry-run=server", "-f", "-",
                             input=json.dumps(body), check=False)
    if result.returncode == 0:
        return None
    return result.stderr


def test_admission_policy_refuses_what_the_operator_refuses(
        cluster: Cluster, namespace: str, admission_policy: str) -> None:
    # A new policy takes effect once the API server has compiled it.
    attack = connection("probe", {"apiBaseURL": "https://attacker.example/bot"})
    wait_for(lambda: refusal(cluster, namespace, attack), 30, "the policy to take effect")

    for i, extra in enumerate(CASES):
        refused = refusal(cluster, namespace, connection(f"case-{i}", extra))
        expected = violations(extra, SAME, OWN)
        assert (refused is not None) == bool(expected), (extra, refused, expected)
        if refused is not None:
            assert admission_policy in refused and "cluster's policy" in refused, refused
