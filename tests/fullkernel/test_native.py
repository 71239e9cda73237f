"""The seed's native layout on a kernel with 8021q: two hosts, one switch, tagged VLANs.

Runs inside the full-kernel VM (``python -m simulator.vm --pytest tests/fullkernel``).
The switch namespace holds a plain Linux bridge, which passes tagged frames untouched, so
VLAN separation is the hosts' doing. Guests (namespaces on a veth enslaved to a host's
bridge, as CloudStack attaches a VM's tap) carry the test addresses: a guest has one
interface, so no host's weak-host ARP can blur which VLAN a frame crossed.

The tests share one lab and run in file order (apply, reach, isolate, re-apply, drift,
revert): the VM is slow, so the lab is built once.
"""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest
from pyroute2 import IPRoute

from bootstrap.engine.plan import Plan, make_plan
from bootstrap.engine.probe import IcmpProbe
from bootstrap.engine.services import NoServices
from bootstrap.engine.transaction import Outcome, apply_plan
from bootstrap.host.root import HostRoot
from bootstrap.model import effective_spec, parse_document
from bootstrap.model.spec import Network
from bootstrap.resources.native import native_resources
from bootstrap.resources.native_state import MARK
from simulator.namespaces import Namespace, new_run_id, remove_run, veth_pair

pytestmark = [pytest.mark.fullkernel, pytest.mark.root]

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "role-kvm.yaml"
T = TypeVar("T")
IFF_UP = 0x1
LINKS = ("eth0", "eth0.100", "eth0.200", "eth0.300", "mgmt0", "cloudbr0", "cloudbr1", "vnet0")


def network(host: str, address: str, **management: Any) -> Network:
    """The seed's example role plus a host overlay with this host's address."""
    overlay = {
        "apiVersion": "cloudstack-bootstrap/v1",
        "kind": "Host",
        "name": host,
        "version": 1,
        "spec": {"network": {"management": {"address": address, **management}}},
    }
    role = parse_document(EXAMPLE.read_text())
    spec = effective_spec([role, parse_document(overlay)])
    assert spec.network is not None
    return spec.network


def run_in(ns: Namespace, coro: Coroutine[Any, Any, T]) -> T:
    """One event loop inside ``ns``: every netlink socket the engine opens stays there."""
    with ns.entered():
        return asyncio.run(coro)


async def _plan(net: Network) -> Plan:
    return await make_plan(native_resources(net, HostRoot()))


async def _converge(net: Network, **kwargs: Any) -> tuple[Plan, Outcome]:
    plan = await _plan(net)
    return plan, await apply_plan(plan, services=NoServices(), **kwargs)


def reaches(ns: Namespace, address: str) -> bool:
    return run_in(ns, IcmpProbe(address, timeout=2.0).check())


def links(ns: Namespace) -> dict[str, Any]:
    with ns.iproute() as ipr:
        return {m.get("ifname"): m for m in ipr.link("dump")}


def identity(ns: Namespace) -> dict[str, tuple[int, int]]:
    """Index and carrier-change count per link: a flap or a recreate changes one of them."""
    found = links(ns)
    return {n: (found[n]["index"], found[n].get("carrier_changes")) for n in LINKS}


def add_address(ipr: IPRoute, ifname: str, cidr: str) -> None:
    iface = ipaddress.ip_interface(cidr)
    (index,) = ipr.link_lookup(ifname=ifname)
    ipr.addr("add", index=index, address=str(iface.ip), prefixlen=iface.network.prefixlen)


@dataclass
class Lab:
    run_id: str
    a: Namespace
    b: Namespace
    net_a: Network
    net_b: Network

    def guest(self, name: str, host: Namespace, bridge: str, cidr: str) -> Namespace:
        """A namespace on a veth whose host end ``vnetN`` is a port of ``bridge``."""
        guest = Namespace.create(f"{self.run_id}-{name}")
        port = f"vnet{sum(1 for n in links(host) if n.startswith('vnet'))}"
        veth_pair(guest, "eth0", host, port)
        with host.iproute() as ipr:
            (br,) = ipr.link_lookup(ifname=bridge)
            (idx,) = ipr.link_lookup(ifname=port)
            ipr.link("set", index=idx, master=br)
        with guest.iproute() as ipr:
            add_address(ipr, "eth0", cidr)
        return guest


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    run_id = new_run_id()
    try:
        switch, a, b = (Namespace.create(f"{run_id}-{n}") for n in ("sw", "a", "b"))
        veth_pair(a, "eth0", switch, "pa")
        veth_pair(b, "eth0", switch, "pb")
        with switch.iproute() as ipr:
            ipr.link("add", ifname="sw0", kind="bridge", br_stp_state=0, br_forward_delay=0)
            (sw0,) = ipr.link_lookup(ifname="sw0")
            for port in ("pa", "pb"):
                ipr.link("set", index=ipr.link_lookup(ifname=port)[0], master=sw0)
            ipr.link("set", index=sw0, state="up")
        yield Lab(
            run_id,
            a,
            b,
            network("kvm1", "192.168.42.11/24"),
            network("kvm2", "192.168.42.12/24"),
        )
    finally:
        remove_run(run_id)


