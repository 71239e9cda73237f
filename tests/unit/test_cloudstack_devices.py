"""agent.properties' device keys against CloudStack's own facts.

From apache/cloudstack: ``LibvirtComputingResource.configure`` reads
``public.network.device`` (default ``cloudbr0``), ``private.network.device`` (default
``cloudbr1``) and ``guest.network.device`` (default: the private device), and
``ServerResourceBase.configure`` refuses to start ("Incorrect details for private Nic")
unless the private device holds an IPv4 address: that address is the host's IP as the
management server sees it. *Private* there means the management network.
"""

from __future__ import annotations

from typing import Any

import pytest

from bootstrap.errors import InvalidDocument
from bootstrap.host.cloudstack import AgentFacts, Link, OvsView, evaluate
from bootstrap.model.document import validate_spec
from bootstrap.resources.properties import derived

MGMT = {"address": "192.168.42.11/24", "gateway": "192.168.42.1"}


def keys(network: dict[str, Any]) -> tuple[dict[str, str], frozenset[str]]:
    return derived(validate_spec({"network": {"uplink": "eth0", **network}}))


def test_private_is_the_bridge_holding_the_management_address() -> None:
    values, _ = keys(
        {
            "management": MGMT,
            "bridges": [
                {"name": "cloudbr0", "vlan": 100, "traffic": ["management"]},
                {"name": "cloudbr1", "vlan": 300, "traffic": ["guest"]},
            ],
        }
    )
    assert values["private.network.device"] == "cloudbr0"


def test_private_follows_the_older_management_vlan_spelling() -> None:
    values, _ = keys({"management": {"vlan": 100, **MGMT}})
    assert values["private.network.device"] == "mgmt0"  # the bridge it implies
    ovs, _ = keys(
        {
            "backend": "openvswitch",
            "management": {"vlan": 100, **MGMT},
            "openvswitch": {"management_bridge": "mgmt9"},
        }
    )
    assert ovs["private.network.device"] == "mgmt9"


def test_private_is_left_to_cloudstack_without_a_management_address() -> None:
    values, remove = keys({"bridges": [{"name": "cloudbr0", "vlan": 200, "traffic": ["public"]}]})
    assert "private.network.device" in remove and "private.network.device" not in values


def test_public_is_the_bridge_carrying_public_or_cloudstacks_default() -> None:
    values, _ = keys({"bridges": [{"name": "br-pub", "vlan": 200, "traffic": ["public"]}]})
    assert values["public.network.device"] == "br-pub"
    _, remove = keys({"management": {"vlan": 100, **MGMT}})
    assert "public.network.device" in remove  # absent: CloudStack's cloudbr0


def test_guest_is_the_bridge_carrying_guest_or_the_private_device() -> None:
    values, _ = keys(
        {
            "management": MGMT,
            "bridges": [
                {"name": "cloudbr0", "traffic": ["management", "public"]},
                {"name": "cloudbr1", "uplink": "eth1", "traffic": ["guest"]},
            ],
        }
    )
    assert values["guest.network.device"] == "cloudbr1"
    assert values["private.network.device"] == values["public.network.device"] == "cloudbr0"
    _, remove = keys({"management": {"vlan": 100, **MGMT}})
    assert "guest.network.device" in remove  # absent: CloudStack uses the private device


def test_storage_only_when_a_bridge_carries_storage() -> None:
    values, _ = keys({"bridges": [{"name": "cloudbr2", "vlan": 400, "traffic": ["storage"]}]})
    assert values["storage.network.device"] == "cloudbr2"
    values, remove = keys({"bridges": [{"name": "cloudbr0", "vlan": 200, "traffic": ["public"]}]})
    assert "storage.network.device" in remove and "storage.network.device" not in values


def test_bridge_type_follows_the_backend() -> None:
    assert keys({})[0]["network.bridge.type"] == "native"
    assert keys({"backend": "openvswitch"})[0]["network.bridge.type"] == "openvswitch"


