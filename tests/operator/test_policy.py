"""The admin policy's pure checks (policy.py); tests/chart runs the same specs through the
chart's ValidatingAdmissionPolicy on the real API server."""

from __future__ import annotations

from typing import Any

import pytest

from switchboard_operator.policy import Policy, PolicyError, violations

OWN = "ghcr.io/switchboard-dev/switchboard:0.1.0"


def spec(**fields: Any) -> dict[str, Any]:
    return {"platform": "telegram", **fields}


def hook(url: str, **webhook: Any) -> dict[str, Any]:
    return spec(delivery={"mode": "webhook", "webhook": {"url": url, **webhook}})


NGINX_SNIPPET = {"nginx.ingress.kubernetes.io/server-snippet": "location / { return 200; }"}


@pytest.mark.parametrize(("policy", "given", "refused"), [
    (Policy(), spec(), None),
    (Policy(), spec(apiBaseURL="https://api.telegram.org/bot"), None),
    (Policy(), spec(apiBaseURL="https://API.Telegram.org:443/bot"), None),
    (Policy(), spec(apiBaseURL="https://api.telegram.org.evil.example/bot"), "host"),
    (Policy(), spec(apiBaseURL="http://api.telegram.org/bot"), "https"),
    (Policy(), spec(apiBaseURL="http://127.0.0.1:8081/bot"), "host"),
    (Policy(insecure_api_hosts=("127.0.0.1",)), spec(apiBaseURL="http://127.0.0.1:1/bot"),
     None),
    (Policy(), spec(gateway={"image": OWN}), None),
    (Policy(), spec(gateway={"image": "evil.example/gw:1"}), "image"),
    (Policy(images=("registry.example/bots/*",)),
     spec(gateway={"image": "registry.example/bots/gw:2"}), None),
    (Policy(images=("registry.example/bots/*",)),
     spec(gateway={"image": "registry.example/other:2"}), "image"),
    (Policy(), spec(gateway={"env": [{"name": "A", "value": "1"}]}), None),
    (Policy(), spec(gateway={"env": [{"name": "A", "valueFrom": {"secretKeyRef": {
        "name": "db", "key": "password"}}}]}), "valueFrom"),
    (Policy(env_value_from=True), spec(gateway={"env": [{"name": "A", "valueFrom": {}}]}),
     None),
    (Policy(), spec(gateway={"tolerations": [{"operator": "Exists"}]}), "tolerations"),
    (Policy(tolerations=True), spec(gateway={"tolerations": [{"operator": "Exists"}]}), None),
    (Policy(), spec(gateway={"nodeSelector": {"a": "b"}}), "nodeSelector"),
    (Policy(node_selector=True), spec(gateway={"nodeSelector": {"a": "b"}}), None),
    (Policy(), hook("https://bots.example.com/tg"), None),
    (Policy(), hook("http://bots.example.com/tg"), "https"),
    (Policy(webhook_hosts=("*.example.com",)), hook("https://a.b.example.com/tg"), None),
    (Policy(webhook_hosts=("*.example.com",)), hook("https://example.com.evil/tg"), "host"),
    (Policy(webhook_hosts=("hooks.example",)), hook("https://HOOKS.example/tg"), None),
    (Policy(webhook_hosts=()), hook("https://hooks.example/tg"), "host"),
    (Policy(insecure_webhook_hosts=("plain.example",)), hook("http://plain.example/tg"),
     None),
    (Policy(), hook("https://h.example/tg", ingress={
        "annotations": {"cert-manager.io/cluster-issuer": "letsencrypt"}}), None),
    (Policy(), hook("https://h.example/tg", ingress={"annotations": NGINX_SNIPPET}),
     "annotations"),
    (Policy(ingress=False), hook("https://h.example/tg", ingress={}), "ingress"),
])
def test_violations(policy: Policy, given: dict[str, Any], refused: str | None) -> None:
    found = violations(given, policy, OWN)
    if refused is None:
        assert found == []
    else:
        assert len(found) == 1 and refused in found[0]


def test_policy_from_json_names_what_is_wrong() -> None:
    assert Policy.from_json("{}") == Policy()
    assert Policy.from_json('{"images": ["a/*"], "allowTolerations": true}') == Policy(
        images=("a/*",), tolerations=True)
    for bad, says in (("[]", "object"), ('{"apiHost": []}', "unknown"),
                      ('{"images": "a"}', "list"), ('{"allowTolerations": 1}', "true or false"),
                      ("{", "JSON")):
        with pytest.raises(PolicyError, match=says):
            Policy.from_json(bad)
