"""The management address move on a real kernel, without OVS (fast).

Host ``a`` has three links to ``b``: eth0 (where the installer left the management
address), mgmt0 (where the seed wants it) and eth2 (another NIC with its own default route
that is not ours and must survive). ``b`` plays the gateway.
"""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import pytest

from bootstrap.engine.plan import Plan, make_plan
from bootstrap.engine.probe import IcmpProbe
from bootstrap.engine.services import NoServices
from bootstrap.engine.transaction import Outcome, apply_plan, revert_steps
from bootstrap.errors import ProbeError
from bootstrap.resources.address import PROTO, ManagementAddress
from simulator.namespaces import Namespace, veth_pair

pytestmark = [pytest.mark.root, pytest.mark.netns]

T = TypeVar("T")
NamespaceFactory = Callable[[str], Namespace]
IFA_F_NODAD = 0x02
RTPROT_BOOT = 3
MGMT = ipaddress.ip_interface("192.168.42.11/24")
GW = ipaddress.ip_address("192.168.42.1")


def run_in(ns: Namespace, coro: Coroutine[Any, Any, T]) -> T:
    """Run the engine the way the agent does: inside the host's namespace."""
    with ns.entered():
        return asyncio.run(coro)


def add_addr(ns: Namespace, dev: str, cidr: str) -> None:
    iface = ipaddress.ip_interface(cidr)
    with ns.iproute() as ipr:
        (idx,) = ipr.link_lookup(ifname=dev)
        ipr.addr(
            "add",
            index=idx,
            address=str(iface.ip),
            prefixlen=iface.network.prefixlen,
            flags=IFA_F_NODAD if iface.version == 6 else 0,
        )


def add_default(ns: Namespace, dev: str, gateway: str, metric: int = 0) -> None:
    v6 = ":" in gateway
    with ns.iproute() as ipr:
        (idx,) = ipr.link_lookup(ifname=dev)
        ipr.route(
            "add",
            dst="::/0" if v6 else "0.0.0.0/0",
            gateway=gateway,
            oif=idx,
            priority=metric,
            proto=RTPROT_BOOT,  # as `ip route add` and installers leave it
        )


def addresses(ns: Namespace, family: int = 2) -> set[tuple[str, str]]:
    """(ifname, address/prefix) of every global address in ``ns``."""
    with ns.iproute() as ipr:
        names = {link["index"]: link.get("ifname") for link in ipr.link("dump")}
        return {
            (names[m["index"]], f"{m.get('address')}/{m['prefixlen']}")
            for m in ipr.addr("dump", family=family)
            if m["scope"] == 0
        }


def defaults(ns: Namespace, family: int = 2) -> set[tuple[str, str, int, int]]:
    """(gateway, ifname, metric, proto) of every default route in the main table."""
    with ns.iproute() as ipr:
        names = {link["index"]: link.get("ifname") for link in ipr.link("dump")}
        return {
            (m.get("gateway"), names[m.get("oif")], m.get("priority") or 0, m["proto"])
            for m in ipr.route("dump", family=family, table=254)
            if m["dst_len"] == 0
        }


def ping(ns: Namespace, address: str, wait: int = 3) -> bool:
    done = ns.run(["ping", "-c1", f"-w{wait}", address], check=False, capture_output=True)
    return done.returncode == 0


@pytest.fixture
def hosts(make_ns: NamespaceFactory) -> tuple[Namespace, Namespace]:
    a, b = make_ns("a"), make_ns("b")
    for ns in (a, b):  # answer ARP only on the link that holds the address (no weak host)
        ns.run(["sysctl", "-qw", "net.ipv4.conf.all.arp_ignore=1"])
    veth_pair(a, "eth0", b, "p0")
    veth_pair(a, "mgmt0", b, "gw0")
    veth_pair(a, "eth2", b, "p2")
    add_addr(a, "eth0", str(MGMT))  # the install-time place
    add_addr(a, "eth0", "10.9.0.5/24")  # not ours: must stay
    add_addr(a, "eth2", "10.8.0.5/24")
    add_default(a, "eth0", str(GW))
    add_default(a, "eth2", "10.8.0.1", metric=900)  # another NIC's default: not ours
    return a, b


async def plan_and_apply(resource: ManagementAddress, **kwargs: Any) -> tuple[Plan, Outcome]:
    plan = await make_plan([resource])
    return plan, await apply_plan(plan, services=NoServices(), **kwargs)


def test_move_to_management_interface_and_back(hosts: tuple[Namespace, Namespace]) -> None:
    a, b = hosts
    add_addr(b, "gw0", f"{GW}/24")  # the gateway is on the management side only
    assert not ping(a, str(GW), wait=1)  # the install-time path does not reach it
    before_addrs, before_routes = addresses(a), defaults(a)
    resource = ManagementAddress("mgmt0", MGMT, GW)

    plan, outcome = run_in(a, plan_and_apply(resource))
    details = " ".join(str(c) for c in plan.changes)
    assert "move 192.168.42.11/24 on eth0 to 192.168.42.11/24 on mgmt0" in details
    assert outcome.state == "converged", outcome.error

    assert addresses(a) == (before_addrs - {("eth0", str(MGMT))}) | {("mgmt0", str(MGMT))}
    assert defaults(a) == {(str(GW), "mgmt0", 0, PROTO), ("10.8.0.1", "eth2", 900, RTPROT_BOOT)}
    assert ping(a, str(GW))

    again = run_in(a, make_plan([resource]))
    assert not again.changes

    stuck = run_in(a, revert_steps([(s.resource, s.current) for s in plan.steps]))
    assert stuck == []
    assert addresses(a) == before_addrs
    assert defaults(a) == before_routes


def test_lost_gateway_rolls_the_move_back(hosts: tuple[Namespace, Namespace]) -> None:
    """First contact gone wrong: the gateway answered on eth0 before, not on mgmt0 after."""
    a, b = hosts
    add_addr(b, "p0", f"{GW}/24")
    assert ping(a, str(GW))
    before_addrs, before_routes = addresses(a), defaults(a)

    _, outcome = run_in(
        a,
        plan_and_apply(
            ManagementAddress("mgmt0", MGMT, GW),
            probes=[IcmpProbe(str(GW), timeout=0.3)],
            rollback_window=1.0,
        ),
    )
    assert outcome.state == "rolled_back"
    assert isinstance(outcome.error, ProbeError)
    assert addresses(a) == before_addrs
    assert defaults(a) == before_routes
    assert ping(a, str(GW))


def test_ipv6_move_keeps_other_addresses(hosts: tuple[Namespace, Namespace]) -> None:
    a, b = hosts
    mgmt6 = ipaddress.ip_interface("fd42::11/64")
    gw6 = ipaddress.ip_address("fd42::1")
    add_addr(a, "eth0", str(mgmt6))
    add_addr(a, "eth0", "fd09::5/64")
    add_addr(b, "gw0", f"{gw6}/64")
    before = addresses(a, family=10)
    resource = ManagementAddress("mgmt0", mgmt6, gw6)

    plan, outcome = run_in(a, plan_and_apply(resource))
    assert outcome.state == "converged", outcome.error
    assert addresses(a, family=10) == (before - {("eth0", str(mgmt6))}) | {("mgmt0", str(mgmt6))}
    assert (str(gw6), "mgmt0", 1024, PROTO) in defaults(a, family=10)
    assert ping(a, str(gw6))
    assert not run_in(a, make_plan([resource])).changes

    assert run_in(a, revert_steps([(s.resource, s.current) for s in plan.steps])) == []
    assert addresses(a, family=10) == before
