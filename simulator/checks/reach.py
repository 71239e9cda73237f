"""Reachability: who reaches whom on which VLAN, over real ARP + ICMP.

Bridges carry no IP, so each host gets a guest namespace per bridge (``<run>-<host>-g200``)
with an address from that VLAN's subnet. Every peer pair must reach over each VLAN they
share. Each guest also holds a *probe* address from one subnet shared by every VLAN: the
same IP subnet on two VLANs must not reach, so only layer-2 separation can pass that part.
Management addresses reach each other and the broker.
"""

from __future__ import annotations

import asyncio
import ipaddress
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING

from simulator.checks import CheckResult, Row, gather_limited, ping
from simulator.hosts import Guest, SimHost
from simulator.namespaces import Namespace

if TYPE_CHECKING:
    from simulator.fleet import Sim

__all__ = ["PROBE_NET", "attach_guests", "check_reach"]

PROBE_NET = ipaddress.IPv4Network("172.31.0.0/16")


def guest_addresses(
    sim: Sim, index: int, vlan: int
) -> tuple[ipaddress.IPv4Interface, ipaddress.IPv4Interface]:
    subnet = sim.net.vlan(vlan).subnet
    k = [v.id for v in sim.net.vlans].index(vlan) + 1
    own = ipaddress.IPv4Interface(f"{subnet.network_address + 11 + index}/{subnet.prefixlen}")
    probe = ipaddress.IPv4Interface(f"172.31.{k}.{index + 1}/{PROBE_NET.prefixlen}")
    return own, probe


def _attach_host(sim: Sim, host: SimHost) -> dict[tuple[str, int], str]:
    problems: dict[tuple[str, int], str] = {}
    for vlan in sim.layout.reach_vlans():
        bridge = host.layout.bridges.get(vlan)
        if bridge is None or vlan in host.guests:
            continue
        own, probe = guest_addresses(sim, host.layout.index, vlan)
        gns = Namespace(f"{sim.run_id}-{host.name}-g{vlan}")
        if gns.exists():  # made by an earlier `check` of this run
            with gns.iproute() as ipr:
                complete = bool(ipr.link_lookup(ifname="eth0"))
            if complete:
                host.guests[vlan] = Guest(gns, vlan, bridge, own, probe)
                continue
            gns.remove()  # half-made (that check was interrupted): make it again
        sim.record_namespace(gns.name)
        gns = Namespace.create(gns.name)
        why = host.attach_guest(gns, vlan, bridge, own, probe)
        if why is not None:
            problems[(host.name, vlan)] = why
    return problems


def attach_guests(sim: Sim) -> dict[tuple[str, int], str]:
    """Guests on every expected bridge of every host (hosts in parallel); what failed."""
    problems: dict[tuple[str, int], str] = {}
    with ThreadPoolExecutor(8) as pool:
        for found in pool.map(lambda h: _attach_host(sim, h), list(sim.hosts.values())):
            problems.update(found)
    return problems


@dataclass(frozen=True, slots=True)
class _Ping:
    ns: Namespace
    address: str
    subject: str
    expect: bool
    hosts: tuple[str, ...]
    group: str


def _plan(sim: Sim, problems: dict[tuple[str, int], str]) -> tuple[list[_Ping], list[Row]]:
    """Every ping to send (and rows for guests that could not even be attached)."""
    pings: list[_Ping] = []
    rows: list[Row] = []
    broker = str(sim.net.broker.address.ip)
    for host in sim.hosts.values():
        pings.append(
            _Ping(
                host.ns,
                broker,
                f"{host.name} -> broker {broker} (mgmt)",
                True,
                (host.name,),
                "broker",
            )
        )
    pairs = sim.layout.peers()
    for a, b in pairs:
        pings.append(
            _Ping(
                sim.hosts[a.name].ns,
                str(b.mgmt.ip),
                f"{a.name} -> {b.name} mgmt",
                True,
                (a.name, b.name),
                "mgmt",
            )
        )
    for vlan in sim.layout.reach_vlans():
        group = f"vlan {vlan}"
        for a, b in pairs:
            both = (a.name, b.name)
            subject = f"{a.name} -> {b.name} vlan {vlan}"
            rows += [
                Row(subject, False, problems[(n, vlan)], (n,), group)
                for n in both
                if (n, vlan) in problems
            ]
            ga, gb = sim.hosts[a.name].guests.get(vlan), sim.hosts[b.name].guests.get(vlan)
            if ga is None or gb is None:
                continue
            pings.append(_Ping(ga.ns, str(gb.address.ip), subject, True, both, group))
            pings.append(
                _Ping(ga.ns, str(gb.probe.ip), f"{subject} (shared subnet)", True, both, group)
            )
            for w, gw in sim.hosts[b.name].guests.items():
                if w != vlan:
                    pings.append(
                        _Ping(
                            ga.ns,
                            str(gw.probe.ip),
                            f"{a.name} vlan {vlan} -/-> {b.name} vlan {w} (same subnet)",
                            False,
                            both,
                            f"isolation {vlan}",
                        )
                    )
    return pings, rows


async def check_reach(sim: Sim) -> CheckResult:
    problems = await asyncio.to_thread(attach_guests, sim)  # pyroute2's sync API
    pings, rows = _plan(sim, problems)
    answers = await gather_limited(
        [ping(p.ns, p.address, deadline=5.0 if p.expect else 1.5) for p in pings], limit=24
    )
    # A loaded machine (100 hosts on 2 cores) drops the odd first attempt: expected paths
    # that failed get one slower second chance; a real fault fails both times. A reply
    # where none is allowed is never retried: one leak is a leak.
    again = [
        i for i, (p, got) in enumerate(zip(pings, answers, strict=True)) if p.expect and not got
    ]
    retried = await gather_limited(
        [ping(pings[i].ns, pings[i].address, deadline=10.0) for i in again], limit=8
    )
    for i, got in zip(again, retried, strict=True):
        answers[i] = got
    for p, got in zip(pings, answers, strict=True):
        detail = ("reaches" if got else "no reply") + ("" if got == p.expect else " (unexpected)")
        rows.append(Row(p.subject, got == p.expect, detail, p.hosts, p.group))
    return CheckResult("reach", rows)
