"""The cluster admin's policy for what a PlatformConnection may ask for. Pure.

The chart renders the same policy twice: as the operator's ``--policy`` (checked here, before
anything is created: defence in depth, and the only check on clusters without the admission
policy) and as a ValidatingAdmissionPolicy (refused at ``kubectl apply``). The rules must say
the same thing; tests/chart compares both on the same specs.

- ``spec.apiBaseURL``: its host must be listed. https only, unless the host is also listed as
  insecure. The default lists only the platforms' official endpoints. The gateway sends the
  credential to this host, so it decides who receives the token.
- ``spec.gateway.image``: unset (the operator's own gateway image), that image, or listed
  (an entry ending in ``*`` is a prefix).
- ``spec.gateway.env[].valueFrom``, ``tolerations``, ``nodeSelector``: off unless allowed.
- ``spec.delivery.webhook.url``: its host must match ``webhookHosts`` (``*`` any host, the
  default; ``*.example.com`` its subdomains; otherwise exact), https only unless the host is
  listed in ``insecureWebhookHosts``. The platform posts every message to this URL.
- ``spec.delivery.webhook.ingress``: allowed unless ``allowIngress`` is false; its annotation
  keys must match ``ingressAnnotations`` (an entry ending in ``*`` is a prefix; default
  ``cert-manager.io/*`` only): controllers' annotations can carry configuration (ingress-nginx
  snippets), which would let a namespace user configure the cluster's ingress controller.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

# Where the gateways go when spec.apiBaseURL is unset (telegram.py, qqbot.py), and the QQ
# sandbox.
OFFICIAL_API_HOSTS = ("api.telegram.org", "api.sgroup.qq.com", "sandbox.api.sgroup.qq.com",
                      "bots.qq.com")

# JSON keys of --policy (the chart's values.policy) -> field names.
_KEYS = {"apiHosts": "api_hosts", "insecureAPIHosts": "insecure_api_hosts",
         "images": "images", "allowEnvValueFrom": "env_value_from",
         "allowTolerations": "tolerations", "allowNodeSelector": "node_selector",
         "webhookHosts": "webhook_hosts", "insecureWebhookHosts": "insecure_webhook_hosts",
         "allowIngress": "ingress", "ingressAnnotations": "ingress_annotations"}


class PolicyError(ValueError):
    """The policy itself is malformed (a startup error, not a connection's)."""


@dataclass(frozen=True)
class Policy:
    api_hosts: tuple[str, ...] = OFFICIAL_API_HOSTS
    insecure_api_hosts: tuple[str, ...] = ()
    images: tuple[str, ...] = ()
    env_value_from: bool = False
    tolerations: bool = False
    node_selector: bool = False
    webhook_hosts: tuple[str, ...] = ("*",)
    insecure_webhook_hosts: tuple[str, ...] = ()
    ingress: bool = True
    ingress_annotations: tuple[str, ...] = ("cert-manager.io/*",)

    @classmethod
    def from_json(cls, text: str) -> Policy:
        try:
            raw = json.loads(text)
        except json.JSONDecodeError as exc:
            raise PolicyError(f"--policy is not JSON: {exc}") from None
        if not isinstance(raw, dict):
            raise PolicyError("--policy must be a JSON object")
        unknown = sorted(set(raw) - set(_KEYS))
        if unknown:
            raise PolicyError(f"--policy has unknown keys {unknown}; known: {sorted(_KEYS)}")
        values: dict[str, Any] = {}
        defaults = cls()
        for key, value in raw.items():
            name = _KEYS[key]
            if isinstance(getattr(defaults, name), bool):
                if not isinstance(value, bool):
                    raise PolicyError(f"--policy {key} must be true or false")
                values[name] = value
            else:
                if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                    raise PolicyError(f"--policy {key} must be a list of strings")
                values[name] = tuple(value)
        return cls(**values)


def _image_allowed(image: str, own: str, allowed: Sequence[str]) -> bool:
    return image == own or _prefix_matches(image, allowed)


def _host_matches(host: str, patterns: Sequence[str]) -> bool:
    return any(p == "*" or (p.startswith("*.") and host.endswith(p[1:])) or host == p.lower()
               for p in patterns)


def _prefix_matches(value: str, patterns: Sequence[str]) -> bool:
    return any(value.startswith(p[:-1]) if p.endswith("*") else value == p for p in patterns)


def _webhook_violations(spec: Mapping[str, Any], policy: Policy) -> list[str]:
    webhook = (spec.get("delivery") or {}).get("webhook") or {}
    if not webhook.get("url"):
        return []
    out: list[str] = []
    parts = urlsplit(webhook["url"])
    host = (parts.hostname or "").lower()
    if not _host_matches(host, policy.webhook_hosts) \
            and not _host_matches(host, policy.insecure_webhook_hosts):
        out.append(f"spec.delivery.webhook.url host {host!r} is not allowed by the cluster's "
                   f"policy (allowed: {', '.join(policy.webhook_hosts) or 'none'})")
    elif parts.scheme != "https" and not _host_matches(host, policy.insecure_webhook_hosts):
        out.append(f"spec.delivery.webhook.url must use https for host {host!r} (the "
                   f"cluster's policy allows http only for: "
                   f"{', '.join(policy.insecure_webhook_hosts) or 'no host'})")
    ingress = webhook.get("ingress")
    if ingress is not None and not policy.ingress:
        out.append("spec.delivery.webhook.ingress is not allowed by the cluster's policy "
                   "(route to the gateway's Service yourself)")
    elif ingress is not None:
        refused = sorted(k for k in ingress.get("annotations") or {}
                         if not _prefix_matches(k, policy.ingress_annotations))
        if refused:
            out.append(f"spec.delivery.webhook.ingress.annotations {', '.join(refused)} "
                       f"not allowed by the cluster's policy (allowed: "
                       f"{', '.join(policy.ingress_annotations) or 'none'})")
    return out


def violations(spec: Mapping[str, Any], policy: Policy, own_image: str) -> list[str]:
    """What in ``spec`` the policy refuses, one sentence each (empty: allowed)."""
    out: list[str] = []
    base = spec.get("apiBaseURL")
    if base:
        parts = urlsplit(base)
        host = (parts.hostname or "").lower()
        if host not in policy.api_hosts and host not in policy.insecure_api_hosts:
            out.append(f"spec.apiBaseURL host {host!r} is not allowed by the cluster's "
                       f"policy (allowed: {', '.join(policy.api_hosts) or 'none'})")
        elif parts.scheme != "https" and host not in policy.insecure_api_hosts:
            out.append(f"spec.apiBaseURL must use https for host {host!r} (the cluster's "
                       f"policy allows http only for: "
                       f"{', '.join(policy.insecure_api_hosts) or 'no host'})")
    gateway = spec.get("gateway") or {}
    image = gateway.get("image")
    if image and not _image_allowed(image, own_image, policy.images):
        out.append(f"spec.gateway.image {image!r} is not allowed by the cluster's policy "
                   f"(allowed: the operator's gateway image {own_image}"
                   f"{''.join(', ' + p for p in policy.images)})")
    if not policy.env_value_from and any("valueFrom" in e for e in gateway.get("env") or []):
        out.append("spec.gateway.env[].valueFrom is not allowed by the cluster's policy "
                   "(it would let the gateway read other Secrets or ConfigMaps)")
    if not policy.tolerations and gateway.get("tolerations"):
        out.append("spec.gateway.tolerations is not allowed by the cluster's policy")
    if not policy.node_selector and gateway.get("nodeSelector"):
        out.append("spec.gateway.nodeSelector is not allowed by the cluster's policy")
    out += _webhook_violations(spec, policy)
    return out
