"""The OVS backend on real daemons: each host runs its own ovsdb-server and ovs-vswitchd
(netdev datapath: this kernel has no openvswitch module) in its own namespace, with eth0
on a switch namespace whose plain Linux bridge passes tagged frames untouched.

The engine runs inside the host's namespace, as the agent does. ovs-vsctl (a separate
client) is the oracle for what ended up in OVSDB; pyroute2 and ping for the kernel.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import pytest

from bootstrap.engine.plan import Plan, make_plan
from bootstrap.engine.resource import Change, Resource
from bootstrap.engine.services import NoServices
from bootstrap.engine.transaction import Outcome, apply_plan, revert_steps
from bootstrap.errors import ResourceError
from bootstrap.model.spec import Network
from bootstrap.resources.openvswitch import OpenVSwitch, openvswitch_resources
from bootstrap.resources.ovsdb import OvsdbClient, OvsdbError, connect, ovsdb_session
from simulator.hosts import build_seed_ovs
from simulator.namespaces import Namespace, veth_pair
from simulator.ovs import OvsDaemons
from tests.hostview import host_view

pytestmark = [pytest.mark.root, pytest.mark.netns, pytest.mark.ovs]

T = TypeVar("T")
NamespaceFactory = Callable[[str], Namespace]
OvsFactory = Callable[[Namespace], OvsDaemons]
INTERNAL = ("cloudbr", "mgmt0", "cloudbr0", "cloudbr1")


def seed_network(address: str, **changes: Any) -> Network:
    """The seed's OVS example: mgmt on VLAN 100, cloudbr0 on 200, cloudbr1 on 300."""
    doc: dict[str, Any] = {
        "backend": "openvswitch",
        "uplink": "eth0",
        "management": {"vlan": 100, "address": address, "gateway": "192.168.42.1"},
        "bridges": [
            {"name": "cloudbr0", "vlan": 200, "traffic": ["public"]},
            {"name": "cloudbr1", "vlan": 300, "traffic": ["guest"]},
        ],
        "openvswitch": {"bridge": "cloudbr", "datapath": "netdev"},
    }
    doc.update(changes)
    return Network.model_validate(doc)


@dataclass
class Host:
    ns: Namespace
    ovs: OvsDaemons

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run the engine the way the agent does: inside the host's namespace."""
        with self.ns.entered():
            return asyncio.run(coro)

    def converge(self, network: Network) -> tuple[Plan, Outcome]:
        async def go() -> tuple[Plan, Outcome]:
            plan = await make_plan(openvswitch_resources(network, self.ovs.host))
            return plan, await apply_plan(plan, services=NoServices(), verify_timeout=5)

        return self.run(go())

    def plan(self, network: Network) -> Plan:
        return self.run(make_plan(openvswitch_resources(network, self.ovs.host)))

    def revert(self, plan: Plan) -> list[str]:
        return self.run(revert_steps([(s.resource, s.current) for s in plan.pending]))

    def get(self, *args: str) -> str:
        return self.ovs.vsctl("get", *args).strip()

    def links(self) -> dict[str, tuple[int, bool]]:
        """ifname -> (ifindex, up)."""
        with self.ns.iproute() as ipr:
            return {
                link.get("ifname"): (link["index"], bool(link["flags"] & 1))
                for link in ipr.link("dump")
            }

    def add_addr(self, dev: str, cidr: str) -> None:
        iface = ipaddress.ip_interface(cidr)
        with self.ns.iproute() as ipr:
            (idx,) = ipr.link_lookup(ifname=dev)
            ipr.addr("add", index=idx, address=str(iface.ip), prefixlen=iface.network.prefixlen)

    def addresses(self) -> set[tuple[str, str]]:
        with self.ns.iproute() as ipr:
            names = {link["index"]: link.get("ifname") for link in ipr.link("dump")}
            return {
                (names[m["index"]], f"{m.get('address')}/{m['prefixlen']}")
                for m in ipr.addr("dump", family=2)
                if m["scope"] == 0
            }

    def default_dev(self) -> set[str]:
        with self.ns.iproute() as ipr:
            names = {link["index"]: link.get("ifname") for link in ipr.link("dump")}
            return {names[m.get("oif")] for m in ipr.route("dump", family=2) if m["dst_len"] == 0}

    def ping(self, address: str, wait: int = 10) -> bool:
        done = self.ns.run(["ping", "-c1", f"-w{wait}", address], check=False, capture_output=True)
        return done.returncode == 0

    def dump(self) -> dict[str, list[str]]:
        """Every Bridge/Port/Interface row (uuid and the columns we or a human configure)."""
        columns = {
            "Bridge": "_uuid,name,datapath_type,external_ids,ports",
            "Port": "_uuid,name,tag,trunks,fake_bridge,external_ids,interfaces",
            "Interface": "_uuid,name,type,mtu_request,external_ids",
        }
        out: dict[str, list[str]] = {}
        for table, cols in columns.items():
            rows = json.loads(self.ovs.vsctl("--format=json", f"--columns={cols}", "list", table))
            out[table] = sorted(json.dumps(r) for r in rows["data"])
        return out


