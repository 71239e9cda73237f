"""The desired-state model: valid documents parse, every invalid input names its field."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bootstrap.errors import InvalidDocument
from bootstrap.model import effective_spec, parse_document, validate_spec
from bootstrap.model.merge import deep_merge, merge_all

SEED_KVM: dict[str, Any] = {
    "apiVersion": "cloudstack-bootstrap/v1",
    "kind": "Role",
    "name": "kvm",
    "version": 7,
    "spec": {
        "hypervisor": "kvm",
        "cpu": {"mode": "host-model"},
        "network": {
            "backend": "native",
            "uplink": "eth0",
            "management": {"vlan": 100, "address": "192.168.42.11/24", "gateway": "192.168.42.1"},
            "bridges": [
                {"name": "cloudbr0", "vlan": 200, "traffic": ["public"]},
                {"name": "cloudbr1", "vlan": 300, "traffic": ["guest"]},
            ],
        },
        "firewall": {"policy": "accept"},
    },
}


def mutated(path: str, value: Any) -> dict[str, Any]:
    doc = copy.deepcopy(SEED_KVM)
    node: Any = doc
    parts = path.split(".")
    for part in parts[:-1]:
        node = node[int(part)] if part.isdigit() else node[part]
    last = parts[-1]
    node[int(last) if last.isdigit() else last] = value
    return doc


def test_seed_example_parses_with_seed_defaults() -> None:
    spec = effective_spec([parse_document(SEED_KVM)])
    assert spec.network is not None and spec.network.vlans() == [100, 200, 300]
    assert spec.libvirt.tcp_port == 16509 and spec.libvirt.listen_tcp
    assert spec.firewall is not None
    assert [str(p) for p in spec.firewall.allow_tcp] == [
        "22",
        "1798",
        "16509",
        "16514",
        "5900-6100",
        "49152-49216",
    ]


@pytest.mark.parametrize(
    ("path", "value", "field", "words"),
    [
        ("spec.network.bridges.0.vlan", 0, "spec.network.bridges[0].vlan", "greater than"),
        ("spec.network.bridges.1.vlan", 4095, "spec.network.bridges[1].vlan", "less than"),
        ("spec.network.management.vlan", 5000, "spec.network.management.vlan", "less than"),
        ("spec.network.bridges.1.vlan", 200, "spec.network.bridges[1].vlan", "duplicate VLAN"),
        (
            "spec.network.bridges.1.name",
            "cloudbr0",
            "spec.network.bridges[1].name",
            "duplicate bridge",
        ),
        ("spec.network.management.vlan", 300, "spec.network.management.vlan", "duplicate VLAN"),
        (
            "spec.network.bridges.0.name",
            "cloudbr0-way-too-long",
            "spec.network.bridges[0].name",
            "15 characters",
        ),
        ("spec.network.uplink", "wlan0", "spec.network.uplink", "recognises"),
        ("spec.network.uplink", "eth0123456789", "spec.network.uplink", "longer than 15"),
        (
            "spec.network.management.gateway",
            "10.0.0.1",
            "spec.network.management.gateway",
            "outside the management subnet",
        ),
        ("spec.firewall.allow_tcp", [22, 70000], "spec.firewall.allow_tcp[1].first", "65535"),
        ("spec.firewall.allow_tcp", [0], "spec.firewall.allow_tcp[0].first", "greater than"),
        ("spec.firewall.allow_tcp", ["6100-5900"], "spec.firewall.allow_tcp[0].last", "reversed"),
        ("spec.firewall.allow_tcp", ["ssh"], "spec.firewall.allow_tcp[0]", "not a port"),
        ("spec.agent", {"properties": {"a=b": "x"}}, "spec.agent.properties.a=b", "'='"),
        ("spec.agent", {"properties": {"a\nb": "x"}}, "spec.agent.properties.a\nb", "newlines"),
        ("spec.agent", {"properties": {"k": "x\ny"}}, "spec.agent.properties.k", "newlines"),
        ("spec.network.surprise", 1, "spec.network.surprise", "Extra inputs"),
        ("spec.surprise", 1, "spec.surprise", "Extra inputs"),
        ("surprise", 1, "surprise", "Extra inputs"),
        ("spec.cpu", {"mode": "custom"}, "spec.cpu.model", "needs a model"),
        (
            "spec.cpu",
            {"mode": "host-model", "model": "SandyBridge"},
            "spec.cpu.model",
            "only valid",
        ),
        ("spec.hypervisor", "xen", "spec.hypervisor", "'kvm' or 'lxc'"),
        ("spec.firewall.policy", "reject", "spec.firewall.policy", "'accept' or 'drop'"),
        ("spec.firewall.sources", ["10.0.0.0/33"], "spec.firewall.sources[0]", ""),
        ("version", 0, "version", "greater than"),
        ("kind", "Cluster", "kind", "'Role' or 'Host'"),
        ("name", "Bad/Name", "name", "not a valid"),
        ("apiVersion", "v2", "apiVersion", ""),
    ],
)
def test_invalid_input_names_the_field(path: str, value: Any, field: str, words: str) -> None:
    with pytest.raises(InvalidDocument) as caught:
        parse_document(mutated(path, value))
    assert caught.value.field == field
    assert words in caught.value.reason


def test_lxc_direct_requires_lxc() -> None:
    with pytest.raises(InvalidDocument) as caught:
        validate_spec({"hypervisor": "kvm", "agent": {"direct": {"device": "eth0"}}})
    assert caught.value.field == "spec.agent.direct"


def test_openvswitch_names_must_not_clash() -> None:
    spec = copy.deepcopy(SEED_KVM["spec"])
    spec["network"]["backend"] = "openvswitch"
    spec["network"]["bridges"][1]["name"] = "cloudbr"
    with pytest.raises(InvalidDocument) as caught:
        validate_spec(spec)
    assert caught.value.field == "spec.network.openvswitch.bridge"


def test_not_json_nor_yaml_and_not_an_object() -> None:
    with pytest.raises(InvalidDocument, match="JSON object"):
        parse_document(b"[1, 2]")
    with pytest.raises(InvalidDocument, match="neither JSON nor YAML"):
        parse_document(b"{: : :\n\t- ]")


def test_yaml_documents_parse_like_json() -> None:
    text = (
        "apiVersion: cloudstack-bootstrap/v1\nkind: Host\nname: kvm1.lab\n"
        "version: 2\nspec:\n  hypervisor: lxc\n"
    )
    doc = parse_document(text)
    assert doc.kind == "Host" and doc.spec == {"hypervisor": "lxc"}


def test_host_overlay_merges_deeply_and_replaces_lists() -> None:
    role = parse_document(SEED_KVM)
    host = parse_document(
        {
            "apiVersion": "cloudstack-bootstrap/v1",
            "kind": "Host",
            "name": "kvm2.lab",
            "version": 1,
            "spec": {
                "network": {"management": {"address": "192.168.42.12/24"}},
                "firewall": {"allow_tcp": [22]},
            },
        }
    )
    spec = effective_spec([host, role])  # order of arguments does not matter: roles first
    assert spec.network is not None and spec.network.management is not None
    assert str(spec.network.management.address) == "192.168.42.12/24"
    assert spec.network.management.vlan == 100  # kept from the role: maps merge
    assert spec.firewall is not None and [str(p) for p in spec.firewall.allow_tcp] == ["22"]


def test_merged_spec_is_validated_as_a_whole() -> None:
    role = parse_document(SEED_KVM)
    host = parse_document(
        {
            "apiVersion": "cloudstack-bootstrap/v1",
            "kind": "Host",
            "name": "kvm2.lab",
            "version": 1,
            "spec": {"network": {"management": {"address": "10.1.1.5/24"}}},
        }
    )
    with pytest.raises(InvalidDocument) as caught:
        effective_spec([role, host])
    assert caught.value.field == "spec.network.management.gateway"


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=5),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner, max_size=3)
    ),
    max_leaves=10,
)
json_maps = st.dictionaries(st.text(max_size=3), json_values, max_size=4)


def leaves(tree: dict[str, Any], prefix: tuple[str, ...] = ()) -> dict[tuple[str, ...], Any]:
    """Scalars and lists by path. An empty map has none: merged onto a map it changes nothing."""
    out: dict[tuple[str, ...], Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(leaves(value, (*prefix, key)))
        else:
            out[(*prefix, key)] = value
    return out


@given(json_maps, json_maps, json_maps)
def test_merge_folds_left_and_every_overlay_leaf_wins(
    a: dict[str, Any], b: dict[str, Any], c: dict[str, Any]
) -> None:
    snapshot = copy.deepcopy((a, b))
    merged = deep_merge(a, b)
    assert (a, b) == snapshot  # inputs untouched
    for path, value in leaves(b).items():  # every leaf of the overlay is in the result
        node: Any = merged
        for key in path:
            node = node[key]
        assert node == value
    assert set(merged) == set(a) | set(b)
    assert merge_all([a, b, c]) == deep_merge(deep_merge(a, b), c)
    assert deep_merge(a, {}) == a
    assert deep_merge(merged, b) == merged  # idempotent


port_specs = st.one_of(
    st.integers(1, 65535),
    st.tuples(st.integers(1, 65535), st.integers(0, 1000))
    .filter(lambda t: t[0] + t[1] <= 65535)
    .map(lambda t: f"{t[0]}-{t[0] + t[1]}"),
)


@given(st.lists(port_specs, max_size=8), st.sampled_from(["accept", "drop"]))
def test_spec_round_trips_through_json(ports: list[int | str], policy: str) -> None:
    spec = validate_spec(
        {"firewall": {"policy": policy, "allow_tcp": ports}, "network": SEED_KVM["spec"]["network"]}
    )
    again = validate_spec(spec.model_dump(mode="json"))
    assert again == spec
