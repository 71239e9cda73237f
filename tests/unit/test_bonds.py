"""Bonds as data: what each backend accepts, the native layout and the plan lines (pure)."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from bootstrap.engine.resource import Change
from bootstrap.errors import InvalidDocument
from bootstrap.model.document import validate_spec
from bootstrap.model.spec import Network
from bootstrap.resources.native_state import BondState, bond_changes, layout
from bootstrap.resources.openvswitch_state import desired_bridge
from bootstrap.resources.properties import derived

MGMT = {"address": "192.168.42.11/24", "gateway": "192.168.42.1"}


def bonded(backend: str = "native", **bond: Any) -> dict[str, Any]:
    return {
        "backend": backend,
        "uplink": "bond0",
        "management": MGMT,
        "bonds": [{"name": "bond0", "members": ["eth0", "eth1"], **bond}],
        "bridges": [
            {"name": "cloudbr0", "vlan": 100, "traffic": ["management"]},
            {"name": "cloudbr1", "vlan": 300, "traffic": ["guest"]},
        ],
    }


def net(**kw: Any) -> Network:
    spec = validate_spec({"network": bonded(**kw)})
    assert spec.network is not None
    return spec.network


def rejected(network: dict[str, Any]) -> InvalidDocument:
    with pytest.raises(InvalidDocument) as caught:
        validate_spec({"network": network})
    return caught.value


def test_a_native_lacp_bond_carries_the_vlans_and_bridges() -> None:
    wanted = layout(net(mode="802.3ad", lacp_rate="fast", xmit_hash_policy="layer3+4"))
    (bond,) = wanted.bonds
    assert (bond.ifname, bond.mode, bond.lacp_rate, bond.xmit_hash_policy) == (
        "bond0",
        "802.3ad",
        "fast",
        "layer3+4",
    )
    assert bond.members == ("eth0", "eth1") and bond.mtu == 1500
    assert [u.ifname for u in wanted.uplinks] == ["eth0", "eth1"]  # the members, not bond0
    assert [(v.ifname, v.parent) for v in wanted.vlans] == [
        ("bond0.100", "bond0"),
        ("bond0.300", "bond0"),
    ]
    assert wanted.management_ifname == "cloudbr0"


def test_settings_the_kernel_ignores_in_a_mode_are_not_asked_for() -> None:
    (bond,) = layout(net(mode="active-backup", lacp_rate="fast")).bonds
    assert (bond.lacp_rate, bond.xmit_hash_policy) == ("slow", "layer2")


def test_an_ovs_bond_is_the_trunk_port() -> None:
    bridge = desired_bridge(net(backend="openvswitch", mode="balance-tcp", lacp="active"))
    uplink = bridge.uplink
    assert uplink is not None
    assert (uplink.name, uplink.members, uplink.bond_mode, uplink.lacp) == (
        "bond0",
        ("eth0", "eth1"),
        "balance-tcp",
        "active",
    )
    assert uplink.interfaces() == ("eth0", "eth1")
    assert uplink.lacp_time == "slow" and uplink.miimon == 100


def test_agent_properties_see_the_bond_under_each_bridge() -> None:
    values, _ = derived(validate_spec({"network": bonded(mode="802.3ad")}))
    assert values["private.network.device"] == "cloudbr0"
    assert values["guest.network.device"] == "cloudbr1"


@pytest.mark.parametrize(
    ("network", "field", "words"),
    [
        (bonded(mode="balance-tcp"), "spec.network.bonds[0].mode", "no bond mode"),
        (bonded("openvswitch", mode="802.3ad"), "spec.network.bonds[0].mode", "no bond mode"),
        (bonded(lacp="active"), "spec.network.bonds[0].lacp", "802.3ad"),
        (bonded("openvswitch", mode="balance-tcp"), "spec.network.bonds[0].lacp", "LACP"),
        (
            bonded("openvswitch", xmit_hash_policy="layer3+4"),
            "spec.network.bonds[0].xmit_hash_policy",
            "Linux",
        ),
        (
            {**bonded(), "bonds": [{"name": "bond0", "members": ["eth0", "eth0"]}]},
            "spec.network.bonds[0].members[1]",
            "twice",
        ),
        ({**bonded(), "uplink": "eth0"}, "spec.network.bonds[0].members[0]", "bond member"),
        (
            {**bonded(), "bonds": [{"name": "bond0", "members": ["eth0:1"]}]},
            "spec.network.bonds[0].members[0]",
            "",
        ),
    ],
)
def test_what_a_backend_lacks_is_rejected_naming_the_field(
    network: dict[str, Any], field: str, words: str
) -> None:
    err = rejected(network)
    assert err.field == field
    assert words in err.reason


def test_a_bond_nothing_sits_on_is_an_error() -> None:
    network = {**bonded(), "uplink": "eth2"}
    network["bridges"] = [{"name": "cloudbr0", "vlan": 100, "traffic": ["management"]}]
    assert rejected(network).field == "spec.network.bonds[0].name"


BOND = BondState("bond0", "802.3ad", 100, "fast", "layer3+4", ("eth0", "eth1"), 1500, up=True)


def test_bond_plan_lines() -> None:
    assert bond_changes("bond/bond0", None, BOND)[0].action == "create"
    assert bond_changes("bond/bond0", BOND, BOND) == []
    single = replace(BOND, members=("eth0",), miimon=0)
    assert bond_changes("bond/bond0", single, BOND) == [
        Change("bond/bond0", "modify", "miimon 0 → 100; member +eth1")
    ]
    theirs = replace(BOND, ours=False)
    assert bond_changes("bond/bond0", theirs, BOND)[0].action == "adopt"
