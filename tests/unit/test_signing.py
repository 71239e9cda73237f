"""Ed25519 signatures over canonical JSON."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from bootstrap.errors import SignatureError
from bootstrap.model import parse_document
from bootstrap.model.signing import (
    canonical_bytes,
    load_public_key,
    public_key_text,
    sign,
    signed_bytes,
    verify,
)

PREFIX = "cloudstack/bootstrap/v1"

DOC = {
    "apiVersion": "cloudstack-bootstrap/v1",
    "kind": "Role",
    "name": "kvm",
    "version": 3,
    "spec": {"hypervisor": "kvm", "agent": {"properties": {"zone": "zé"}}},
}


def test_signed_document_verifies_and_survives_a_json_round_trip() -> None:
    key = Ed25519PrivateKey.generate()
    signed = sign(parse_document(DOC), "ops-2026", key, prefix=PREFIX)
    again = parse_document(signed.to_json())  # as another client would receive it
    verify(again, {"ops-2026": load_public_key(public_key_text(key.public_key()))}, prefix=PREFIX)


def test_canonical_json_ignores_key_order_and_the_signature() -> None:
    shuffled = dict(reversed(list(DOC.items())))
    assert canonical_bytes(parse_document(shuffled)) == canonical_bytes(parse_document(DOC))
    assert b"signature" not in canonical_bytes(
        sign(parse_document(DOC), "k", Ed25519PrivateKey.generate(), prefix=PREFIX)
    )


@pytest.mark.parametrize("case", ["unsigned", "unknown-key", "tampered", "wrong-key", "garbage"])
def test_bad_signatures_are_rejected_naming_the_field(case: str) -> None:
    key, other = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    trusted = {"ops": key.public_key()}
    doc = parse_document(DOC)
    if case == "unknown-key":
        doc = sign(doc, "someone", key, prefix=PREFIX)
    elif case == "tampered":
        doc = sign(doc, "ops", key, prefix=PREFIX).model_copy(update={"version": 4})
    elif case == "wrong-key":
        doc = sign(doc, "ops", other, prefix=PREFIX)
    elif case == "garbage":
        signed = sign(doc, "ops", key, prefix=PREFIX).to_json()
        signed["signature"]["ed25519"] = "!!notbase64"
        doc = parse_document(signed)
    with pytest.raises(SignatureError) as caught:
        verify(doc, trusted, prefix=PREFIX)
    assert caught.value.field.startswith("signature")


def test_no_trusted_keys_means_signatures_are_optional() -> None:
    verify(parse_document(DOC), {}, prefix=PREFIX)


def test_a_signature_is_bound_to_the_topic_prefix() -> None:
    """A document signed for staging does not verify on production hosts (same key)."""
    key = Ed25519PrivateKey.generate()
    trusted = {"ops": key.public_key()}
    staging = sign(parse_document(DOC), "ops", key, prefix="staging/bootstrap/v1")
    verify(staging, trusted, prefix="staging/bootstrap/v1")
    with pytest.raises(SignatureError) as caught:
        verify(staging, trusted, prefix=PREFIX)
    assert caught.value.field == "signature.ed25519"
    # what is signed: the prefix, a NUL byte, the canonical JSON (any tool can build it)
    doc = parse_document(DOC)
    assert signed_bytes(doc, PREFIX) == PREFIX.encode() + b"\0" + canonical_bytes(doc)