@pytest.fixture
def make_host(make_ns: NamespaceFactory, ovs_daemons: OvsFactory) -> Callable[[str], Host]:
    """``make_host("a")``: namespace, uplink eth0 to the switch, its own OVS daemons."""
    switch = make_ns("sw")
    with switch.iproute() as ipr:
        ipr.link("add", ifname="sw", kind="bridge")  # no VLAN filtering: tags pass untouched
        (sw_idx,) = ipr.link_lookup(ifname="sw")
        ipr.link("set", index=sw_idx, state="up")

    def make(name: str) -> Host:
        ns = make_ns(name)
        # Answer ARP only on the link holding the address, so a reply can only come over
        # the VLAN the request travelled on (Linux's weak host model would hide leaks).
        ns.run(["sysctl", "-qw", "net.ipv4.conf.all.arp_ignore=1"])
        veth_pair(ns, "eth0", switch, f"p-{name}")
        with switch.iproute() as ipr:
            (idx,) = ipr.link_lookup(ifname=f"p-{name}")
            ipr.link("set", index=idx, master=sw_idx)
        return Host(ns, ovs_daemons(ns))

    return make


def test_seed_layout_reaches_peers_and_isolates_vlans(make_host: Callable[[str], Host]) -> None:
    a, b = make_host("a"), make_host("b")
    for host, address in ((a, "192.168.42.11/24"), (b, "192.168.42.12/24")):
        plan, outcome = host.converge(seed_network(address))
        assert outcome.state == "converged", outcome.error
        assert {c.resource for c in plan.changes} >= {
            "ovs-bridge/cloudbr",
            "ovs-port/eth0",
            "ovs-fake-bridge/mgmt0",
            "address/192.168.42" + address.removeprefix("192.168.42").split("/")[0],
        }

    # OVSDB holds exactly what the seed's ovs-vsctl commands make.
    assert a.ovs.vsctl("list-br").split() == ["cloudbr", "cloudbr0", "cloudbr1", "mgmt0"]
    for fake, vlan in (("mgmt0", "100"), ("cloudbr0", "200"), ("cloudbr1", "300")):
        assert a.ovs.vsctl("br-to-parent", fake).strip() == "cloudbr"
        assert a.ovs.vsctl("br-to-vlan", fake).strip() == vlan
        assert a.get("interface", fake, "type") == "internal"
        assert a.get("interface", fake, "mtu_request") == "1500"
    assert a.get("port", "eth0", "trunks") == "[100, 200, 300]"
    assert a.get("bridge", "cloudbr", "datapath_type") == "netdev"
    assert a.get("bridge", "cloudbr", "external_ids:cloudstack-bootstrap") == "managed"
    assert all(a.links()[name][1] for name in INTERNAL)
    assert ("mgmt0", "192.168.42.11/24") in a.addresses()

    assert a.ping("192.168.42.12")
    assert b.ping("192.168.42.11")

    for host, n in ((a, 1), (b, 2)):
        host.add_addr("cloudbr0", f"10.200.0.{n}/24")
        host.add_addr("cloudbr1", f"10.30.0.{n}/24")
    assert a.ping("10.200.0.2")
    assert b.ping("10.30.0.1")

    # The same subnet on VLAN 200 (a) and VLAN 300 (b): they must not meet.
    a.add_addr("cloudbr0", "10.77.0.1/24")
    b.add_addr("cloudbr1", "10.77.0.2/24")
    assert not a.ping("10.77.0.2", wait=1)
    assert not b.ping("10.77.0.1", wait=1)
    assert a.ping("10.200.0.2")  # while the VLAN 200 path itself works
    # Control: put b's cloudbr1 on VLAN 200 by hand and the same ping goes through.
    b.ovs.vsctl("set", "port", "cloudbr1", "tag=200")
    assert a.ping("10.77.0.2")