def test_first_apply_builds_the_seed_layout(lab: Lab) -> None:
    for host, net in ((lab.a, lab.net_a), (lab.b, lab.net_b)):
        plan, outcome = run_in(host, _converge(net))
        assert outcome.ok, outcome.error
        created = {c.resource for c in plan.changes if c.action == "create"}
        assert {"vlan/eth0.100", "vlan/eth0.200", "vlan/eth0.300"} <= created
        assert {"bridge/mgmt0", "bridge/cloudbr0", "bridge/cloudbr1"} <= created
    found = links(lab.a)
    eth0 = found["eth0"]["index"]
    for vlan, bridge in ((100, "mgmt0"), (200, "cloudbr0"), (300, "cloudbr1")):
        sub = found[f"eth0.{vlan}"]
        assert sub.get(("linkinfo", "kind")) == "vlan"
        assert sub.get(("linkinfo", "data", "vlan_id")) == vlan
        assert sub.get("link") == eth0 and sub.get("ifalias") == MARK
        assert sub["flags"] & IFF_UP
        master = found[bridge]["index"] if bridge else None
        assert sub.get("master") == master
    for bridge in ("mgmt0", "cloudbr0", "cloudbr1"):
        br = found[bridge]
        assert br.get(("linkinfo", "kind")) == "bridge" and br.get("ifalias") == MARK
        assert br.get(("linkinfo", "data", "br_stp_state")) == 0
        assert br.get(("linkinfo", "data", "br_forward_delay")) == 500  # 5 s, in centiseconds
        assert br.get("mtu") == 1500 and br["flags"] & IFF_UP


def test_management_addresses_reach_each_other(lab: Lab) -> None:
    assert reaches(lab.a, "192.168.42.12")
    assert reaches(lab.b, "192.168.42.11")


def test_bridges_carry_their_vlan_and_only_it(lab: Lab) -> None:
    ga = lab.guest("ga", lab.a, "cloudbr0", "10.200.0.1/24")
    lab.guest("gb0", lab.b, "cloudbr0", "10.200.0.2/24")
    lab.guest("gb1", lab.b, "cloudbr1", "10.200.0.3/24")
    assert reaches(ga, "10.200.0.2")  # VLAN 200 to VLAN 200
    assert not reaches(ga, "10.200.0.3")  # VLAN 200 to VLAN 300: same subnet, no path
    # control: the guest on B's cloudbr1 is alive, seen from A's own cloudbr1 (VLAN 300)
    with lab.a.iproute() as ipr:
        add_address(ipr, "cloudbr1", "10.200.0.9/24")
    assert reaches(lab.a, "10.200.0.3")


def test_second_apply_changes_nothing_and_flaps_nothing(lab: Lab) -> None:
    before = identity(lab.a)
    plan, outcome = run_in(lab.a, _converge(lab.net_a))
    assert plan.changes == [] and outcome.ok and outcome.changes == []
    assert identity(lab.a) == before


def test_a_hand_edit_shows_as_drift_and_is_set_back(lab: Lab) -> None:
    before = identity(lab.a)
    found = links(lab.a)
    with lab.a.iproute() as ipr:
        ipr.link("set", index=found["cloudbr0"]["index"], mtu=1400)
        ipr.link("set", index=found["eth0.300"]["index"], state="down")
    plan = run_in(lab.a, _plan(lab.net_a))
    assert {(c.resource, c.action, c.detail) for c in plan.changes} == {
        ("bridge/cloudbr0", "modify", "mtu 1400 → 1500"),
        ("vlan/eth0.300", "modify", "down → up"),
    }
    _, outcome = run_in(lab.a, _converge(lab.net_a))
    assert outcome.ok, outcome.error
    assert run_in(lab.a, _plan(lab.net_a)).changes == []
    after = identity(lab.a)
    assert {n: i for n, (i, _) in after.items()} == {n: i for n, (i, _) in before.items()}


def test_a_change_that_loses_the_peer_is_reverted(lab: Lab) -> None:
    """Moving A's management to VLAN 101 cuts it off from B: the probe fails, all reverts."""
    data = lab.net_a.model_dump(mode="json")
    data["bridges"][0]["vlan"] = 101  # mgmt0, the bridge holding the address
    moved = Network.model_validate(data)
    before = run_in(lab.a, _plan(lab.net_a))
    assert before.changes == []
    plan, outcome = run_in(
        lab.a, _converge(moved, probes=[IcmpProbe("192.168.42.12")], rollback_window=2.0)
    )
    assert {"vlan/eth0.101", "vlan/eth0.100"} <= {c.resource for c in plan.changes}
    assert outcome.state == "rolled_back", outcome
    assert "eth0.101" not in links(lab.a)
    after = run_in(lab.a, _plan(lab.net_a))
    assert after.changes == []
    assert [s.current for s in after.steps] == [s.current for s in before.steps]
    assert reaches(lab.a, "192.168.42.12")
