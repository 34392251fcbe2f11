"""Webhook delivery's children: the gateway's Service, the optional Ingress, and the Secret
that holds the webhook's secret token. Pure builders, like children.py.

The platform posts to spec.delivery.webhook.url; something (the Ingress made here, or the
user's own routing) forwards that to the Service ``<name>-gateway`` port 80 (``webhook``), which
selects the gateway pod's port 8443. Telegram sends the secret token back in the header
X-Telegram-Bot-Api-Secret-Token of every request, so only the platform (which was told the
token by setWebhook) can post updates the gateway accepts.

The token is generated once per connection by the operator and kept in a Secret it owns
(``<name>-gateway-webhook``, key ``secretToken``), labelled like credentials Secrets so the
operator's Secret watch holds its digest (never the value): a rotation (the Secret deleted by
hand is created again with a new token) rolls the gateway, which sets the webhook again.
The Secret stays when the connection goes back to polling (the operator may create Secrets,
not delete them); the garbage collector removes it with the connection.
"""

from __future__ import annotations

import base64
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from switchboard_contract import Delivery
from switchboard_operator import secrets as sec

# children.py imports this module for its builders; these need children's names and labels
# only when called, so a lazy import breaks the cycle.

CONTAINER_PORT = 8443
SERVICE_PORT = 80
PORT_NAME = "webhook"
SECRET_SUFFIX = "-gateway-webhook"
TOKEN_KEY = "secretToken"
TOKEN_ENV = "SWITCHBOARD_WEBHOOK_SECRET_TOKEN"
# 32 random bytes, URL-safe base64: 43 characters of A-Z a-z 0-9 _ -, the alphabet Telegram
# allows for secret_token (1-256 characters).
TOKEN_BYTES = 32


@dataclass(frozen=True)
class Webhook:
    url: str
    host: str
    path: str
    max_connections: int
    ingress: Mapping[str, Any] | None = field(default=None)


def settings(spec: Mapping[str, Any]) -> Webhook | None:
    """The webhook of a spec in webhook mode; None in polling mode."""
    delivery = spec.get("delivery") or {}
    webhook = delivery.get("webhook") or {}
    if delivery.get("mode") != Delivery.WEBHOOK or not webhook.get("url"):
        return None
    parts = urlsplit(webhook["url"])
    return Webhook(url=webhook["url"], host=(parts.hostname or "").lower(),
                   path=parts.path or "/", max_connections=int(webhook.get("maxConnections", 40)),
                   ingress=webhook.get("ingress"))


def secret_name(connection: str) -> str:
    return f"{connection}{SECRET_SUFFIX}"


def token_ref(connection: str) -> sec.SecretRef:
    return sec.SecretRef(secret_name(connection), {TOKEN_ENV: TOKEN_KEY})


def new_token() -> str:
    return secrets.token_urlsafe(TOKEN_BYTES)


def token_secret(body: Mapping[str, Any], token: str) -> dict[str, Any]:
    """The Secret to create (once: applying it again would replace the token)."""
    from switchboard_operator import children

    name = body["metadata"]["name"]
    meta = {"name": secret_name(name), "namespace": body["metadata"]["namespace"],
            "labels": {**children.labels(name), sec.CREDENTIALS_LABEL: sec.CREDENTIALS_VALUE},
            "ownerReferences": [children.owner_reference(body)]}
    return {"apiVersion": "v1", "kind": "Secret", "metadata": meta, "type": "Opaque",
            "data": {TOKEN_KEY: base64.b64encode(token.encode()).decode()}}


def service(body: Mapping[str, Any]) -> dict[str, Any]:
    from switchboard_operator import children

    name = body["metadata"]["name"]
    return {
        "apiVersion": "v1", "kind": "Service", "metadata": children.child_meta(body),
        "spec": {"type": "ClusterIP", "selector": children.pod_selector(name),
                 "ports": [{"name": PORT_NAME, "port": SERVICE_PORT, "targetPort": PORT_NAME,
                            "protocol": "TCP"}]},
    }


def ingress(body: Mapping[str, Any], hook: Webhook) -> dict[str, Any]:
    from switchboard_operator import children

    settings_ = hook.ingress or {}
    meta = children.child_meta(body)
    if settings_.get("annotations"):
        meta["annotations"] = dict(settings_["annotations"])
    backend = {"service": {"name": meta["name"], "port": {"name": PORT_NAME}}}
    spec: dict[str, Any] = {"rules": [{"host": hook.host, "http": {"paths": [
        {"path": hook.path, "pathType": "Exact", "backend": backend}]}}]}
    if settings_.get("className"):
        spec["ingressClassName"] = settings_["className"]
    if settings_.get("tlsSecretName"):
        spec["tls"] = [{"hosts": [hook.host], "secretName": settings_["tlsSecretName"]}]
    return {"apiVersion": "networking.k8s.io/v1", "kind": "Ingress", "metadata": meta,
            "spec": spec}


def build(body: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The Service and (when asked) the Ingress of a webhook connection; [] when polling."""
    hook = settings(body.get("spec") or {})
    if hook is None:
        return []
    objs = [service(body)]
    if hook.ingress is not None:
        objs.append(ingress(body, hook))
    return objs


def env(body: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The gateway's webhook environment (docs/design.md); [] when polling."""
    hook = settings(body.get("spec") or {})
    if hook is None:
        return []
    env: list[dict[str, Any]] = [
        {"name": "SWITCHBOARD_DELIVERY", "value": str(Delivery.WEBHOOK)},
        {"name": "SWITCHBOARD_WEBHOOK_URL", "value": hook.url},
        {"name": "SWITCHBOARD_WEBHOOK_PORT", "value": str(CONTAINER_PORT)},
    ]
    if needs_token(body.get("spec") or {}):
        ref = token_ref(body["metadata"]["name"])
        env += [{"name": "SWITCHBOARD_WEBHOOK_MAX_CONNECTIONS",
                 "value": str(hook.max_connections)},
                {"name": TOKEN_ENV,
                 "valueFrom": {"secretKeyRef": {"name": ref.name, "key": TOKEN_KEY}}}]
    return env


def needs_token(spec: Mapping[str, Any]) -> bool:
    """Telegram webhooks carry our secret token; QQ signs its callbacks with the bot secret."""
    return settings(spec) is not None and spec.get("platform") == "telegram"