def rejected(network: dict[str, Any]) -> InvalidDocument:
    with pytest.raises(InvalidDocument) as caught:
        validate_spec({"network": {"uplink": "eth0", **network}})
    return caught.value


def test_private_traffic_is_ambiguous_and_says_how_to_rewrite() -> None:
    err = rejected({"bridges": [{"name": "cloudbr1", "vlan": 300, "traffic": ["private"]}]})
    assert err.field == "spec.network.bridges[0].traffic[0]"
    assert "'management'" in err.reason and "'guest'" in err.reason


def test_a_management_bridge_without_an_address_is_refused() -> None:
    err = rejected({"bridges": [{"name": "cloudbr0", "traffic": ["management"]}]})
    assert err.field == "spec.network.bridges[0].traffic"
    assert "IPv4" in err.reason


def test_an_ipv6_only_management_address_cannot_be_the_private_device() -> None:
    err = rejected({"management": {"address": "2001:db8::11/64"}})
    assert err.field == "spec.network.management.address"
    assert "IPv4" in err.reason


def test_one_device_per_traffic_type() -> None:
    err = rejected(
        {
            "bridges": [
                {"name": "cloudbr0", "vlan": 200, "traffic": ["public"]},
                {"name": "cloudbr9", "vlan": 201, "traffic": ["public"]},
            ]
        }
    )
    assert err.field == "spec.network.bridges[1].traffic"


def test_management_vlan_beside_a_management_bridge_is_two_sources() -> None:
    err = rejected(
        {
            "management": {"vlan": 100, **MGMT},
            "bridges": [{"name": "cloudbr0", "vlan": 100, "traffic": ["management"]}],
        }
    )
    assert err.field == "spec.network.management.vlan"


@pytest.mark.parametrize(
    ("network", "field"),
    [
        (
            {"management": {"vlan": 100, **MGMT}, "bridges": [{"name": "mgmt0", "vlan": 200}]},
            "spec.network.openvswitch.management_bridge",
        ),
        # a bridge named like the VLAN sub-interface another bridge needs
        (
            {"bridges": [{"name": "eth0.300"}, {"name": "cloudbr1", "vlan": 300}]},
            "spec.network.bridges[1].vlan",
        ),
        ({"bridges": [{"name": "br:0", "vlan": 300}]}, "spec.network.bridges[0].name"),
        ({"bridges": [{"name": "eth1"}, {"name": "b", "uplink": "eth1"}]}, None),
        ({"bridges": [{"name": "a"}, {"name": "b"}]}, "spec.network.bridges[1].vlan"),
        (
            {"backend": "openvswitch", "bridges": [{"name": "a", "uplink": "eth1"}]},
            "spec.network.bridges[0].uplink",
        ),
        ({"bridges": [{"name": "a", "vlan": True}]}, "spec.network.bridges[0].vlan"),
        ({"bridges": [{"name": "a", "vlan": "300"}]}, "spec.network.bridges[0].vlan"),
        ({"mtu": 1500.0}, "spec.network.mtu"),
    ],
)
def test_layouts_the_kernel_or_cloudstack_would_refuse(
    network: dict[str, Any], field: str | None
) -> None:
    err = rejected(network)
    if field is not None:
        assert err.field == field
    else:
        assert err.field.startswith("spec.network.bridges[")


def test_unicode_digits_are_not_ports() -> None:
    with pytest.raises(InvalidDocument) as caught:
        validate_spec({"firewall": {"allow_tcp": ["١٦٥٠٩"]}})
    assert caught.value.field == "spec.firewall.allow_tcp[0]"


# --- csboot check --cloudstack, judged on hand-made facts (evaluate is pure) -------------