def test_second_apply_changes_nothing_and_flaps_nothing(make_host: Callable[[str], Host]) -> None:
    a = make_host("a")
    network = seed_network("192.168.42.11/24")
    _, outcome = a.converge(network)
    assert outcome.state == "converged", outcome.error
    links, rows = a.links(), a.dump()
    next_cfg = a.get("open_vswitch", ".", "next_cfg")

    plan = a.plan(network)
    assert not plan.changes
    for step in plan.steps:  # snapshots survive the crash journal's JSON
        data = json.loads(json.dumps(step.resource.dump(step.current)))
        assert step.resource.load(data) == step.current
    # Apply anyway (the engine would skip it): nothing is written, nothing recreated.
    (step,) = [s for s in plan.steps if isinstance(s.resource, OpenVSwitch)]
    a.run(step.resource.apply(step.current, step.target))
    _, outcome = a.converge(network)
    assert outcome.state == "converged" and not outcome.changes
    assert a.get("open_vswitch", ".", "next_cfg") == next_cfg
    assert a.dump() == rows
    assert {n: links[n] for n in INTERNAL} == {n: a.links()[n] for n in INTERNAL}


def test_drift_by_hand_shows_in_the_plan_and_is_repaired(make_host: Callable[[str], Host]) -> None:
    a = make_host("a")
    network = seed_network("192.168.42.11/24")
    assert a.converge(network)[1].state == "converged"
    a.ovs.vsctl("set", "port", "eth0", "trunks=100,200")
    a.ovs.vsctl("del-br", "cloudbr1")
    a.ns.run(["ip", "link", "set", "cloudbr0", "down"])

    changes = {(c.resource, c.action): c.detail for c in a.plan(network).changes}
    assert "trunks (100, 200) -> (100, 200, 300)" in changes[("ovs-port/eth0", "modify")]
    assert changes[("ovs-fake-bridge/cloudbr1", "create")].startswith("vlan 300")
    assert "up False -> True" in changes[("ovs-fake-bridge/cloudbr0", "modify")]

    assert a.converge(network)[1].state == "converged"
    assert not a.plan(network).changes
    assert a.get("port", "eth0", "trunks") == "[100, 200, 300]"
    assert a.ovs.vsctl("br-to-vlan", "cloudbr1").strip() == "300"


def test_revert_restores_ovsdb_and_never_touches_foreign_bridges(
    make_host: Callable[[str], Host],
) -> None:
    a = make_host("a")
    a.ns.run(["ip", "link", "add", "hand0", "type", "veth", "peer", "name", "hand1"])
    a.ovs.vsctl(
        "add-br",
        "handbr",
        "--",
        "set",
        "bridge",
        "handbr",
        "datapath_type=netdev",
        "--",
        "add-port",
        "handbr",
        "hand0",
        "--",
        "set",
        "port",
        "hand0",
        "tag=100",
    )
    v1 = seed_network("192.168.42.11/24")
    assert a.converge(v1)[1].state == "converged"
    before = a.dump()

    v2 = seed_network(
        "192.168.42.11/24",
        mtu=1400,
        bridges=[
            {"name": "cloudbr0", "vlan": 200},
            {"name": "cloudbr1", "vlan": 301},
            {"name": "cloudbr2", "vlan": 400},
        ],
    )
    plan, outcome = a.converge(v2)
    assert outcome.state == "converged", outcome.error
    assert a.get("port", "eth0", "trunks") == "[100, 200, 301, 400]"
    assert a.get("interface", "cloudbr0", "mtu_request") == "1400"
    foreign = {t: [r for r in rows if "hand" in r] for t, rows in before.items()}
    assert {t: [r for r in rows if "hand" in r] for t, rows in a.dump().items()} == foreign

    assert a.revert(plan) == []
    assert a.dump() == before  # same rows, same uuids: edited in place and back

    # Removing everything we own leaves the hand-made bridge exactly as it was.
    owned = OpenVSwitch(a.ovs.host, None)
    assert a.run(owned.observe()).bridges
    a.run(owned.apply(a.run(owned.observe()), owned.target(a.run(owned.observe()))))
    assert a.ovs.vsctl("list-br").split() == ["handbr"]
    assert {t: [r for r in rows if "hand" in r] for t, rows in a.dump().items()} == foreign
    assert "mgmt0" not in a.links()


