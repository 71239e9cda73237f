"""Ed25519 signatures over the topic prefix and the canonical JSON of a desired document.

Signed bytes: the UTF-8 topic prefix (``cloudstack/bootstrap/v1``), one NUL byte (which no
MQTT topic may contain), then the canonical JSON: every field but ``signature``, keys
sorted, no spaces, UTF-8. Binding the prefix means a document signed for staging
(``staging/bootstrap/v1``) does not verify on production hosts with the same key. Any
client (not only ours) can produce these bytes, so documents signed elsewhere verify here.

Keys are RFC 8032's: a private key is its 32-byte seed, a public key its 32 bytes, as
OpenSSL, ``cryptography`` and libsodium all write them raw. The arithmetic is libsodium's
(PyNaCl): the agent verifies with it alone, ~1 MiB resident where ``cryptography`` (its
own OpenSSL, Rust bindings and serialization) held ~13 MiB of an agent's memory.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping
from typing import Any

from nacl.bindings import crypto_core_ed25519_is_valid_point
from nacl.exceptions import BadSignatureError
from nacl.signing import SigningKey as PrivateKey
from nacl.signing import VerifyKey as PublicKey

from bootstrap.errors import SignatureError
from bootstrap.model.document import Document, Signature

__all__ = [
    "PrivateKey",
    "PublicKey",
    "canonical_bytes",
    "generate_key",
    "load_private_key",
    "load_public_key",
    "private_key_bytes",
    "public_key_text",
    "sign",
    "signed_bytes",
    "verify",
]


def canonical_bytes(document: Document | Mapping[str, Any]) -> bytes:
    """The canonical JSON of every field but ``signature``."""
    data = document.to_json() if isinstance(document, Document) else dict(document)
    data.pop("signature", None)
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def signed_bytes(document: Document | Mapping[str, Any], prefix: str) -> bytes:
    """What a signature covers: ``prefix``, NUL, the canonical JSON."""
    return prefix.encode() + b"\0" + canonical_bytes(document)


def generate_key() -> PrivateKey:
    """A new private key, from the kernel's random source (libsodium's ``randombytes``)."""
    return PrivateKey.generate()


def sign(document: Document, key_id: str, key: PrivateKey, *, prefix: str) -> Document:
    """``document`` signed for the hosts under topic ``prefix`` (and only those)."""
    signature = base64.b64encode(key.sign(signed_bytes(document, prefix)).signature).decode()
    return document.model_copy(update={"signature": Signature(key_id=key_id, ed25519=signature)})


def verify(document: Document, trusted: Mapping[str, PublicKey], *, prefix: str) -> None:
    """Raise :class:`SignatureError` unless signed by one of ``trusted`` (by key id) for
    ``prefix``."""
    if not trusted:
        return
    sig = document.signature
    if sig is None:
        raise SignatureError(
            "unsigned document, and this host trusts only signed ones", field="signature"
        )
    key = trusted.get(sig.key_id)
    if key is None:
        raise SignatureError(f"key {sig.key_id!r} is not trusted here", field="signature.keyId")
    try:
        raw = base64.b64decode(sig.ed25519, validate=True)
        if len(raw) != 64:  # libsodium would read a longer one as signature + message
            raise ValueError(f"{len(raw)} bytes, not 64")
        key.verify(signed_bytes(document, prefix), raw)
    except (BadSignatureError, binascii.Error, ValueError) as exc:
        raise SignatureError("bad signature", field="signature.ed25519") from exc


def private_key_bytes(key: PrivateKey) -> bytes:
    """The key's 32-byte seed (RFC 8032's private key)."""
    return bytes(key)


def public_key_text(key: PublicKey) -> str:
    """A public key as base64 of its 32 raw bytes (what ``trusted_keys`` lists)."""
    return base64.b64encode(bytes(key)).decode()


def _raw32(text: str | bytes, what: str, field: str) -> bytes:
    try:
        raw = base64.b64decode(text.strip(), validate=True)
    except binascii.Error as exc:
        raise SignatureError(f"not an Ed25519 {what}: {exc}", field=field) from exc
    if len(raw) != 32:
        raise SignatureError(f"not an Ed25519 {what}: {len(raw)} bytes, not 32", field=field)
    return raw


def load_public_key(text: str) -> PublicKey:
    """``trusted_keys``' form: base64 of the 32 raw bytes, a point of the curve's main
    subgroup (every real key is; a point of small order would verify forged signatures
    under lax checkers, and libsodium would refuse every signature against it)."""
    raw = _raw32(text, "public key", "trusted_keys")
    if not crypto_core_ed25519_is_valid_point(raw):
        raise SignatureError(
            "not an Ed25519 public key: not a point of the curve's main subgroup",
            field="trusted_keys",
        )
    return PublicKey(raw)


def load_private_key(raw: bytes) -> PrivateKey:
    """A private key file: base64 of the 32-byte seed (what ``csboot keygen`` writes)."""
    return PrivateKey(_raw32(raw, "private key", "key"))
