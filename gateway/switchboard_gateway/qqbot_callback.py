"""QQ Bot HTTP callbacks: the Ed25519 signatures, pure (the `cryptography` library signs and
verifies; nothing here is hand-written crypto).

As QQ's docs describe them (bot-docs, develop/api-v2/dev-prepare/interface-framework/sign.md
and event-emit.md):
- the key: the Bot Secret (AppSecret) repeated until it has 32 bytes, its first 32 bytes the
  Ed25519 seed (Go's ``ed25519.GenerateKey(strings.NewReader(seed[:32]))``);
- every callback carries ``X-Signature-Ed25519`` (hex, 64 bytes) over
  ``X-Signature-Timestamp`` + the raw body, made with that key; a request without it, with a
  malformed or wrong one, or with a timestamp outside the freshness window is refused;
- address validation (op 13, ``d: {plain_token, event_ts}``) is answered with
  ``{"plain_token", "signature"}``, the hex signature of event_ts + plain_token;
- every other callback is acknowledged with op 12 (HTTP Callback ACK) once handled.

The callback adapter that serves these is not in this version yet (the CRD refuses webhook
delivery for qqbot); this module is its protocol half, checked against the docs' own vectors.
"""

from __future__ import annotations

import binascii
from dataclasses import dataclass
from enum import Enum
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

SEED_SIZE = 32
SIGNATURE_SIZE = 64
SIGNATURE_HEADER = "X-Signature-Ed25519"
TIMESTAMP_HEADER = "X-Signature-Timestamp"
OP_DISPATCH = 0
OP_CALLBACK_ACK = 12
OP_VALIDATION = 13
# How far X-Signature-Timestamp may be from the gateway's clock (either way): a captured
# request replayed later is refused. QQ documents no window; five minutes is what signed
# webhooks commonly allow (Slack, Stripe) and covers modest clock skew.
FRESHNESS = 300.0


def signing_key(bot_secret: str) -> Ed25519PrivateKey:
    """The bot's Ed25519 key, derived from its secret as QQ derives it."""
    seed = bot_secret.encode()
    if not seed:
        raise ValueError("the bot secret is empty")
    while len(seed) < SEED_SIZE:
        seed = seed * 2
    return Ed25519PrivateKey.from_private_bytes(seed[:SEED_SIZE])


def sign(key: Ed25519PrivateKey, message: bytes) -> str:
    return key.sign(message).hex()


def validation_answer(key: Ed25519PrivateKey, d: Any) -> dict[str, str]:
    """The answer to op 13 (address validation): ``d`` is its payload's ``d``."""
    if not isinstance(d, dict) or not isinstance(d.get("plain_token"), str) \
            or not isinstance(d.get("event_ts"), str):
        raise ValueError("op 13 needs d.plain_token and d.event_ts (strings)")
    token, ts = d["plain_token"], d["event_ts"]
    return {"plain_token": token, "signature": sign(key, (ts + token).encode())}


class Refusal(Enum):
    UNSIGNED = "unsigned"  # no signature or timestamp header
    BAD_SIGNATURE = "signature"  # malformed, or not the bot's key over timestamp + body
    STALE = "stale_timestamp"  # outside the freshness window


@dataclass(frozen=True)
class Check:
    ok: bool
    refusal: Refusal | None = None


def check(public_key: Ed25519PublicKey, signature: str | None, timestamp: str | None,
          body: bytes, *, now: float, freshness: float = FRESHNESS) -> Check:
    """Is this callback the platform's, and fresh? ``now``: the gateway's clock (unix s)."""
    if not signature or not timestamp:
        return Check(False, Refusal.UNSIGNED)
    try:
        raw = binascii.unhexlify(signature)
    except (binascii.Error, ValueError):
        return Check(False, Refusal.BAD_SIGNATURE)
    # The docs' check too: the top three bits of the last byte are zero in a valid signature.
    if len(raw) != SIGNATURE_SIZE or raw[63] & 224:
        return Check(False, Refusal.BAD_SIGNATURE)
    try:
        public_key.verify(raw, timestamp.encode() + body)
    except InvalidSignature:
        return Check(False, Refusal.BAD_SIGNATURE)
    try:
        sent = float(timestamp)
    except ValueError:
        return Check(False, Refusal.STALE)
    if abs(now - sent) > freshness:
        return Check(False, Refusal.STALE)
    return Check(True)


def ack() -> dict[str, int]:
    """The op 12 acknowledgement of a handled callback."""
    return {"op": OP_CALLBACK_ACK}
