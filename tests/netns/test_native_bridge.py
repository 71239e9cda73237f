"""The native backend's bridge and uplink logic on this kernel (no 8021q needed).

A bridge over a veth stands in for ``cloudbr0`` over ``eth0.200``: everything but the VLAN
sub-interface itself (creation, ownership, adoption, no flap, drift, revert, stale links)
is exercised here; the VLAN parts run in the full-kernel VM (tests/fullkernel).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import pytest

from bootstrap.engine.plan import make_plan
from bootstrap.engine.resource import Resource
from bootstrap.engine.services import NoServices
from bootstrap.engine.transaction import apply_plan, revert_steps
from bootstrap.errors import ResourceError
from bootstrap.resources.native import BridgeResource, StaleLinks, UplinkResource
from bootstrap.resources.native_state import MARK, BridgeState, UplinkState
from simulator.namespaces import Namespace, veth_pair
from tests.hostview import host_view

pytestmark = [pytest.mark.root, pytest.mark.netns]

NamespaceFactory = Callable[[str], Namespace]
IFF_UP = 0x1
T = TypeVar("T")


def run_in(ns: Namespace, coro: Coroutine[Any, Any, T]) -> T:
    """One event loop inside ``ns``: every netlink socket the engine opens stays there."""
    with ns.entered():
        return asyncio.run(coro)


def wanted(name: str = "cloudbr0", port: str = "eth1", **changes: Any) -> BridgeState:
    fields: dict[str, Any] = {
        "ifname": name,
        "mtu": 1400,
        "up": True,
        "stp": False,
        "forward_delay_cs": 500,
        "ports": (port,),
    }
    return BridgeState(**{**fields, **changes})


def link(ns: Namespace, ifname: str) -> Any:
    with ns.iproute() as ipr:
        (msg,) = ipr.link("get", ifname=ifname)
        return msg


def exists(ns: Namespace, ifname: str) -> bool:
    with ns.iproute() as ipr:
        return bool(ipr.link_lookup(ifname=ifname))


@pytest.fixture
def host(make_ns: NamespaceFactory) -> Namespace:
    """A host with two veths to a peer: ``eth1`` (the bridge's port), ``vnet0`` (a VM's)."""
    host, peer = make_ns("host"), make_ns("peer")
    veth_pair(host, "eth1", peer, "p1")
    veth_pair(host, "vnet0", peer, "p2")
    return host


async def _converge(resources: list[Resource[Any]]) -> Any:
    plan = await make_plan(resources)
    outcome = await apply_plan(plan, services=NoServices())
    assert outcome.ok, outcome.error
    return plan


def converge(ns: Namespace, resources: list[Resource[Any]]) -> Any:
    return run_in(ns, _converge(resources))


def test_bridge_is_created_marked_and_not_touched_again(host: Namespace) -> None:
    plan = converge(host, [BridgeResource("cloudbr0", wanted())])
    assert [(c.resource, c.action) for c in plan.changes] == [("bridge/cloudbr0", "create")]
    br = link(host, "cloudbr0")
    assert br.get("ifalias") == MARK
    assert br.get("mtu") == 1400 and br["flags"] & IFF_UP
    assert br.get(("linkinfo", "data", "br_forward_delay")) == 500  # 5 s in centiseconds
    assert br.get(("linkinfo", "data", "br_stp_state")) == 0
    assert link(host, "eth1").get("master") == br["index"]

    # a VM's tap joins the bridge (CloudStack does that): not ours, never touched
    with host.iproute() as ipr:
        ipr.link("set", index=link(host, "vnet0")["index"], master=br["index"])
    before = {
        n: (link(host, n)["index"], link(host, n).get("carrier_changes"))
        for n in ("cloudbr0", "eth1", "vnet0")
    }
    again = converge(host, [BridgeResource("cloudbr0", wanted())])
    assert again.changes == []
    after = {
        n: (link(host, n)["index"], link(host, n).get("carrier_changes"))
        for n in ("cloudbr0", "eth1", "vnet0")
    }
    assert after == before  # same links, no carrier flap
    assert link(host, "vnet0").get("master") == br["index"]


def test_drift_is_planned_and_only_what_differs_is_set(host: Namespace) -> None:
    resource = BridgeResource("cloudbr0", wanted(stp=True, forward_delay_cs=1500))
    converge(host, [resource])
    index = link(host, "cloudbr0")["index"]
    with host.iproute() as ipr:  # an operator's hand edit
        ipr.link("set", index=index, mtu=1300)
        ipr.link("set", index=index, state="down")
        ipr.link("set", index=link(host, "eth1")["index"], master=0)
    plan = run_in(host, make_plan([resource]))
    (change,) = plan.changes
    assert change.action == "modify"
    assert change.detail == "mtu 1300 → 1400; down → up; port +eth1"
    converge(host, [resource])
    br = link(host, "cloudbr0")
    assert br["index"] == index and br.get("mtu") == 1400 and br["flags"] & IFF_UP
    assert br.get(("linkinfo", "data", "br_stp_state")) == 1
    assert br.get(("linkinfo", "data", "br_forward_delay")) == 1500
    assert link(host, "eth1").get("master") == index


def test_revert_returns_to_the_snapshot(host: Namespace) -> None:
    resources: list[Resource[Any]] = [
        UplinkResource(UplinkState("eth1", 1400, up=True)),
        BridgeResource("cloudbr0", wanted()),
    ]
    with host.iproute() as ipr:
        ipr.link("set", index=link(host, "eth1")["index"], mtu=1500)
    plan = run_in(host, make_plan(resources))
    snapshots = [(s.resource, s.current) for s in plan.steps]
    assert run_in(host, apply_plan(plan, services=NoServices())).ok
    assert exists(host, "cloudbr0") and link(host, "eth1").get("mtu") == 1400
    assert run_in(host, revert_steps(snapshots)) == []

    async def observe_all() -> list[Any]:
        return [await r.observe() for r in resources]

    assert run_in(host, observe_all()) == [s for _, s in snapshots]
    assert not exists(host, "cloudbr0")
    assert link(host, "eth1").get("mtu") == 1500 and link(host, "eth1").get("master") is None


@pytest.mark.parametrize("alias", [None, "built by hand"])
def test_operator_bridge_is_adopted_and_given_back_byte_for_byte(
    host: Namespace, alias: str | None
) -> None:
    with host.iproute() as ipr:
        ipr.link("add", ifname="cloudbr0", kind="bridge", br_stp_state=0, br_forward_delay=500)
        index = ipr.link_lookup(ifname="cloudbr0")[0]
        ipr.link("set", index=link(host, "eth1")["index"], master=index)
        ipr.link("set", index=index, mtu=1400, state="up")
        if alias:
            ipr.link("set", index=index, ifalias=alias)
    before = host_view(host)
    resource = BridgeResource("cloudbr0", wanted(mtu=1300))
    plan = run_in(host, make_plan([resource]))
    (change,) = plan.changes
    assert (change.resource, change.action) == ("bridge/cloudbr0", "adopt")
    assert "mtu 1400 → 1300" in change.detail
    assert run_in(host, apply_plan(plan, services=NoServices())).ok
    assert link(host, "cloudbr0").get("ifalias") == MARK
    assert link(host, "cloudbr0").get("mtu") == 1300
    assert run_in(host, revert_steps([(s.resource, s.current) for s in plan.steps])) == []
    assert host_view(host) == before
    removed = run_in(host, make_plan([BridgeResource("cloudbr0", None)]))
    assert removed.changes == []  # not ours and not named: never removed


def test_a_link_of_another_kind_is_an_error_naming_it(host: Namespace) -> None:
    with pytest.raises(ResourceError) as err:
        run_in(host, make_plan([BridgeResource("vnet0", wanted(name="vnet0"))]))
    assert err.value.resource == "bridge/vnet0" and "veth" in err.value.message


def test_stale_bridge_of_ours_is_removed_and_restored_on_revert(host: Namespace) -> None:
    converge(host, [BridgeResource("cloudbr9", wanted(name="cloudbr9"))])
    stale = StaleLinks(keep=frozenset({"cloudbr0"}))
    plan = run_in(host, make_plan([stale]))
    (change,) = plan.changes
    assert (change.resource, change.action) == ("bridge/cloudbr9", "delete")
    snapshot = plan.steps[0].current
    assert run_in(host, apply_plan(plan, services=NoServices())).ok
    assert not exists(host, "cloudbr9") and exists(host, "eth1")
    assert stale.load(stale.dump(snapshot)) == snapshot  # survives the journal
    run_in(host, stale.revert(snapshot))
    assert run_in(host, stale.observe()) == snapshot
    assert link(host, "eth1").get("master") == link(host, "cloudbr9")["index"]