class Explode(Resource[str | None]):
    """A resource after the network whose apply fails: forces the transaction's rollback."""

    state_type: ClassVar[Any] = str | None

    @property
    def name(self) -> str:
        return "test/explode"

    async def observe(self) -> str | None:
        return None

    def target(self, current: str | None) -> str | None:
        return "boom"

    def diff(self, current: str | None, target: str | None) -> list[Change]:
        return [] if current == target else [Change(self.name, "create", "fails on purpose")]

    async def apply(self, current: str | None, target: str | None) -> None:
        if target is not None:
            raise ResourceError("forced failure", resource=self.name)


def test_the_seeds_hand_built_layout_is_adopted_and_given_back_byte_for_byte(
    make_host: Callable[[str], Host],
) -> None:
    a, b = make_host("a"), make_host("b")
    assert b.converge(seed_network("192.168.42.12/24"))[1].state == "converged"
    build_seed_ovs(a.ovs)
    a.ns.run(["ip", "link", "set", "mgmt0", "up"])
    a.add_addr("mgmt0", "192.168.42.11/24")
    a.ns.run(["ip", "route", "add", "default", "via", "192.168.42.1", "dev", "mgmt0", "onlink"])
    assert a.ping("192.168.42.12", wait=5)
    before = (a.dump(), host_view(a.ns), a.ovs.vsctl("show"))

    network = seed_network("192.168.42.11/24")
    plan = a.plan(network)
    adopted = {c.resource for c in plan.changes if c.action == "adopt"}
    assert {"ovs-bridge/cloudbr", "ovs-port/eth0", "ovs-fake-bridge/mgmt0"} <= adopted
    assert not [c for c in plan.changes if c.action in ("create", "delete")], plan.changes
    assert "trunks () -> (100, 200, 300)" in str(plan.changes)

    async def forced() -> Outcome:
        resources = [*openvswitch_resources(network, a.ovs.host), Explode()]
        return await apply_plan(await make_plan(resources), services=NoServices())

    outcome = a.run(forced())
    assert outcome.state == "rolled_back" and "forced failure" in str(outcome.error)
    assert (a.dump(), host_view(a.ns), a.ovs.vsctl("show")) == before

    _, outcome = a.converge(network)
    assert outcome.state == "converged", outcome.error
    assert a.ping("192.168.42.12")
    uuids = {t: sorted(json.loads(r)[0] for r in rows) for t, rows in before[0].items()}
    assert {t: sorted(json.loads(r)[0] for r in rows) for t, rows in a.dump().items()} == uuids
    assert a.get("bridge", "cloudbr", "external_ids:cloudstack-bootstrap") == "managed"
    assert a.plan(network).changes == []


def test_a_name_held_on_another_bridge_is_refused(make_host: Callable[[str], Host]) -> None:
    a = make_host("a")
    a.ovs.vsctl("add-br", "other", "--", "set", "bridge", "other", "datapath_type=netdev")
    a.ovs.vsctl("add-br", "cloudbr0", "other", "200")
    before = a.dump()
    network = seed_network("192.168.42.11/24")

    conflict = [c for c in a.plan(network).changes if c.resource == "ovs/cloudbr0"]
    assert conflict and "not created by cloudstack-bootstrap" in conflict[0].detail
    _, outcome = a.converge(network)
    assert outcome.state == "rolled_back"
    assert isinstance(outcome.error, ResourceError)
    assert a.dump() == before