PROPS = {
    "network.bridge.type": "native",
    "private.network.device": "mgmt0",
    "public.network.device": "cloudbr0",
    "guest.network.device": "cloudbr1",
}
LINKS = {
    "eth0": Link("eth0", "veth"),
    "eth0.100": Link("eth0.100", "vlan"),
    "eth0.200": Link("eth0.200", "vlan"),
    "eth0.300": Link("eth0.300", "vlan"),
    "mgmt0": Link("mgmt0", "bridge", ("192.168.42.11/24",), ("eth0.100",)),
    "cloudbr0": Link("cloudbr0", "bridge", (), ("eth0.200",)),
    "cloudbr1": Link("cloudbr1", "bridge", (), ("eth0.300", "vnet0")),
}


def facts(**changes: Any) -> AgentFacts:
    base: dict[str, Any] = {
        "properties": PROPS,
        "links": LINKS,
        "ovs": None,
        "management_target": "192.168.42.1",
        "route_oif": "mgmt0",
        "libvirt_port": 16509,
        "listening": frozenset({16509}),
        "firewall_policy": "drop",
        "firewall_allows": ((22, 22), (16509, 16509)),
    }
    return AgentFacts(**{**base, **changes})


def failures(f: AgentFacts) -> dict[str, str]:
    return {c.name: c.detail for c in evaluate(f) if not c.ok}


def test_the_seed_layout_done_right_passes() -> None:
    assert failures(facts()) == {}


def test_an_unaddressed_private_device_is_what_cloudstack_refuses() -> None:
    links = {**LINKS, "mgmt0": Link("mgmt0", "bridge", (), ("eth0.100",))}
    bad = failures(facts(links=links))
    assert "Incorrect details for private Nic" in bad["cloudstack-private"]
    assert "private.network.device=mgmt0" in bad["cloudstack-private"]


def test_defaults_apply_when_keys_are_absent() -> None:
    bad = failures(facts(properties={}))  # private cloudbr1 (no address), guest = private
    assert "private.network.device=cloudbr1" in bad["cloudstack-private"]
    assert "cloudstack-public" not in bad  # cloudbr0 exists and is a bridge


def test_the_route_to_the_management_side_must_leave_through_private() -> None:
    bad = failures(facts(route_oif="eth0"))
    assert "reached via eth0, not mgmt0" in bad["cloudstack-private-route"]


def test_a_plain_vlan_interface_is_not_a_bridge_and_a_bridge_needs_a_nic() -> None:
    props = {**PROPS, "public.network.device": "eth0.200"}
    assert "not a Linux bridge" in failures(facts(properties=props))["cloudstack-public"]
    links = {**LINKS, "cloudbr1": Link("cloudbr1", "bridge", (), ("vnet0",))}
    assert "no port CloudStack recognises" in failures(facts(links=links))["cloudstack-guest"]


def test_storage_is_judged_only_when_named() -> None:
    assert "cloudstack-storage" not in {c.name for c in evaluate(facts())}
    props = {**PROPS, "storage.network.device": "cloudbr9"}
    assert "no such interface" in failures(facts(properties=props))["cloudstack-storage"]


def test_open_vswitch_fake_bridges_find_the_parents_uplink() -> None:
    props = {**PROPS, "network.bridge.type": "openvswitch"}
    links = {n: Link(n, "openvswitch", ln.ipv4) for n, ln in LINKS.items() if "." not in n}
    view = OvsView(
        {"cloudbr": ("eth0",)}, {"mgmt0": "cloudbr", "cloudbr0": "cloudbr", "cloudbr1": "cloudbr"}
    )
    assert failures(facts(properties=props, links=links, ovs=view)) == {}
    bare = OvsView({"cloudbr": ()}, view.fake_parents)
    assert (
        "no port" in failures(facts(properties=props, links=links, ovs=bare))["cloudstack-public"]
    )


def test_libvirt_must_listen_and_the_firewall_must_let_it() -> None:
    assert "nothing listens" in failures(facts(listening=frozenset()))["cloudstack-libvirt"]
    dropped = failures(facts(firewall_allows=((22, 22),)))["cloudstack-libvirt"]
    assert "the firewall drops tcp 16509" in dropped
    assert failures(facts(firewall_policy="accept", firewall_allows=())) == {}
