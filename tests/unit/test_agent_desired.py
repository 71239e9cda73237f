"""Document intake: replay protection, signatures, merge order, and what is reported."""

from __future__ import annotations

import json
from typing import Any

from bootstrap.agent.desired import Desired, Rejection
from bootstrap.agent.status import encode, status_document
from bootstrap.agent.topics import Topics
from bootstrap.engine.resource import Change
from bootstrap.errors import InvalidDocument, SignatureError, StaleDocument
from bootstrap.model.document import effective_spec, parse_document
from bootstrap.model.signing import generate_key, sign

PREFIX = "cloudstack/bootstrap/v1"


def doc(kind: str, name: str, version: int, **spec: Any) -> bytes:
    return json.dumps(
        {
            "apiVersion": "cloudstack-bootstrap/v1",
            "kind": kind,
            "name": name,
            "version": version,
            "spec": spec,
        }
    ).encode()


def test_newer_versions_only_and_silent_redelivery() -> None:
    d = Desired(["kvm"], "h1", {})
    first = d.offer("roles/kvm", doc("Role", "kvm", 2, hypervisor="kvm"))
    assert first is not None and not isinstance(first, Rejection)
    assert d.offer("roles/kvm", doc("Role", "kvm", 2, hypervisor="kvm")) is None  # redelivery
    d.commit(d.candidate())
    assert d.versions() == {"roles": {"kvm": 2}, "host": None}
    # a fresh process (no memory of payloads) still ignores the version in force silently
    fresh = Desired(["kvm"], "h1", {})
    fresh.commit(d.in_force)
    assert fresh.offer("roles/kvm", doc("Role", "kvm", 2, hypervisor="kvm")) is None
    for payload in (doc("Role", "kvm", 1), doc("Role", "kvm", 2, hypervisor="lxc")):
        stale = fresh.offer("roles/kvm", payload)
        assert isinstance(stale, Rejection) and isinstance(stale.error, StaleDocument)
    assert not fresh.pending
    newer = fresh.offer("roles/kvm", doc("Role", "kvm", 3))
    assert newer is not None and fresh.pending == {"roles/kvm": newer}


def test_rejections_carry_the_field() -> None:
    d = Desired(["kvm"], "h1", {})
    bad = d.offer("roles/kvm", b'{"kind": ')
    assert isinstance(bad, Rejection) and isinstance(bad.error, InvalidDocument)
    bad = d.offer("roles/kvm", doc("Role", "kvm", 1, libvirt={"tcp_port": 0}))
    assert isinstance(bad, Rejection) and isinstance(bad.error, InvalidDocument)
    assert bad.error.field == "spec.libvirt.tcp_port" and bad.version is None
    wrong = d.offer("roles/kvm", doc("Role", "lxc", 1))
    assert isinstance(wrong, Rejection) and isinstance(wrong.error, InvalidDocument)
    assert wrong.error.field == "name" and wrong.version == 1
    assert d.offer("roles/other", doc("Role", "other", 1)) is None  # not a role of ours
    assert d.offer("roles/kvm", b"") is None  # a cleared retained message
    assert not d.pending


def test_signatures_when_keys_are_trusted() -> None:
    key = generate_key()
    d = Desired(["kvm"], "h1", {"ops": key.verify_key})
    unsigned = d.offer("roles/kvm", doc("Role", "kvm", 1))
    assert isinstance(unsigned, Rejection) and isinstance(unsigned.error, SignatureError)
    signed = sign(parse_document(doc("Role", "kvm", 1)), "ops", key, prefix=PREFIX).to_json()
    accepted = d.offer("roles/kvm", json.dumps(signed).encode())
    assert accepted is not None and not isinstance(accepted, Rejection)
    signed["version"] = 2  # tampered after signing
    tampered = d.offer("roles/kvm", json.dumps(signed).encode())
    assert isinstance(tampered, Rejection) and tampered.error.field == "signature.ed25519"  # type: ignore[attr-defined]