def test_first_contact_moves_the_address_onto_mgmt0_and_back(
    make_host: Callable[[str], Host],
) -> None:
    a, b = make_host("a"), make_host("b")
    assert b.converge(seed_network("192.168.42.12/24"))[1].state == "converged"
    # What the installer left on a: the address untagged on eth0, default route there.
    a.add_addr("eth0", "192.168.42.11/24")
    a.ns.run(["ip", "route", "add", "default", "via", "192.168.42.1", "dev", "eth0"])
    assert not a.ping("192.168.42.12", wait=1)  # b is on VLAN 100 already
    installed = a.addresses()

    plan, outcome = a.converge(seed_network("192.168.42.11/24"))
    assert outcome.state == "converged", outcome.error
    move = [c for c in plan.changes if c.resource == "address/192.168.42.11"]
    assert move and move[0].action == "modify" and "on eth0 to" in move[0].detail
    assert ("mgmt0", "192.168.42.11/24") in a.addresses()
    assert ("eth0", "192.168.42.11/24") not in a.addresses()
    assert a.default_dev() == {"mgmt0"}
    assert a.ping("192.168.42.12")

    assert a.revert(plan) == []
    assert a.addresses() == installed
    assert a.default_dev() == {"eth0"}
    assert a.ovs.vsctl("list-br").split() == []


@pytest.mark.skipif(
    Path("/sys/module/openvswitch").exists(), reason="this kernel has the system datapath"
)
def test_missing_system_datapath_is_reported_and_rolled_back(
    make_host: Callable[[str], Host],
) -> None:
    a = make_host("a")
    network = seed_network("192.168.42.11/24", openvswitch={"datapath": "system"})
    _, outcome = a.converge(network)
    assert outcome.state == "rolled_back"
    assert isinstance(outcome.error, ResourceError)
    assert "could not open it on datapath system" in outcome.error.message
    assert a.ovs.vsctl("list-br").split() == []


def test_untagged_management_rides_vlan_0_of_the_trunk(make_host: Callable[[str], Host]) -> None:
    """``management.vlan: null``: mgmt0 is an access port of VLAN 0 (untagged frames)."""
    a, b = make_host("a"), make_host("b")
    b.add_addr("eth0", "192.168.42.12/24")  # a plain untagged neighbour, no OVS in use
    management = {"address": "192.168.42.11/24", "gateway": "192.168.42.1"}
    _, outcome = a.converge(seed_network("192.168.42.11/24", management=management))
    assert outcome.state == "converged", outcome.error
    assert a.ovs.vsctl("br-to-vlan", "mgmt0").strip() == "0"
    assert a.get("port", "eth0", "trunks") == "[0, 200, 300]"
    assert a.ping("192.168.42.12")


def test_a_transaction_keeps_one_ovsdb_connection_and_drops_one_that_lost_its_server(
    make_host: Callable[[str], Host],
) -> None:
    """Within ``ovsdb_session`` (what ``converge`` opens for an OVS host) the plan, the
    apply and the verification share one connection, brought up to date at each use; a
    connection whose server restarted is replaced, never read stale; one a caller failed
    with is closed and not kept; outside a session every use connects anew."""
    a = make_host("a")
    socket = a.ovs.host.ovsdb_socket

    def bridges(client: OvsdbClient) -> set[str]:
        return {row.name for row in client.rows("Bridge")}

    with a.ns.entered():
        with connect(socket) as first, connect(socket) as second:
            assert first is not second  # no session: each use its own
        with ovsdb_session():
            with connect(socket) as first:
                assert bridges(first) == set()
            a.ovs.vsctl("add-br", "br-x", "--", "set", "bridge", "br-x", "datapath_type=netdev")
            with connect(socket) as again:
                assert again is first and bridges(again) == {"br-x"}  # kept, up to date
            a.ovs.stop()
            a.ovs.start()  # a new ovsdb-server on the same database
            a.ovs.vsctl("add-br", "br-y", "--", "set", "bridge", "br-y", "datapath_type=netdev")
            with connect(socket) as fresh:
                assert fresh is not first and bridges(fresh) == {"br-x", "br-y"}
            with pytest.raises(OvsdbError), connect(socket) as failed:
                raise OvsdbError("a caller's failure")
            assert failed is fresh
            with connect(socket) as after:
                assert after is not failed and bridges(after) == {"br-x", "br-y"}
