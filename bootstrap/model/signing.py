"""Ed25519 signatures over the topic prefix and the canonical JSON of a desired document.

Signed bytes: the UTF-8 topic prefix (``cloudstack/bootstrap/v1``), one NUL byte (which no
MQTT topic may contain), then the canonical JSON: every field but ``signature``, keys
sorted, no spaces, UTF-8. Binding the prefix means a document signed for staging
(``staging/bootstrap/v1``) does not verify on production hosts with the same key. Any
client (not only ours) can produce these bytes, so documents signed elsewhere verify here.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
)

from bootstrap.errors import SignatureError
from bootstrap.model.document import Document, Signature


def canonical_bytes(document: Document | Mapping[str, Any]) -> bytes:
    """The canonical JSON of every field but ``signature``."""
    data = document.to_json() if isinstance(document, Document) else dict(document)
    data.pop("signature", None)
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def signed_bytes(document: Document | Mapping[str, Any], prefix: str) -> bytes:
    """What a signature covers: ``prefix``, NUL, the canonical JSON."""
    return prefix.encode() + b"\0" + canonical_bytes(document)


def sign(document: Document, key_id: str, key: Ed25519PrivateKey, *, prefix: str) -> Document:
    """``document`` signed for the hosts under topic ``prefix`` (and only those)."""
    signature = base64.b64encode(key.sign(signed_bytes(document, prefix))).decode()
    return document.model_copy(update={"signature": Signature(key_id=key_id, ed25519=signature)})


def verify(document: Document, trusted: Mapping[str, Ed25519PublicKey], *, prefix: str) -> None:
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
        key.verify(base64.b64decode(sig.ed25519, validate=True), signed_bytes(document, prefix))
    except (InvalidSignature, binascii.Error, ValueError) as exc:
        raise SignatureError("bad signature", field="signature.ed25519") from exc


def private_key_bytes(key: Ed25519PrivateKey) -> bytes:
    return key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())


def public_key_text(key: Ed25519PublicKey) -> str:
    """A public key as base64 of its 32 raw bytes (what ``trusted_keys`` lists)."""
    return base64.b64encode(key.public_bytes(Encoding.Raw, PublicFormat.Raw)).decode()


def load_public_key(text: str) -> Ed25519PublicKey:
    try:
        return Ed25519PublicKey.from_public_bytes(base64.b64decode(text.strip(), validate=True))
    except (binascii.Error, ValueError) as exc:
        raise SignatureError(f"not an Ed25519 public key: {exc}", field="trusted_keys") from exc


def load_private_key(raw: bytes) -> Ed25519PrivateKey:
    """A private key file: base64 of the 32 raw bytes (what ``csboot keygen`` writes)."""
    try:
        return Ed25519PrivateKey.from_private_bytes(base64.b64decode(raw.strip(), validate=True))
    except (binascii.Error, ValueError) as exc:
        raise SignatureError(f"not an Ed25519 private key: {exc}", field="key") from exc
