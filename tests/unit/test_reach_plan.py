"""The reach check's plan (which pings, expecting what), without a fleet: every pair of
hosts on management and on each VLAN's own subnet; the shared subnet between the peers only,
answered on a VLAN both carry; silent across VLANs from the first hosts to their peers
(issue 11)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import yaml

from simulator.checks.reach import LEAK_SOURCES, _plan, guest_addresses
from simulator.hosts import Guest
from simulator.namespaces import Namespace
from simulator.nets import parse_net

REPO = Path(__file__).resolve().parents[2]


def _sim(hosts: int) -> Any:
    """A stand-in for a running Sim, as far as ``_plan`` reads it: the real layout of
    ``nets/scale-100.yaml`` at ``hosts`` hosts, a guest on every expected bridge."""
    data = yaml.safe_load((REPO / "nets/scale-100.yaml").read_text())
    data["hosts"]["count"] = hosts
    data["expect"] = {}  # the default: every pair up to 8 hosts, a ring beyond
    net = parse_net(data, source="test")
    sim = SimpleNamespace(net=net, layout=net.layout(), hosts={})
    for h in sim.layout.hosts:
        guests = {
            vlan: Guest(
                Namespace(f"t-{h.name}-g{vlan}"), vlan, b, *guest_addresses(sim, h.index, vlan)
            )
            for vlan, b in h.bridges.items()
            if vlan in sim.layout.reach_vlans()
        }
        ns = Namespace(f"t-{h.name}")
        sim.hosts[h.name] = SimpleNamespace(name=h.name, ns=ns, guests=guests, layout=h)
    return sim


def _kinds(hosts: int) -> tuple[Any, Counter[tuple[str, bool, frozenset[str]]]]:
    sim = _sim(hosts)
    pings, rows = _plan(sim, {})
    assert rows == []
    kinds: Counter[tuple[str, bool, frozenset[str]]] = Counter()
    for p in pings:
        if p.group == "broker":
            kind = "broker"
        elif p.group == "mgmt":
            kind = "mgmt"
        elif p.address.startswith("172.31."):
            kind = "shared"
        else:
            kind = "own"
        kinds[(kind, p.expect, frozenset(p.hosts))] += 1
    return sim, kinds


@pytest.mark.parametrize("hosts", [6, 12])
def test_every_pair_reaches_on_management_and_on_each_vlans_own_subnet(hosts: int) -> None:
    sim, kinds = _kinds(hosts)
    names = [h.name for h in sim.layout.hosts]
    vlans = sim.layout.reach_vlans()
    assert len(vlans) == 2
    pairs = {frozenset((a, b)) for i, a in enumerate(names) for b in names[i + 1 :]}
    for pair in pairs:
        assert kinds[("mgmt", True, pair)] == 1
        assert kinds[("own", True, pair)] == len(vlans)  # once per VLAN: both ways
    assert sum(n for (k, _, _), n in kinds.items() if k == "broker") == hosts


@pytest.mark.parametrize("hosts", [6, 12])
def test_the_shared_subnet_answers_between_peers_on_a_vlan_both_carry(hosts: int) -> None:
    sim, kinds = _kinds(hosts)
    vlans = sim.layout.reach_vlans()
    peers = {frozenset((a.name, b.name)) for a, b in sim.layout.peers()}
    if hosts > 8:  # a ring: each host and the next
        assert len(peers) == hosts
    else:
        assert len(peers) == hosts * (hosts - 1) // 2
    shared_ok = {pair for (k, ok, pair), _ in kinds.items() if k == "shared" and ok}
    assert shared_ok == peers  # every probe address answers: silence across VLANs means L2
    for pair in peers:
        assert kinds[("shared", True, pair)] == len(vlans)


@pytest.mark.parametrize("hosts", [6, 12, 100])
def test_pings_that_must_not_reach_go_from_the_first_hosts_to_their_peers(hosts: int) -> None:
    """Each is a flood through every host carrying its VLAN, so a few find a host that
    joins two VLANs wherever it is: from each VLAN of the first LEAK_SOURCES hosts to each
    other VLAN of their peers (every ordered pair up to 8 hosts, the ring's next beyond)."""
    sim = _sim(hosts)
    pings, _ = _plan(sim, {})
    vlans = sim.layout.reach_vlans()
    leaks = Counter(p.hosts for p in pings if not p.expect)
    # the shared subnet, by ARP (a leak shows as an answer to a flooded request; a
    # neighbour entry installed for the ping would send it to one MAC, past the leak)
    assert all(p.address.startswith("172.31.") and p.arp for p in pings if not p.expect)
    sources = [h.name for h in sim.layout.hosts[:LEAK_SOURCES]]
    ordered = {(a.name, b.name) for a, b in sim.layout.peers() if a.name in sources}
    assert set(leaks) == ordered
    assert all(n == len(vlans) * (len(vlans) - 1) for n in leaks.values())
    if hosts <= LEAK_SOURCES:  # small fleets: every ordered pair, both ways
        assert len(leaks) == hosts * (hosts - 1)
    else:  # beyond: a fixed number of floods, not one per host
        assert len(leaks) == LEAK_SOURCES
