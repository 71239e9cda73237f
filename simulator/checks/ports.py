"""Ports: the seed's TCP ports are open from every hypervisor to its peers.

Listeners stand in for sshd, the CloudStack agent, libvirtd, VNC and migration (every port
of the allow list, plus 8080, which no list opens). Peers are every other host up to 8
hosts, a ring beyond (each host probes the next), so each host's firewall is probed by
exactly one peer in a big fleet. With ``policy: drop`` the out-of-list port must be closed.

The expected list is the *role's* firewall (the intent), never the host overlay.

The listeners are :mod:`simulator.checks.helper` processes inside the host namespaces;
the probes are :mod:`simulator.checks.prober`'s SYNs, from a raw socket made in the source host.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from bootstrap.model.merge import merge_all
from bootstrap.model.spec import Firewall
from simulator.checks import CheckResult, Row
from simulator.checks.prober import TcpProbe, tcp_all

if TYPE_CHECKING:
    from simulator.fleet import Sim

__all__ = ["OUTSIDE_PORT", "check_ports", "expected_firewall"]

OUTSIDE_PORT = 8080
HELPER = Path(__file__).with_name("helper.py")
CONNECT_TIMEOUT = 1.5  # seconds a port has to answer; a failed one is asked again 3x slower


def expected_firewall(sim: Sim, host: str) -> Firewall | None:
    roles = sim.layout.host(host).roles
    merged = merge_all(sim.layout.role_docs[r]["spec"] for r in roles)
    raw = merged.get("firewall")
    return None if raw is None else Firewall.model_validate(raw)


def port_list(fw: Firewall) -> list[int]:
    return sorted({p for r in fw.allow_tcp for p in range(r.first, r.last + 1)})


def _ports(fw: Firewall | None) -> list[int]:
    assert fw is not None
    return [*port_list(fw), OUTSIDE_PORT]


def _expected_closed(fw: Firewall | None, port: int) -> bool:
    return fw is not None and fw.policy == "drop" and port == OUTSIDE_PORT


def _compact(ports: list[int]) -> str:
    out: list[str] = []
    for p in sorted(ports):
        if out and "-" not in out[-1] and int(out[-1]) == p - 1:
            out[-1] = f"{out[-1]}-{p}"
        elif out and "-" in out[-1] and int(out[-1].split("-")[1]) == p - 1:
            out[-1] = f"{out[-1].split('-')[0]}-{p}"
        else:
            out.append(str(p))
    return ",".join(out)


async def check_ports(sim: Sim) -> CheckResult:
    result = CheckResult("ports")
    fws = {name: expected_firewall(sim, name) for name in sim.hosts}
    if all(fw is None for fw in fws.values()):
        result.skipped = "no role manages the firewall"
        return result
    listeners: list[subprocess.Popen[bytes]] = []
    try:
        for host in sim.hosts.values():
            fw = fws[host.name]
            if fw is None:
                continue
            proc = host.ns.popen(  # -I -S: stdlib only, no site (35 -> 12 ms of CPU each)
                [sys.executable, "-I", "-S", str(HELPER), "listen", *map(str, _ports(fw))],
                stdout=subprocess.PIPE,
                stdin=subprocess.DEVNULL,
            )
            listeners.append(proc)
        for proc in listeners:
            assert proc.stdout is not None
            proc.stdout.readline()  # "ready"
        pairs = [(a, b) for a, b in sim.layout.peers() if fws[b.name] is not None]
        probes = [
            TcpProbe(
                sim.hosts[a.name].ns,
                str(b.mgmt.ip),
                port,
                CONNECT_TIMEOUT,
                retry=not _expected_closed(fws[b.name], port),
            )
            for a, b in pairs
            for port in _ports(fws[b.name])
        ]
        answers = iter(await tcp_all(probes))
    finally:
        for proc in listeners:
            proc.terminate()
            proc.wait()
    for a, b in pairs:
        fw = fws[b.name]
        assert fw is not None
        subject = f"{a.name} -> {b.name} ({b.mgmt.ip})"
        state = {p: next(answers) for p in _ports(fw)}
        closed = [p for p, ok in state.items() if not ok and p != OUTSIDE_PORT]
        problems = []
        if closed:
            problems.append(f"closed: {_compact(closed)}")
        outside_open = state.get(OUTSIDE_PORT, False)
        if fw.policy == "drop" and outside_open:
            problems.append(f"{OUTSIDE_PORT} open under policy drop")
        n = len(state) - 1
        ok_detail = f"{n} ports open" + (
            f", {OUTSIDE_PORT} closed"
            if fw.policy == "drop"
            else f", {OUTSIDE_PORT} not enforced (policy accept)"
        )
        result.rows.append(
            Row(subject, not problems, "; ".join(problems) or ok_detail, (b.name,), "ports")
        )
    return result
