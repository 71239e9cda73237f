"""The nets file model and the pure parts of the checks (no root needed)."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from bootstrap.errors import InvalidDocument
from simulator.checks import CheckResult, Row, blame
from simulator.nets import load_net, needs_8021q, parse_net

REPO = Path(__file__).resolve().parents[2]
OVS: dict[str, Any] = yaml.safe_load((REPO / "nets/ovs.yaml").read_text())


SHIPPED = sorted(p.stem for p in (REPO / "nets").glob("*.yaml"))


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_nets_load(name: str) -> None:
    net = load_net(REPO / f"nets/{name}.yaml")
    layout = net.layout()
    assert len({h.mgmt.ip for h in layout.hosts}) == len(layout.hosts)
    assert all(h.spec.network is not None for h in layout.hosts)


def test_layout_derives_addresses_and_first_contact() -> None:
    layout = parse_net(OVS).layout()
    kvm3 = layout.host("kvm3")
    assert str(kvm3.mgmt) == "192.168.42.13/24"
    assert str(kvm3.install_address) == "192.168.10.13/24"  # PXE: provisioning VLAN
    assert kvm3.host_doc["spec"]["network"]["management"]["vlan"] == 100
    assert layout.reach_vlans() == [200, 300]
    assert len(layout.peers()) == 6
    assert [vid for vid, _ in layout.routers()] == [10, 100]


def test_big_fleets_use_a_ring() -> None:
    scale = load_net(REPO / "nets/scale-100.yaml").layout()
    pairs = scale.peers()
    assert len(pairs) == 100
    assert {b.name for _, b in pairs} == {h.name for h in scale.hosts}  # everyone is probed


def test_native_nets_need_8021q() -> None:
    assert needs_8021q(load_net(REPO / "nets/basic.yaml"))
    assert needs_8021q(load_net(REPO / "nets/seed-native.yaml"))
    assert not needs_8021q(load_net(REPO / "nets/ovs.yaml"))
    # untagged bridges on bare NICs need no VLAN interface
    assert not needs_8021q(load_net(REPO / "nets/guide-bare-nic.yaml"))


def test_a_role_naming_the_management_bridge_gets_only_the_address() -> None:
    layout = load_net(REPO / "nets/seed-native.yaml").layout()
    kvm1 = layout.host("kvm1")
    assert kvm1.host_doc["spec"]["network"]["management"] == {
        "address": "192.168.42.11/24",
        "gateway": "192.168.42.1",
    }
    assert kvm1.spec.network is not None
    mgmt = kvm1.spec.network.device("management")
    assert mgmt is not None and (mgmt.name, mgmt.vlan) == ("mgmt0", 100)


def test_untagged_bridges_carry_their_nics_native_vlan() -> None:
    layout = load_net(REPO / "nets/guide-bare-nic.yaml").layout()
    kvm2 = layout.host("kvm2")
    assert kvm2.bridges == {300: "cloudbr1"}  # management (100) is checked host to host
    assert list(kvm2.nics) == ["eth0", "eth1"]
    assert (kvm2.port_of("eth0"), kvm2.port_of("eth1")) == ("h001", "h001n1")
    assert kvm2.install_mode == "bare" and kvm2.install_address == kvm2.mgmt


def _broken(path: list[str | int], value: Any) -> dict[str, Any]:
    data = copy.deepcopy(OVS)
    node: Any = data
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    return data


def test_install_modes_need_their_switch_and_backend() -> None:
    bare = dict(OVS, install={"management": "bare"})
    with pytest.raises(InvalidDocument) as err:
        parse_net(bare)
    assert err.value.field == "switch.native_vlan" and "management VLAN" in err.value.reason
    seed = dict(OVS, install={"management": "seed-ovs"}, hosts=[{"name": "kvm1"}])
    with pytest.raises(InvalidDocument) as err:
        parse_net(seed)
    assert err.value.field == "hosts[0].install"
    nic = dict(OVS, switch={**OVS["switch"], "nics": {"eth1": {"trunk_vlans": [999]}}})
    with pytest.raises(InvalidDocument) as err:
        parse_net(nic)
    assert err.value.field == "switch.nics.eth1.trunk_vlans[0]"


@pytest.mark.parametrize(
    ("path", "value", "field"),
    [
        (["hosts", 1, "backend"], "bridge", "hosts[1].backend"),
        (["switch", "trunk_vlans"], [10, 100, 200, 999], "switch.trunk_vlans[3]"),
        (["switch", "native_vlan"], 100, "switch.native_vlan"),
        (["broker", "address"], "10.9.9.9/24", "broker.address"),
        (["vlans", 1, "gateway"], "10.0.0.1", "vlans[1].gateway"),
        (["hosts", 0, "colour"], "red", "hosts[0].colour"),
        (["expect", "migration", "source"], "kvm9", "expect.migration.source"),
    ],
)
def test_errors_name_the_field(path: list[str | int], value: Any, field: str) -> None:
    with pytest.raises(InvalidDocument) as err:
        parse_net(_broken(path, value))
    assert err.value.field == field


def test_invalid_desired_spec_names_host_and_field() -> None:
    data = copy.deepcopy(OVS)
    data["desired"]["hosts"] = {
        "kvm2": {"spec": {"network": {"bridges": [{"name": "cloudbr0", "vlan": 5000}]}}}
    }
    with pytest.raises(InvalidDocument) as err:
        parse_net(data)
    assert "kvm2" in err.value.field and "vlan" in err.value.field


def test_blame_names_the_host_in_every_failing_row() -> None:
    rows = [
        Row("1->2", False, "", ("kvm1", "kvm2"), "vlan 300"),
        Row("2->1", False, "", ("kvm2", "kvm1"), "vlan 300"),
        Row("1->3", True, "", ("kvm1", "kvm3"), "vlan 300"),
        Row("3->2", False, "", ("kvm3", "kvm2"), "vlan 300"),
        Row("1->2", True, "", ("kvm1", "kvm2"), "vlan 200"),
    ]
    assert blame(rows) == ["kvm2"]
    assert CheckResult("reach", rows).hosts == ["kvm2"]
    assert blame([Row("x", True, "", ("kvm1",))]) == []


@pytest.mark.root
def test_cli_exit_2_names_the_field(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import json

    from simulator.cli import main

    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(_broken(["switch", "native_vlan"], 100)))
    assert main(["demo", str(bad), "--json"]) == 2
    report = json.loads(capsys.readouterr().out)
    assert report["ok"] is False
    assert "switch.native_vlan" in report["error"]
