"""Intake is total (issue 10, items 1, 2, 6, 7, 8, 11): pure, no broker.

Every payload of the issue's reproductions and 10,000 generated ones go through the same
:class:`Desired` the agent uses: each gives a document, a rejection naming a field, or
nothing; never an exception, and never in more than a bounded time.
"""

from __future__ import annotations

import json
import time

import pytest

from bootstrap.agent.desired import Desired, Rejection
from bootstrap.errors import MAX_MESSAGE, InvalidDocument, StaleDocument, TooLarge
from bootstrap.model.document import parse_document
from bootstrap.model.signing import generate_key, sign
from tests.faults.payloads import doc, generated, reproductions

HOST = "h1.lab"
PREFIX = "cloudstack/bootstrap/v1"


@pytest.mark.parametrize("name", sorted(reproductions(HOST)))
def test_every_reproduction_is_a_rejection_naming_its_field(name: str) -> None:
    key, payload, field = reproductions(HOST)[name]
    d = Desired(["kvm"], HOST, {})
    started = time.perf_counter()
    result = d.offer(key, payload)
    assert time.perf_counter() - started < 2.0
    assert isinstance(result, Rejection), result
    assert isinstance(result.error, InvalidDocument)
    assert result.field == field, result.describe()
    assert len(result.describe()) < MAX_MESSAGE + 200  # never the 50 MB echoed back
    assert not d.pending


def test_size_depth_and_digits_are_bounded_before_decoding() -> None:
    d = Desired(["kvm"], HOST, {}, max_bytes=4096)
    big = json.dumps(doc(2, agent={"properties": {"k": "v" * 5000}})).encode()
    result = d.offer("roles/kvm", big)
    assert isinstance(result, Rejection) and isinstance(result.error, TooLarge)
    assert "at most 4096" in result.error.message
    for name in ("big-int", "deep-json", "deep-yaml"):
        _key, payload, _ = reproductions(HOST)[name]
        result = Desired(["kvm"], HOST, {}).offer("roles/kvm", payload)
        assert isinstance(result, Rejection) and isinstance(result.error, TooLarge), name


def test_ten_thousand_generated_payloads_never_raise() -> None:
    payloads = generated(10_000)
    assert len(payloads) == 10_000
    d = Desired(["kvm"], "kvm", {})
    kinds: dict[str, int] = {}
    started = time.perf_counter()
    for i, payload in enumerate(payloads):
        key = "roles/kvm" if i % 2 else "hosts/kvm"
        result = d.offer(key, payload)  # raises nothing, whatever the bytes
        if isinstance(result, Rejection):
            assert isinstance(result.field, str)
            assert result.error.code in {"invalid", "too_large", "stale", "signature"}
            kinds[result.error.code] = kinds.get(result.error.code, 0) + 1
    elapsed = time.perf_counter() - started
    assert kinds.get("invalid", 0) > 5000, kinds
    assert elapsed < 60, elapsed


def test_a_document_arriving_during_an_apply_stays_pending() -> None:
    """Item 2: commit/fail only touch the documents the apply tried."""
    d = Desired(["kvm"], HOST, {})
    assert not isinstance(d.offer("roles/kvm", json.dumps(doc(3)).encode()), Rejection)
    trying = d.candidate()  # the apply of v3 starts
    v4 = d.offer("roles/kvm", json.dumps(doc(4, hypervisor="lxc")).encode())
    assert v4 is not None and not isinstance(v4, Rejection)
    d.commit(trying)  # v3 converged
    assert d.in_force["roles/kvm"].version == 3
    assert d.pending == {"roles/kvm": v4}, "v4 lost"
    # and the same if v3 had failed
    d2 = Desired(["kvm"], HOST, {})
    d2.offer("roles/kvm", json.dumps(doc(3)).encode())
    trying = d2.candidate()
    d2.offer("roles/kvm", json.dumps(doc(4)).encode())
    d2.fail(trying)
    assert d2.pending["roles/kvm"].version == 4 and d2.failed["roles/kvm"].version == 3


