"""The native backend's pure core: the layout a spec asks for, ownership, and plan texts."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from bootstrap.engine.resource import Change
from bootstrap.errors import InvalidDocument, ResourceError
from bootstrap.host.root import HostRoot
from bootstrap.model import effective_spec, parse_document
from bootstrap.model.spec import Network
from bootstrap.resources.native import (
    BridgeResource,
    StaleLinks,
    UplinkResource,
    VlanResource,
    native_resources,
)
from bootstrap.resources.native_state import (
    BridgeState,
    UplinkState,
    VlanState,
    bridge_changes,
    bridge_settings,
    layout,
    link_settings,
    vlan_changes,
)

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "role-kvm.yaml"


def seed() -> Network:
    spec = effective_spec([parse_document(EXAMPLE.read_text())])
    assert spec.network is not None
    return spec.network


def edited(**changes: Any) -> Network:
    data = seed().model_dump(mode="json")
    for path, value in changes.items():
        node: Any = data
        *parents, last = path.split("__")
        for part in parents:
            node = node[int(part)] if part.isdigit() else node[part]
        node[int(last) if last.isdigit() else last] = value
    return Network.model_validate(data)


VLAN = VlanState("eth0.200", "eth0", 200, 1500, up=True)
BRIDGE = BridgeState(
    "cloudbr0", 1500, up=True, stp=False, forward_delay_cs=500, ports=("eth0.200",)
)


def test_seed_layout_has_the_seed_links_in_apply_order() -> None:
    wanted = layout(seed())
    assert wanted.uplinks == (UplinkState("eth0", 1500, up=True),)
    assert [(v.ifname, v.parent, v.vlan_id, v.mtu) for v in wanted.vlans] == [
        ("eth0.100", "eth0", 100, 1500),
        ("eth0.200", "eth0", 200, 1500),
        ("eth0.300", "eth0", 300, 1500),
    ]
    assert [(b.ifname, b.ports, b.stp) for b in wanted.bridges] == [
        ("mgmt0", ("eth0.100",), False),
        ("cloudbr0", ("eth0.200",), False),
        ("cloudbr1", ("eth0.300",), False),
    ]
    # the seed's "bridge_fd 5" is 5 s; the kernel counts clock_t, 100 per second
    assert {b.forward_delay_cs for b in wanted.bridges} == {500}
    # the address sits on a bridge: CloudStack's private.network.device must hold it
    assert wanted.management_ifname == "mgmt0"
    assert wanted.names == {"eth0.100", "eth0.200", "eth0.300", "mgmt0", "cloudbr0", "cloudbr1"}
    assert all(s.ours and s.up for s in (*wanted.vlans, *wanted.bridges))


def test_untagged_management_bridge_enslaves_the_uplink_itself() -> None:
    wanted = layout(edited(bridges__0__vlan=None))
    assert wanted.management_ifname == "mgmt0"
    assert wanted.bridges[0].ports == ("eth0",)
    assert [v.vlan_id for v in wanted.vlans] == [200, 300]


def test_the_older_management_vlan_spelling_implies_a_management_bridge() -> None:
    net = edited(bridges=seed().model_dump(mode="json")["bridges"][1:], management__vlan=100)
    wanted = layout(net)
    assert wanted.management_ifname == "mgmt0"
    assert wanted.bridges[0].ports == ("eth0.100",)
    bare = layout(edited(bridges=[], management__vlan=None))
    assert (bare.management_ifname, bare.bridges[0].ports) == ("mgmt0", ("eth0",))


def test_a_second_nic_carries_its_own_untagged_bridge() -> None:
    """The current upstream guide: cloudbr0 on the bare eth0 with the address, guests on eth1."""
    net = edited(
        bridges=[
            {"name": "cloudbr0", "traffic": ["management", "public"]},
            {"name": "cloudbr1", "uplink": "eth1", "traffic": ["guest"]},
        ]
    )
    wanted = layout(net)
    assert [u.ifname for u in wanted.uplinks] == ["eth0", "eth1"]
    assert wanted.vlans == ()
    assert [(b.ifname, b.ports) for b in wanted.bridges] == [
        ("cloudbr0", ("eth0",)),
        ("cloudbr1", ("eth1",)),
    ]
    assert wanted.management_ifname == "cloudbr0"


def test_bridge_mtu_and_forward_delay_reach_the_layout() -> None:
    wanted = layout(edited(mtu=9000, bridges__2__mtu=1500, bridges__1__forward_delay=15))
    _, cloudbr0, cloudbr1 = wanted.bridges
    assert (cloudbr0.mtu, cloudbr0.forward_delay_cs) == (9000, 1500)
    assert cloudbr1.mtu == 1500
    assert [v.mtu for v in wanted.vlans] == [9000, 9000, 1500]  # a port carries its bridge's


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"bridges__1__mtu": 9000}, "network.bridges.1.mtu"),
        (
            {"bridges__2__stp": True, "bridges__2__forward_delay": 1},
            "network.bridges.2.forward_delay",
        ),
    ],
)
def test_what_the_kernel_would_alter_is_rejected_by_field(
    changes: dict[str, Any], field: str
) -> None:
    with pytest.raises(InvalidDocument) as err:
        layout(edited(**changes))
    assert err.value.field == field


def test_stp_with_the_kernels_minimum_delay_is_fine() -> None:
    wanted = layout(edited(bridges__1__stp=True, bridges__1__forward_delay=2))
    assert wanted.bridges[1].stp and wanted.bridges[1].forward_delay_cs == 200


def test_plan_texts() -> None:
    assert vlan_changes("vlan/eth0.200", VLAN, VLAN) == []
    assert vlan_changes("vlan/eth0.200", None, VLAN) == [
        Change("vlan/eth0.200", "create", "vlan 200 on eth0, mtu 1500, up")
    ]
    assert vlan_changes("vlan/eth0.200", VLAN, None)[0].action == "delete"
    down = replace(VLAN, up=False, mtu=1400)
    assert vlan_changes("vlan/eth0.200", down, VLAN) == [
        Change("vlan/eth0.200", "modify", "mtu 1400 → 1500; down → up")
    ]
    other = replace(VLAN, vlan_id=201)
    assert [c.action for c in vlan_changes("vlan/eth0.200", other, VLAN)] == ["delete", "create"]
    drift = replace(BRIDGE, stp=True, forward_delay_cs=1550, ports=("eth0.201",))
    (change,) = bridge_changes("bridge/cloudbr0", drift, BRIDGE)
    assert change.action == "modify"
    assert change.detail == "stp on → off; forward delay 15.5s → 5s; port +eth0.200; port -eth0.201"
    assert bridge_changes("bridge/cloudbr0", None, BRIDGE)[0].detail == (
        "mtu 1500, stp off, forward delay 5s, ports eth0.200, up"
    )


def test_only_differing_attributes_are_set() -> None:
    assert link_settings(VLAN, VLAN) == {}
    assert link_settings(replace(VLAN, up=False), VLAN) == {"state": "up"}
    assert link_settings(replace(BRIDGE, mtu=9000), BRIDGE) == {"mtu": 1500}
    assert bridge_settings(BRIDGE, BRIDGE) == {}
    assert bridge_settings(replace(BRIDGE, mtu=9000), BRIDGE) == {}  # MTU goes separately
    assert bridge_settings(replace(BRIDGE, stp=True), BRIDGE) == {
        "kind": "bridge",
        "br_stp_state": 0,
    }
    assert bridge_settings(replace(BRIDGE, forward_delay_cs=200), BRIDGE) == {
        "kind": "bridge",
        "br_forward_delay": 500,
    }


def test_ours_follows_the_spec_the_operators_is_adopted() -> None:
    ours = VlanResource("eth0.200", VLAN)
    assert ours.target(None) == VLAN
    assert ours.target(replace(VLAN, mtu=1400)) == VLAN
    theirs = replace(VLAN, ours=False, alias="uplink vlan 200")
    assert ours.target(theirs) == VLAN  # named by the spec: adopted, marked ours
    assert ours.diff(theirs, VLAN) == [
        Change("vlan/eth0.200", "adopt", "unchanged, marked as ours")
    ]
    assert ours.diff(replace(theirs, mtu=1400), VLAN) == [
        Change("vlan/eth0.200", "adopt", "mtu 1400 → 1500")
    ]
    # the revert gives it back with the operator's alias
    assert ours.diff(VLAN, theirs) == [
        Change("vlan/eth0.200", "modify", "given back (alias 'uplink vlan 200')")
    ]
    assert str(ours.diff(theirs, VLAN)[0]).startswith("@ adopt vlan/eth0.200")
    gone = BridgeResource("cloudbr0", None)
    assert gone.target(BRIDGE) is None  # ours and no longer wanted: removed
    assert gone.target(replace(BRIDGE, ours=False)) == replace(BRIDGE, ours=False)
    assert gone.diff(BRIDGE, None)[0].action == "delete"


def test_uplink_must_exist_and_only_mtu_and_up_are_managed() -> None:
    uplink = UplinkResource(UplinkState("eth0", 9000, up=True))
    with pytest.raises(ResourceError) as err:
        uplink.target(None)
    assert err.value.resource == "link/eth0"
    current = UplinkState("eth0", 1500, up=False)
    assert uplink.diff(current, uplink.target(current)) == [
        Change("link/eth0", "modify", "mtu 1500 → 9000; down → up")
    ]


def test_states_survive_the_journal() -> None:
    stale = StaleLinks(keep=frozenset())
    links = (VLAN, replace(BRIDGE, ours=True))
    assert stale.load(stale.dump(links)) == links
    assert isinstance(stale.load(stale.dump(links))[1], BridgeState)
    for resource, state in (
        (VlanResource("eth0.200", VLAN), VLAN),
        (BridgeResource("cloudbr0", BRIDGE), BRIDGE),
        (UplinkResource(UplinkState("eth0", 1500, up=True)), UplinkState("eth0", 1500, up=True)),
    ):
        assert resource.load(resource.dump(state)) == state
        assert resource.load(resource.dump(None)) is None


def test_stale_links_are_deleted_and_come_back_on_revert() -> None:
    stale = StaleLinks(keep=frozenset({"cloudbr0"}))
    found = (replace(VLAN, ifname="eth0.400", vlan_id=400), replace(BRIDGE, ifname="cloudbr9"))
    assert stale.target(found) == ()
    assert [(c.resource, c.action) for c in stale.diff(found, ())] == [
        ("bridge/cloudbr9", "delete"),
        ("vlan/eth0.400", "delete"),
    ]
    assert {c.action for c in stale.diff((), found)} == {"create"}  # the revert direction


def test_native_resources_in_apply_order() -> None:
    names = [r.name for r in native_resources(seed(), HostRoot())]
    assert names == [
        "link/eth0",
        "vlan/eth0.100",
        "bridge/mgmt0",
        "vlan/eth0.200",
        "bridge/cloudbr0",
        "vlan/eth0.300",
        "bridge/cloudbr1",
        "address/192.168.42.11",
        "native/stale",
    ]
