"""End to end: real namespaces, switch, mosquitto, OVS, agents and QEMU (root only).

Each test builds a small fleet through the ``sim`` fixture, which always tears it down.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from simulator.checks import CheckResult
from simulator.checks.reach import _plan, attach_guests, held, teach_bridges
from simulator.fabric import BINDINGS_TABLE, SWITCH_BRIDGE, no_offload
from simulator.fleet import STATE_DIR, Sim
from simulator.hosts import SimHost
from simulator.namespaces import Namespace, link_up, ours
from simulator.pytest_plugin import SimFactory
from tests.sim.marks import FLEET

pytestmark = FLEET
REPO = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent


def _by_name(results: list[CheckResult]) -> dict[str, CheckResult]:
    return {r.name: r for r in results}


def _leftovers(marker: str) -> list[str]:
    """Processes whose command line mentions ``marker`` (a run's work directory)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            state = (entry / "stat").read_text().split(") ", 1)[1][0]
        except (OSError, IndexError):
            continue
        if marker in cmd and state != "Z":
            found.append(cmd[:120])
    return found


@pytest.mark.qemu
def test_ovs_net_passes_every_check(sim: SimFactory) -> None:
    fleet = sim("nets/ovs.yaml")
    assert [(r.host, r.state) for r in fleet.rollout_rows if not r.ok] == []
    # these hosts have no distro network configuration: the plan says the layout cannot be
    # persisted, and the agent's status carries it to the operator
    for row in fleet.rollout_rows:
        assert any(w.startswith("spec.network.persist:") for w in row.warnings), row
    _switch_answered_arp(fleet)
    # each host's vswitchd kept the simulator's one setting through the apply (the product
    # leaves Open_vSwitch's other_config alone); the switch runs the defaults
    for host in fleet.hosts.values():
        assert host.ovs is not None
        got = host.ovs.vsctl("get", "Open_vSwitch", ".", "other_config").strip()
        assert got == '{max-revalidator="10000"}', (host.name, got)
    assert fleet.fabric is not None and fleet.fabric.ovs is not None
    assert fleet.fabric.ovs.vsctl("get", "Open_vSwitch", ".", "other_config").strip() == "{}"
    _brokers_request_went_to_its_owner(fleet)
    _binding_gleaned_from_a_connection(fleet)
    _bridges_taught_off_the_wire(fleet)
    results = _by_name(fleet.check())
    assert set(results) == {"reach", "isolation", "ports", "migration", "cloudstack"}
    for result in results.values():
        assert result.skipped is None, result.name
        assert result.ok, (result.name, [r for r in result.rows if not r.ok])
    # the checks really looked: both guest VLANs, every pair, the blocked port
    assert any("-/->" in r.subject for r in results["reach"].rows)
    assert len(results["ports"].rows) == 6
    assert any("outside" in r.subject for r in results["migration"].rows)
    _switch_snooped_arp(fleet)
    # the first contact happened: management moved from the provisioning VLAN to mgmt0
    kvm1 = fleet.hosts["kvm1"]
    with kvm1.ns.iproute() as ipr:
        (mgmt0,) = ipr.link_lookup(ifname="mgmt0")
        addrs = [a.get_attr("IFA_ADDRESS") for a in ipr.get_addr(index=mgmt0)]
    assert "192.168.42.11" in addrs


def _mac(ns: Namespace, ifname: str) -> str:
    with ns.iproute() as ipr:
        (idx,) = ipr.link_lookup(ifname=ifname)
        return str(ipr.get_links(idx)[0].get_attr("IFLA_ADDRESS"))


def _switch_answered_arp(fleet: Sim) -> None:
    """After the rollout (each host asked for its gateway and its broker on mgmt0, VLAN
    100), before any check: the switch answered those requests itself (its ARP
    responder's flows counted them), with the broker's true MAC, and no request flooded
    the other hosts: no host's bridge learnt another host's management MAC."""
    assert fleet.fabric is not None and fleet.fabric.ovs is not None
    flows = fleet.fabric.ovs.ofctl("dump-flows", SWITCH_BRIDGE, "arp,dl_vlan=100")
    for address in ("192.168.42.1", "192.168.42.2"):
        (flow,) = [f for f in flows.splitlines() if f"arp_tpa={address}" in f]
        assert int(flow.split("n_packets=")[1].split(",")[0]) > 0, flow
    assert fleet.broker_ns is not None
    broker_mac = _mac(fleet.broker_ns, "v100")
    macs = {name: _mac(host.ns, "mgmt0") for name, host in fleet.hosts.items()}
    for name, host in fleet.hosts.items():
        with host.ns.iproute() as ipr:
            (mgmt0,) = ipr.link_lookup(ifname="mgmt0")
            found = {
                str(n.get_attr("NDA_DST")): str(n.get_attr("NDA_LLADDR"))
                for n in ipr.get_neighbours(ifindex=mgmt0)
            }
        assert found.get("192.168.42.2") == broker_mac, (name, found)
        assert host.ovs is not None
        fdb = host.ovs.appctl("ovs-vswitchd", "fdb/show", "cloudbr")
        assert not [n for n, mac in macs.items() if n != name and mac in fdb], (name, fdb)


def _quiet_others(fleet: Sim, name: str) -> tuple[str, str, str, list[SimHost]]:
    """Host ``name``'s management address and MAC, the broker's MAC, and the other hosts,
    their datapath flows deleted (a broadcast that reaches one leaves a flow there)."""
    assert fleet.broker_ns is not None
    host = fleet.hosts[name]
    broker_mac = _mac(fleet.broker_ns, "v100")
    others = [h for n, h in fleet.hosts.items() if n != name]
    for other in others:
        assert other.ovs is not None
        other.ovs.appctl("ovs-vswitchd", "dpctl/del-flows")
    return str(host.layout.mgmt.ip), _mac(host.ns, "mgmt0"), broker_mac, others


def _brokers_neighbours(fleet: Sim) -> dict[str, str]:
    assert fleet.broker_ns is not None
    with fleet.broker_ns.iproute() as ipr:
        (v100,) = ipr.link_lookup(ifname="v100")
        return {
            str(n.get_attr("NDA_DST")): str(n.get_attr("NDA_LLADDR"))
            for n in ipr.get_neighbours(ifindex=v100)
        }


def _no_broadcast_from(mac: str, hosts: list[SimHost]) -> None:
    for host in hosts:
        assert host.ovs is not None
        flows = host.ovs.appctl("ovs-vswitchd", "dpctl/dump-flows")
        assert f"eth(src={mac},dst=ff:ff:ff:ff:ff:ff)" not in flows, (host.name, flows)


def _brokers_request_went_to_its_owner(fleet: Sim) -> None:
    """The broker asking for a host (here after forgetting kvm1's address) is not flooded
    to the other hosts: the switch looks the request up in the binding kvm1 taught it
    when it asked for its gateway, and sends it to kvm1 alone, which answers it. Neither
    other host's datapath sees a broadcast from the broker (with flooding each gets one,
    and makes a datapath flow for it)."""
    assert fleet.fabric is not None and fleet.fabric.ovs is not None
    assert fleet.broker_ns is not None
    address, mac, broker_mac, others = _quiet_others(fleet, "kvm1")

    def used(flows: str) -> int:
        (flow,) = [f for f in flows.splitlines() if f"arp_tpa={address}," in f]
        return int(flow.split("n_packets=")[1].split(",")[0])

    def binding() -> str:
        assert fleet.fabric is not None and fleet.fabric.ovs is not None
        return fleet.fabric.ovs.ofctl("dump-flows", SWITCH_BRIDGE, f"table={BINDINGS_TABLE}")

    before = used(binding())
    fleet.broker_ns.run(["ip", "neigh", "flush", "to", address, "dev", "v100"])
    fleet.broker_ns.run(["ping", "-c", "1", "-W", "5", address], capture_output=True)
    # the host answered the request that reached it alone
    found = _brokers_neighbours(fleet)
    assert found.get(address) == mac, found
    # flow counters are credited when vswitchd's revalidator next reads the datapath
    deadline = time.monotonic() + 10
    while (now := used(binding())) == before and time.monotonic() < deadline:
        time.sleep(0.1)  # polling a counter, not waiting for time
    assert now > before
    _no_broadcast_from(broker_mac, others)


def _binding_gleaned_from_a_connection(fleet: Sim) -> None:
    """A host that connects to the broker from an address it never sent an ARP from (its
    entry for the broker already there, as when its address moved to mgmt0 under an open
    connection): the switch learns the binding from the connection's SYN, so the broker's
    request for the host still goes to it alone, and the connection is made. Without that
    the request floods: each other host's datapath gets a broadcast from the broker."""
    assert fleet.fabric is not None and fleet.fabric.ovs is not None
    assert fleet.broker_ns is not None
    kvm2 = fleet.hosts["kvm2"]
    address, mac, broker_mac, others = _quiet_others(fleet, "kvm2")
    # the switch forgets the binding, and the datapath flows its earlier connections left
    # (a host's first connection from a new address is new to the switch's slow path)
    binding = f"table={BINDINGS_TABLE},arp,arp_tpa={address}"
    fleet.fabric.ovs.ofctl("del-flows", SWITCH_BRIDGE, binding)
    fleet.fabric.ovs.appctl("ovs-vswitchd", "dpctl/del-flows")
    fleet.broker_ns.run(["ip", "neigh", "flush", "to", address, "dev", "v100"])
    pin = ["ip", "neigh", "replace", "192.168.42.2", "lladdr", broker_mac, "dev", "mgmt0"]
    kvm2.ns.run([*pin, "nud", "permanent"])  # kvm2 sends no ARP of its own
    try:
        connect = "import socket; socket.create_connection(('192.168.42.2', 1883), 10).close()"
        kvm2.ns.run([sys.executable, "-c", connect])
    finally:
        kvm2.ns.run([*pin, "nud", "stale"])
    assert f"arp_tpa={address}" in fleet.fabric.ovs.ofctl("dump-flows", SWITCH_BRIDGE, binding)
    found = _brokers_neighbours(fleet)
    assert found.get(address) == mac, found
    _no_broadcast_from(broker_mac, others)


def _bridges_taught_off_the_wire(fleet: Sim) -> None:
    """What the reach check does before its first ping, alone: every host's bridge has
    learnt every other host's guest MACs, each on its VLAN behind eth0, and the switch
    every binding, yet no frame of theirs crossed a datapath (a flooded announcement
    leaves a flow in every host's vswitchd for each MAC)."""
    attach_guests(fleet)
    asyncio.run(teach_bridges(fleet, held(fleet)))
    guests = {
        (vlan, _mac(g.ns, "eth0"), name)
        for name, host in fleet.hosts.items()
        for vlan, g in host.guests.items()
    }
    assert len(guests) == 2 * len(fleet.hosts)
    for name, host in fleet.hosts.items():
        assert host.ovs is not None
        eth0 = host.ovs.vsctl("get", "Interface", "eth0", "ofport").strip()
        fdb = {
            tuple(line.split()[:3])
            for line in host.ovs.appctl("ovs-vswitchd", "fdb/show", "cloudbr").splitlines()[1:]
        }
        flows = host.ovs.appctl("ovs-vswitchd", "dpctl/dump-flows")
        for vlan, mac, owner in guests:
            if owner != name:
                assert (eth0, str(vlan), mac) in fdb, (name, vlan, mac, fdb)
                assert f"src={mac}" not in flows, (name, mac, flows)
    _switch_learnt_every_binding(fleet)


def _switch_learnt_every_binding(fleet: Sim) -> set[tuple[int, str]]:
    assert fleet.fabric is not None and fleet.fabric.ovs is not None
    flows = fleet.fabric.ovs.ofctl("dump-flows", SWITCH_BRIDGE, f"table={BINDINGS_TABLE}")
    learnt = {
        (int(f.split("vlan_tci=")[1].split("/")[0], 16), f.split("arp_tpa=")[1].split(",")[0])
        for f in flows.splitlines()
        if "arp_tpa=" in f
    }
    wanted = set()
    for host in fleet.hosts.values():
        wanted.add((100, str(host.layout.mgmt.ip)))
        for vlan, guest in host.guests.items():
            wanted |= {(vlan, str(guest.address.ip)), (vlan, str(guest.probe.ip))}
    assert len(wanted) == len(fleet.hosts) * 5
    assert wanted <= learnt, sorted(wanted - learnt)
    return learnt


def _switch_snooped_arp(fleet: Sim) -> None:
    """After the reach check: the switch held every binding, each on its own VLAN, and
    requests for them went to their owners as unicasts (the learnt flows counted them)."""
    _switch_learnt_every_binding(fleet)
    assert fleet.fabric is not None and fleet.fabric.ovs is not None
    flows = fleet.fabric.ovs.ofctl("dump-flows", SWITCH_BRIDGE, f"table={BINDINGS_TABLE}")
    counted = sum(int(f.split("n_packets=")[1].split(",")[0]) for f in flows.splitlines()[1:])
    assert counted > 0, flows


def _passes_every_check(fleet: Sim, *, skipped: set[str] = frozenset()) -> dict[str, CheckResult]:
    assert [(r.host, r.state, r.detail) for r in fleet.rollout_rows if not r.ok] == []
    results = _by_name(fleet.check())
    assert set(results) == {"reach", "isolation", "ports", "migration", "cloudstack"}
    for result in results.values():
        assert (result.skipped is not None) == (result.name in skipped), result.name
        assert result.ok, (result.name, [r for r in result.rows if not r.ok])
    # CloudStack's agent would start on every host: its private device holds the address
    private = [r for r in results["cloudstack"].rows if r.subject.endswith("cloudstack-private")]
    assert len(private) == len(fleet.hosts)
    return results


@pytest.mark.qemu
def test_the_current_guides_bare_nic_layout_passes_every_check(sim: SimFactory) -> None:
    fleet = sim("nets/guide-bare-nic.yaml")
    results = _passes_every_check(fleet, skipped={"isolation"})  # one guest VLAN only
    assert any("vlan 300" in r.subject for r in results["reach"].rows)
    kvm1 = fleet.hosts["kvm1"]
    with kvm1.ns.iproute() as ipr:
        names = {link["index"]: link.get_attr("IFLA_IFNAME") for link in ipr.get_links()}
        masters = {
            names[link["index"]]: names.get(link.get_attr("IFLA_MASTER"))
            for link in ipr.get_links()
        }
        (br,) = ipr.link_lookup(ifname="cloudbr0")
        addrs = [a.get_attr("IFA_ADDRESS") for a in ipr.get_addr(index=br)]
    assert "192.168.42.11" in addrs  # moved from the bare eth0 onto its bridge
    assert masters["eth0"] == "cloudbr0" and masters["eth1"] == "cloudbr1"


@pytest.mark.qemu
def test_a_fleet_built_by_hand_the_seeds_way_is_adopted(sim: SimFactory) -> None:
    fleet = sim("nets/brownfield-ovs.yaml", rollout=False)

    def rows(name: str) -> dict[str, list[str]]:
        ovs = fleet.hosts[name].ovs
        assert ovs is not None
        out = {}
        for table in ("Bridge", "Port", "Interface"):
            listing = json.loads(ovs.vsctl("--format=json", "--columns=_uuid,name", "list", table))
            out[table] = sorted(f"{n}={u[1]}" for u, n in listing["data"])
        return out

    built = {name: rows(name) for name in fleet.hosts}
    assert "Bridge" in built["kvm1"] and any("mgmt0" in r for r in built["kvm1"]["Port"])
    fleet.rollout()
    # adopted, not rebuilt: the same rows (uuids), now marked ours
    assert {name: rows(name) for name in fleet.hosts} == built
    ovs = fleet.hosts["kvm2"].ovs
    assert ovs is not None
    assert (
        ovs.vsctl("get", "port", "mgmt0", "external_ids:cloudstack-bootstrap").strip() == "managed"
    )
    assert ovs.vsctl("get", "port", "eth0", "trunks").strip() == "[100, 200, 300]"
    _passes_every_check(fleet)


@pytest.mark.qemu
def test_bonded_hosts_keep_every_path_with_a_member_cable_pulled(sim: SimFactory) -> None:
    fleet = sim("nets/bond-ovs.yaml")
    _passes_every_check(fleet)
    assert fleet.fabric is not None
    for host in fleet.layout.hosts:  # the switch side of eth0 down on every host
        fleet.fabric.set_port(host.port_of("eth0"), up=False)
    for name, result in _by_name(fleet.check(["reach", "ports", "migration"])).items():
        assert result.ok, (name, [r for r in result.rows if not r.ok])
    ovs = fleet.hosts["kvm3"].ovs
    assert ovs is not None
    assert "may_enable: false" in ovs.appctl("ovs-vswitchd", "bond/show", "bond0")  # really cut


def test_broken_net_fails_exactly_the_right_checks(sim: SimFactory) -> None:
    fleet = sim(HERE / "broken.yaml")
    assert all(r.ok for r in fleet.rollout_rows), fleet.rollout_rows  # faults apply fine
    results = _by_name(fleet.check(["reach", "isolation", "ports"]))
    assert not results["reach"].ok
    assert results["reach"].hosts == ["kvm2"]  # cloudbr1 on VLAN 301
    assert {r.group for r in results["reach"].failed} == {"vlan 300"}
    assert not results["ports"].ok
    assert results["ports"].hosts == ["kvm3"]  # no 49200
    assert [r.detail for r in results["ports"].failed] == ["closed: 49200"] * 2
    assert results["isolation"].ok


def test_a_host_joining_two_vlans_is_found_though_no_leak_ping_involves_it(
    sim: SimFactory, tmp_path: Path
) -> None:
    """Beyond 8 hosts only the first hosts' peers get the pings that must not reach: each
    is a flood through every host, so a host in none of them that joins VLANs 200 and 300
    (a cable between two access ports of its bridge) is still found, by reach and by
    isolation, and nothing that should reach stops reaching."""
    net = yaml.safe_load((REPO / "nets/scale-100.yaml").read_text())
    net["hosts"]["count"] = 10
    net["name"] = "leak-10"
    path = tmp_path / "leak.yaml"
    path.write_text(yaml.safe_dump(net))
    fleet = sim(path)
    assert all(r.ok for r in fleet.rollout_rows), fleet.rollout_rows
    culprit = list(fleet.hosts.values())[-1]  # the tenth: no leak ping from or to it
    attach_guests(fleet)
    leak_pings = [p for p in _plan(fleet, {})[0] if not p.expect]
    assert leak_pings and all(culprit.name not in p.hosts for p in leak_pings)
    with culprit.ns.iproute() as ipr:
        ipr.link("add", ifname="leak200", kind="veth", peer="leak300")
    for end in ("leak200", "leak300"):
        with culprit.ns.inside():
            link_up(end)
        no_offload(culprit.ns, end)
    assert culprit.ovs is not None
    culprit.ovs.vsctl(
        "add-port", "cloudbr", "leak200", "tag=200", "--",
        "add-port", "cloudbr", "leak300", "tag=300",
    )  # fmt: skip
    results = _by_name(fleet.check(["reach", "isolation"]))
    failed = results["reach"].failed
    assert failed and all("-/->" in r.subject for r in failed), failed
    assert {r.detail for r in failed} == {"reaches (unexpected)"}
    assert not results["isolation"].ok
    assert culprit.name in results["isolation"].hosts


def test_down_after_a_crash_leaves_nothing(tmp_path: Path) -> None:
    """`up` exits leaving its daemons behind (as a crash would); `down` finds them all."""
    net = yaml.safe_load((REPO / "nets/ovs.yaml").read_text())
    net["name"] = "crash"
    net["hosts"] = net["hosts"][:2]
    path = tmp_path / "crash.yaml"
    path.write_text(yaml.safe_dump(net))
    cli = [sys.executable, "-m", "simulator.cli"]
    up = subprocess.run(
        [*cli, "up", str(path), "--json"], capture_output=True, text=True, timeout=180, check=False
    )
    report = json.loads(up.stdout)
    run = report["run"]
    try:
        assert up.returncode == 0, report
        state = json.loads((STATE_DIR / f"{run}.json").read_text())
        workdir = state["workdir"]
        assert len(ours(run)) == 4  # switch, broker, two hosts
        assert _leftovers(workdir)  # mosquitto, ovsdb-server, ovs-vswitchd, agents
        down = subprocess.run(
            [*cli, "down", "--run", run], capture_output=True, text=True, timeout=120, check=False
        )
        assert down.returncode == 0, down.stderr
        assert ours(run) == []
        assert _leftovers(workdir) == []
        assert not Path(workdir).exists()
        assert not (STATE_DIR / f"{run}.json").exists()
    finally:
        subprocess.run([*cli, "down", "--run", run], capture_output=True, timeout=120, check=False)


@pytest.mark.fullkernel
@pytest.mark.qemu
def test_mixed_net_passes(sim: SimFactory) -> None:
    fleet = sim("nets/mixed.yaml")
    assert [(r.host, r.detail) for r in fleet.rollout_rows if not r.ok] == []
    failed = [(r.name, r.hosts) for r in fleet.check() if not r.ok]
    assert failed == []
