"""Ed25519 signatures over canonical JSON."""

from __future__ import annotations

import base64

import pytest

from bootstrap.errors import SignatureError
from bootstrap.model import parse_document
from bootstrap.model.document import Signature
from bootstrap.model.signing import (
    canonical_bytes,
    generate_key,
    load_private_key,
    load_public_key,
    private_key_bytes,
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
    key = generate_key()
    signed = sign(parse_document(DOC), "ops-2026", key, prefix=PREFIX)
    again = parse_document(signed.to_json())  # as another client would receive it
    verify(again, {"ops-2026": load_public_key(public_key_text(key.verify_key))}, prefix=PREFIX)


def test_canonical_json_ignores_key_order_and_the_signature() -> None:
    shuffled = dict(reversed(list(DOC.items())))
    assert canonical_bytes(parse_document(shuffled)) == canonical_bytes(parse_document(DOC))
    assert b"signature" not in canonical_bytes(
        sign(parse_document(DOC), "k", generate_key(), prefix=PREFIX)
    )


@pytest.mark.parametrize("case", ["unsigned", "unknown-key", "tampered", "wrong-key", "garbage"])
def test_bad_signatures_are_rejected_naming_the_field(case: str) -> None:
    key, other = generate_key(), generate_key()
    trusted = {"ops": key.verify_key}
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
    key = generate_key()
    trusted = {"ops": key.verify_key}
    staging = sign(parse_document(DOC), "ops", key, prefix="staging/bootstrap/v1")
    verify(staging, trusted, prefix="staging/bootstrap/v1")
    with pytest.raises(SignatureError) as caught:
        verify(staging, trusted, prefix=PREFIX)
    assert caught.value.field == "signature.ed25519"
    # what is signed: the prefix, a NUL byte, the canonical JSON (any tool can build it)
    doc = parse_document(DOC)
    assert signed_bytes(doc, PREFIX) == PREFIX.encode() + b"\0" + canonical_bytes(doc)


def test_signatures_interoperate_with_openssl() -> None:
    """The same Ed25519 as OpenSSL's (here through ``cryptography``, a test-only
    dependency): a document signed there verifies here and ours verifies there, and a key
    file's 32-byte seed is the same private key in both."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    theirs = Ed25519PrivateKey.generate()
    doc = parse_document(DOC)
    signed = doc.model_copy(
        update={
            "signature": Signature(
                key_id="ops",
                ed25519=base64.b64encode(theirs.sign(signed_bytes(doc, PREFIX))).decode(),
            )
        }
    )
    raw_public = theirs.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    verify(
        parse_document(signed.to_json()),
        {"ops": load_public_key(base64.b64encode(raw_public).decode())},
        prefix=PREFIX,
    )

    ours = generate_key()
    same = Ed25519PrivateKey.from_private_bytes(private_key_bytes(ours))
    mine = sign(doc, "ops", ours, prefix=PREFIX)
    assert mine.signature is not None
    same.public_key().verify(base64.b64decode(mine.signature.ed25519), signed_bytes(doc, PREFIX))
    loaded = load_private_key(base64.b64encode(private_key_bytes(ours)))
    assert public_key_text(loaded.verify_key) == public_key_text(ours.verify_key)


@pytest.mark.parametrize(
    ("where", "text"),
    [
        ("public", base64.b64encode(b"\1" * 31).decode()),
        ("public", base64.b64encode(b"\1" * 33).decode()),
        ("public", "not base64!"),
        # 32 bytes but no key anyone could sign with: the identity point (small order),
        # and y = 2^255 - 1, which is not below the field's prime: no point's encoding
        ("public", base64.b64encode(b"\1" + bytes(31)).decode()),
        ("public", base64.b64encode(b"\xff" * 32).decode()),
        ("private", base64.b64encode(b"\1" * 64).decode()),
        ("private", ""),
    ],
)
def test_a_key_of_the_wrong_shape_is_refused_naming_the_field(where: str, text: str) -> None:
    with pytest.raises(SignatureError) as caught:
        if where == "public":
            load_public_key(text)
        else:
            load_private_key(text.encode())
    assert caught.value.field == ("trusted_keys" if where == "public" else "key")


def test_a_signature_with_bytes_appended_is_refused() -> None:
    """libsodium's combined form is signature + message: 64 bytes and no more here, so a
    signature field carrying more than a signature is not read as anything else."""
    key = generate_key()
    signed = sign(parse_document(DOC), "ops", key, prefix=PREFIX).to_json()
    sig = base64.b64decode(signed["signature"]["ed25519"])
    for bad in (sig + b"\0", sig[:63]):
        signed["signature"]["ed25519"] = base64.b64encode(bad).decode()
        with pytest.raises(SignatureError) as caught:
            verify(parse_document(signed), {"ops": key.verify_key}, prefix=PREFIX)
        assert caught.value.field == "signature.ed25519"
