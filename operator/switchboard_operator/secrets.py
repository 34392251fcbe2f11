"""The credentials Secret a PlatformConnection references. Pure, plus a tiny cache.

The operator never keeps secret values: the cache holds, per Secret, a SHA-256 digest per key.
That is enough to tell "missing" (condition SecretMissing) and to put a hash of the referenced
keys on the pod template, so a rotation rolls the gateway.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

Key = tuple[str, str]  # (namespace, name)

# The operator reads only Secrets that carry this label (watches.py): an unrelated Secret
# never reaches its memory, and a user decides which Secrets a connection may use.
CREDENTIALS_LABEL = "switchboard.dev/credentials"
CREDENTIALS_VALUE = "true"


@dataclass(frozen=True)
class SecretRef:
    name: str
    # env var name -> key in the Secret
    keys: Mapping[str, str]


def reference(spec: Mapping[str, Any]) -> SecretRef | None:
    """The Secret and keys spec.<platform> points at (None if the spec has none)."""
    platform = spec.get("platform")
    if platform == "telegram":
        ref = (spec.get("telegram") or {}).get("tokenSecretRef") or {}
        if not ref.get("name"):
            return None
        return SecretRef(ref["name"], {"SWITCHBOARD_TELEGRAM_TOKEN": ref.get("key", "token")})
    if platform == "qqbot":
        ref = (spec.get("qqbot") or {}).get("credentialsSecretRef") or {}
        if not ref.get("name"):
            return None
        return SecretRef(ref["name"], {
            "SWITCHBOARD_QQ_APP_ID": ref.get("appIdKey", "appId"),
            "SWITCHBOARD_QQ_CLIENT_SECRET": ref.get("clientSecretKey", "clientSecret"),
        })
    return None


def digests(secret: Mapping[str, Any]) -> dict[str, str]:
    """Per-key SHA-256 of a Secret's data (values are base64 in the API object)."""
    out: dict[str, str] = {}
    for key, value in (secret.get("data") or {}).items():
        out[key] = hashlib.sha256(base64.b64decode(value or "")).hexdigest()
    for key, value in (secret.get("stringData") or {}).items():  # never in reads; harmless
        out[key] = hashlib.sha256(str(value).encode()).hexdigest()
    return out


def missing(ref: SecretRef | None, cached: Mapping[str, str] | None, *,
            unlabelled: bool = False) -> str | None:
    """A description of what is missing and what to do (the SecretMissing message), or None.

    ``unlabelled``: the Secret exists but lacks the credentials label, so the operator does
    not read it."""
    if ref is None:
        return "the spec references no credentials Secret"
    if cached is None and unlabelled:
        return (f"Secret {ref.name} is not labelled {CREDENTIALS_LABEL}={CREDENTIALS_VALUE} "
                f"(the operator reads only labelled Secrets): kubectl label secret {ref.name} "
                f"{CREDENTIALS_LABEL}={CREDENTIALS_VALUE}")
    if cached is None:
        return (f"Secret {ref.name} not found (create it with the label "
                f"{CREDENTIALS_LABEL}={CREDENTIALS_VALUE})")
    absent = sorted({k for k in ref.keys.values() if k not in cached})
    if absent:
        keys = ", ".join(repr(k) for k in absent)
        return f"Secret {ref.name} has no key {keys}"
    return None


def referenced_hash(ref: SecretRef | None, cached: Mapping[str, str] | None) -> str:
    """A hash of the referenced keys' values only: rotating an unrelated key rolls nothing."""
    if ref is None or cached is None:
        return ""
    h = hashlib.sha256()
    for key in sorted(set(ref.keys.values())):
        h.update(f"{key}={cached.get(key, '')};".encode())
    return h.hexdigest()[:16]


class SecretCache:
    """Digests of Secrets, fed by the Secret watch; plus which connections reference which."""

    def __init__(self) -> None:
        self.digests: dict[Key, dict[str, str]] = {}
        self.referrers: dict[Key, set[Key]] = {}
        # connection -> the Secrets it uses (its credentials, its webhook's secret token)
        self.uses: dict[Key, tuple[Key, ...]] = {}

    def store(self, namespace: str, name: str, secret: Mapping[str, Any]) -> bool:
        """Remember a Secret; True when its digests changed."""
        new = digests(secret)
        changed = self.digests.get((namespace, name)) != new
        self.digests[(namespace, name)] = new
        return changed

    def drop(self, namespace: str, name: str) -> None:
        self.digests.pop((namespace, name), None)

    def get(self, namespace: str, name: str) -> dict[str, str] | None:
        return self.digests.get((namespace, name))

    def refer(self, connection: Key, *names: str) -> None:
        """Record that ``connection`` uses the Secrets ``names`` (and no other)."""
        self.unrefer(connection)
        secrets = tuple((connection[0], name) for name in names)
        for secret in secrets:
            self.referrers.setdefault(secret, set()).add(connection)
        if secrets:
            self.uses[connection] = secrets

    def unrefer(self, connection: Key) -> None:
        for secret in self.uses.pop(connection, ()):
            users = self.referrers.get(secret, set())
            users.discard(connection)
            if not users:
                self.referrers.pop(secret, None)

    def users(self, namespace: str, name: str) -> set[Key]:
        return set(self.referrers.get((namespace, name), ()))
