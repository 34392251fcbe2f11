"""QQ Bot callback signatures (qqbot_callback.py) against the vectors of QQ's own docs
(bot-docs: develop/api-v2/dev-prepare/interface-framework/sign.md and event-emit.md)."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from switchboard_gateway import qqbot_callback as cb

# The docs' DEMO: the secret, the public key it derives, and a signed callback.
DOCS_SECRET = "naOC0ocQE3shWLAfffVLB1rhYPG7"
DOCS_PUBLIC_KEY = bytes([215, 195, 98, 254, 120, 174, 248, 31, 242, 50, 135, 180, 147, 98, 139,
                         93, 176, 42, 60, 79, 227, 11, 33, 94, 77, 25, 96, 155, 93, 118, 103, 58])
# The page renders the body on one line; the signature is over the body as sent, pretty-printed
# with two-space indents (the one-line rendering does not verify, as others found too).
DOCS_BODY = b'{\n  "op": 0,\n  "d": {},\n  "t": "GATEWAY_EVENT_NAME"\n}'
DOCS_TIMESTAMP = "1725442341"
DOCS_SIGNATURE = ("865ad13a61752ca65e26bde6676459cd36cf1be609375b37bd62af366e1dc25a"
                  "8dc789ba7f14e017ada3d554c671a911bfdf075ba54835b23391d509579ed002")


def public(secret: str = DOCS_SECRET) -> cb.Ed25519PublicKey:
    return cb.signing_key(secret).public_key()


def test_the_key_is_derived_as_the_docs_derive_it() -> None:
    raw = public().public_bytes(Encoding.Raw, PublicFormat.Raw)
    assert raw == DOCS_PUBLIC_KEY


def test_the_docs_signature_is_reproduced_and_verified() -> None:
    key = cb.signing_key(DOCS_SECRET)
    assert cb.sign(key, DOCS_TIMESTAMP.encode() + DOCS_BODY) == DOCS_SIGNATURE
    now = float(DOCS_TIMESTAMP) + 10
    assert cb.check(public(), DOCS_SIGNATURE, DOCS_TIMESTAMP, DOCS_BODY, now=now).ok


@pytest.mark.parametrize(("signature", "timestamp", "body", "refusal"), [
    (None, DOCS_TIMESTAMP, DOCS_BODY, cb.Refusal.UNSIGNED),
    (DOCS_SIGNATURE, None, DOCS_BODY, cb.Refusal.UNSIGNED),
    ("zz" * 64, DOCS_TIMESTAMP, DOCS_BODY, cb.Refusal.BAD_SIGNATURE),
    (DOCS_SIGNATURE[:-2], DOCS_TIMESTAMP, DOCS_BODY, cb.Refusal.BAD_SIGNATURE),
    (DOCS_SIGNATURE, DOCS_TIMESTAMP, DOCS_BODY + b" ", cb.Refusal.BAD_SIGNATURE),
    (DOCS_SIGNATURE, "1725442342", DOCS_BODY, cb.Refusal.BAD_SIGNATURE),
])
def test_unsigned_tampered_or_foreign_callbacks_are_refused(
        signature: str | None, timestamp: str | None, body: bytes, refusal: cb.Refusal) -> None:
    got = cb.check(public(), signature, timestamp, body, now=float(DOCS_TIMESTAMP))
    assert (got.ok, got.refusal) == (False, refusal)
    other = cb.check(public("another-bot-secret"), DOCS_SIGNATURE, DOCS_TIMESTAMP, DOCS_BODY,
                     now=float(DOCS_TIMESTAMP))
    assert other.refusal is cb.Refusal.BAD_SIGNATURE


def test_a_replayed_callback_outside_the_window_is_stale() -> None:
    late = float(DOCS_TIMESTAMP) + cb.FRESHNESS + 1
    got = cb.check(public(), DOCS_SIGNATURE, DOCS_TIMESTAMP, DOCS_BODY, now=late)
    assert got.refusal is cb.Refusal.STALE
    early = float(DOCS_TIMESTAMP) - cb.FRESHNESS - 1
    assert cb.check(public(), DOCS_SIGNATURE, DOCS_TIMESTAMP, DOCS_BODY,
                    now=early).refusal is cb.Refusal.STALE


def test_address_validation_answers_the_docs_example() -> None:
    """event-emit.md's op 13 example: this secret, event_ts and plain_token sign to this."""
    answer = cb.validation_answer(cb.signing_key("DG5g3B4j9X2KOErG"), {
        "plain_token": "Arq0D5A61EgUu4OxUvOp", "event_ts": "1725442341"})
    assert answer == {"plain_token": "Arq0D5A61EgUu4OxUvOp", "signature": (
        "87befc99c42c651b3aac0278e71ada338433ae26fcb24307bdc5ad38c1adc2d0"
        "1bcfcadc0842edac85e85205028a1132afe09280305f13aa6909ffc2d652c706")}


def test_address_validation_signs_event_ts_then_plain_token() -> None:
    key = cb.signing_key(DOCS_SECRET)
    answer = cb.validation_answer(key, {"plain_token": "Arq0D5A61EgUu4OxUvOp",
                                        "event_ts": "1725442341"})
    assert answer["plain_token"] == "Arq0D5A61EgUu4OxUvOp"
    public().verify(bytes.fromhex(answer["signature"]), b"1725442341Arq0D5A61EgUu4OxUvOp")
    with pytest.raises(ValueError, match="plain_token"):
        cb.validation_answer(key, {"event_ts": "1"})
    with pytest.raises(ValueError, match="empty"):
        cb.signing_key("")
    assert cb.ack() == {"op": 12}


def test_a_short_secret_is_repeated_to_32_bytes() -> None:
    assert public("abc").public_bytes(Encoding.Raw, PublicFormat.Raw) == \
        cb.Ed25519PrivateKey.from_private_bytes((b"abc" * 16)[:32]).public_key().public_bytes(
            Encoding.Raw, PublicFormat.Raw)