def test_a_failed_version_is_not_retried_when_only_its_bytes_change() -> None:
    """Item 7: re-indented, re-signed or re-selected, v4 is the same failed v4."""
    key = generate_key()
    d = Desired(["kvm"], HOST, {"ops": key.verify_key}, prefix=PREFIX)

    def signed(version: int, indent: int | None = None, **extra: object) -> bytes:
        document = sign(parse_document({**doc(version), **extra}), "ops", key, prefix=PREFIX)
        return json.dumps(document.to_json(), indent=indent).encode()

    d.offer("roles/kvm", signed(4))
    d.fail(d.candidate())
    assert d.offer("roles/kvm", signed(4, indent=4)) is None
    assert d.offer("roles/kvm", signed(4, rollout={"id": "r", "hosts": [HOST, "h2"]})) is None
    other = d.offer("roles/kvm", json.dumps(doc(4, hypervisor="lxc")).encode())
    assert isinstance(other, Rejection)  # unsigned
    newer = d.offer("roles/kvm", signed(5))
    assert newer is not None and not isinstance(newer, Rejection)


def test_replays_are_stale_not_invalid_and_redelivery_is_silent() -> None:
    d = Desired(["kvm"], HOST, {})
    first = json.dumps(doc(2)).encode()
    d.offer("roles/kvm", first)
    d.commit(d.candidate())
    assert d.offer("roles/kvm", first) is None  # retained redelivery
    old = d.offer("roles/kvm", json.dumps(doc(1)).encode() + b" ")
    assert isinstance(old, Rejection) and old.replay and old.field == "version"
    assert isinstance(old.error, StaleDocument)
    # the same rejected bytes again: reported once
    assert d.offer("roles/kvm", json.dumps(doc(1)).encode() + b" ") is None
    invalid = d.offer("roles/kvm", b"{")
    assert isinstance(invalid, Rejection) and not invalid.replay


def test_signatures_are_bound_to_the_prefix() -> None:
    key = generate_key()
    staging = sign(parse_document(doc(2)), "ops", key, prefix="staging/bootstrap/v1")
    d = Desired(["kvm"], HOST, {"ops": key.verify_key}, prefix=PREFIX)
    result = d.offer("roles/kvm", json.dumps(staging.to_json()).encode())
    assert isinstance(result, Rejection) and result.field == "signature.ed25519"


def test_one_error_tree_and_every_message_is_clipped() -> None:
    import inspect

    from bootstrap import errors

    classes = [
        c for _, c in inspect.getmembers(errors, inspect.isclass) if c.__module__ == errors.__name__
    ]
    assert {c.__name__ for c in classes} >= {"TooLarge", "InternalError", "RolloutLocked"}
    assert all(issubclass(c, errors.BootstrapError) for c in classes)
    assert len({c.code for c in classes}) == len(classes)  # each says what it is
    huge = errors.InvalidDocument("x" * 50_000_000, field="spec." + "y" * 10_000)
    assert len(huge.message) < 1000 and len(json.dumps(huge.to_json())) < 1000


def test_a_replay_status_is_not_a_rollout_failure() -> None:
    """The rollout judges a host whose last word is ``stale`` by what it runs."""
    from bootstrap.fleet.waves import judge
    from bootstrap.wire.status import parse_status

    stale = parse_status(
        json.dumps(
            {
                "apiVersion": "cloudstack-bootstrap/v1",
                "host": "h1",
                "state": "stale",
                "applied": {"roles": {"kvm": 7}, "host": None},
                "checks": [],
                "error": {"code": "stale", "field": "version", "message": "replay"},
                "at": "2026-12-03T10:00:00.000Z",
            }
        ).encode(),
        host="h1",
    )
    assert judge(stale, role="kvm", version=7, fresh=True) == ("succeeded", "converged")
    assert judge(stale, role="kvm", version=8, fresh=True)[0] is None  # still waiting for v8