def test_merge_order_is_the_hosts_role_order_then_the_overlay() -> None:
    d = Desired(["base", "kvm"], "h1", {})
    for key, payload in (
        ("hosts/h1", doc("Host", "h1", 1, cpu={"mode": "custom", "model": "Haswell"})),
        ("roles/kvm", doc("Role", "kvm", 1, hypervisor="lxc")),
        ("roles/base", doc("Role", "base", 1, hypervisor="kvm", cpu={"mode": "host-model"})),
    ):
        d.offer(key, payload)
    ordered = d.ordered(d.candidate())
    assert [x.topic_key() for x in ordered] == ["roles/base", "roles/kvm", "hosts/h1"]
    spec = effective_spec(ordered)
    assert spec.hypervisor == "lxc" and spec.cpu.model == "Haswell"
    assert d.versions(d.candidate()) == {"roles": {"base": 1, "kvm": 1}, "host": 1}
    d.drop_pending()
    assert d.candidate() == {}


def test_topics_map_back_to_keys() -> None:
    t = Topics("p/q", "h1.lab", ("kvm",))
    assert t.subscriptions == ["p/q/roles/kvm/desired", "p/q/hosts/h1.lab/desired"]
    assert t.key_of("p/q/roles/kvm/desired") == "roles/kvm"
    assert t.key_of("p/q/hosts/h1.lab/desired") == "hosts/h1.lab"
    assert t.key_of("p/q/roles/lxc/desired") is None
    assert t.key_of("p/q/hosts/h1.lab/status") is None
    assert t.status == "p/q/hosts/h1.lab/status" and t.events == "p/q/hosts/h1.lab/events"


def test_status_document_shape() -> None:
    status = status_document(
        host="h1",
        state="rejected",
        applied={"roles": {"kvm": 2}, "host": None},
        changes=[Change("file/x", "modify", "d")],
        error=StaleDocument("old"),
        drift=[],
    )
    assert set(status) == {
        "apiVersion",
        "host",
        "state",
        "applied",
        "changes",
        "checks",
        "error",
        "at",
        "agent",
        "drift",
    }
    assert status["error"] == {"code": "stale", "message": "old", "field": "version"}
    assert status["at"].endswith("Z")
    assert json.loads(encode(status)) == status


def test_rollout_selector_waves() -> None:
    def wave(hosts: list[str] | None, version: int = 4) -> bytes:
        data = json.loads(doc("Role", "kvm", version, hypervisor="kvm"))
        if hosts is not None:
            data["rollout"] = {"id": "r1", "hosts": hosts}
        return json.dumps(data).encode()

    d = Desired(["kvm"], "h2", {})
    assert d.offer("roles/kvm", wave(["h1"])) is None  # not reached yet: keep what runs
    assert not d.pending
    taken = d.offer("roles/kvm", wave(["h1", "h2"]))  # the next wave lists us
    assert taken is not None and not isinstance(taken, Rejection)
    d.commit(d.candidate())
    # later waves and the final publication (no selector) are the same document for us
    assert d.offer("roles/kvm", wave(["h1", "h2", "h3"])) is None
    assert d.offer("roles/kvm", wave(None)) is None
    assert d.versions() == {"roles": {"kvm": 4}, "host": None}


def test_a_burst_is_complete_when_every_document_the_host_reads_is_pending() -> None:
    d = Desired(["kvm", "storage"], "h1", {})
    assert not d.complete()
    d.offer("roles/kvm", doc("Role", "kvm", 1, hypervisor="kvm"))
    d.offer("hosts/h1", doc("Host", "h1", 1))
    assert not d.complete()  # a role the host lists has not come
    d.offer("roles/storage", doc("Role", "storage", 1))
    assert d.complete()
    d.commit(d.candidate())
    assert not d.complete()  # applied: nothing pending
    d.offer("roles/kvm", doc("Role", "kvm", 2, hypervisor="kvm"))
    assert not d.complete()  # a role alone: its overlay may follow within the debounce
