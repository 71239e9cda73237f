"""Ports: the seed's TCP ports are open from every hypervisor to its peers.

Listeners stand in for sshd, the CloudStack agent, libvirtd, VNC and migration (every port
of the allow list, plus 8080, which no list opens). Peers are every other host up to 8
hosts, a ring beyond (each host probes the next), so each host's firewall is probed by
exactly one peer in a big fleet. With ``policy: drop`` the out-of-list port must be closed.

The expected list is the *role's* firewall (the intent), never the host overlay.

The listeners are held by :mod:`simulator.checks.helper` processes, as few as this
machine's open-file limit allows (two at 100 hosts), each entering its hosts' namespaces in
turn; the probes are :mod:`simulator.checks.prober`'s SYNs, from a raw socket made in the
source host.
"""

from __future__ import annotations

import asyncio
import contextlib
import resource
import sys
from collections.abc import AsyncIterator
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
FILES_SPARE = 128  # files a helper keeps for itself (the interpreter's own, its pipes)
READY_TIMEOUT = 120.0  # seconds for every helper to hold its ports; only a stuck one hits it
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


def batches(wanted: list[tuple[str, list[int]]], per: int) -> list[list[tuple[str, list[int]]]]:
    """Hosts' ports in as few groups as hold at most ``per`` sockets each, about the same
    size (the helpers start together on the machine's cores). A host's ports stay together;
    one with more than ``per`` cannot be held (its helper says which port it could not)."""
    total = sum(len(ports) for _, ports in wanted)
    n = max(1, -(-total // per))
    while True:
        out: list[list[tuple[str, list[int]]]] = [[] for _ in range(n)]
        sizes = [0] * n
        for netns, ports in wanted:
            i = sizes.index(min(sizes))
            out[i].append((netns, ports))
            sizes[i] += len(ports)
        if max(sizes) <= per or n >= len(wanted):
            return [group for group in out if group]
        n += 1


class ListenError(Exception):
    """A helper could not hold a port (someone else's, most likely)."""


@contextlib.asynccontextmanager
async def listening(
    wanted: list[tuple[str, list[int]]], *, per: int | None = None
) -> AsyncIterator[None]:
    """Listeners on each namespace's ports for the block, from as few helper processes as
    the open-file limit allows (``per`` sockets each), started together; all stopped when
    the block ends, however it ends."""
    if per is None:
        per = max(1, resource.getrlimit(resource.RLIMIT_NOFILE)[0] - FILES_SPARE)
    procs: list[asyncio.subprocess.Process] = []
    try:
        for group in batches(wanted, per):
            args = [arg for netns, ports in group for arg in (netns, _compact(ports))]
            procs.append(
                await asyncio.create_subprocess_exec(
                    *(sys.executable, "-I", "-S", str(HELPER), "listen", *args),
                    stdin=asyncio.subprocess.PIPE,  # its lifeline: closed, the helper exits
                    stdout=asyncio.subprocess.PIPE,
                )
            )
        try:
            async with asyncio.timeout(READY_TIMEOUT):
                said = [await p.stdout.readline() for p in procs if p.stdout is not None]
        except TimeoutError:
            raise ListenError(f"a listener did not start within {READY_TIMEOUT:g}s") from None
        errors = [line.decode(errors="replace").strip() for line in said if line != b"ready\n"]
        if errors:
            raise ListenError("; ".join(e or "a listener exited" for e in errors))
        yield
    finally:
        for proc in procs:
            if proc.returncode is None:
                proc.terminate()
        for proc in procs:
            await proc.wait()


async def check_ports(sim: Sim) -> CheckResult:
    result = CheckResult("ports")
    fws = {name: expected_firewall(sim, name) for name in sim.hosts}
    if all(fw is None for fw in fws.values()):
        result.skipped = "no role manages the firewall"
        return result
    # each target's address and ports once, not per probe: 27,100 probes at 100 hosts,
    # built on the event loop that runs reach's probes beside this check
    targets = {
        h.name: (str(h.layout.mgmt.ip), _ports(fw))
        for h in sim.hosts.values()
        if (fw := fws[h.name]) is not None
    }
    wanted = [(sim.hosts[name].ns.name, ports) for name, (_, ports) in targets.items()]
    pairs = [(a, b) for a, b in sim.layout.peers() if b.name in targets]
    probes = [
        TcpProbe(
            sim.hosts[a.name].ns,
            targets[b.name][0],
            port,
            CONNECT_TIMEOUT,
            retry=not _expected_closed(fws[b.name], port),
        )
        for a, b in pairs
        for port in targets[b.name][1]
    ]
    try:
        async with listening(wanted):
            answers = iter(await tcp_all(probes))
    except ListenError as exc:  # a port another program holds: nothing to judge by
        result.rows.append(Row("listeners", False, str(exc), (), "ports"))
        return result
    for a, b in pairs:
        fw = fws[b.name]
        assert fw is not None
        subject = f"{a.name} -> {b.name} ({targets[b.name][0]})"
        state = {p: next(answers) for p in targets[b.name][1]}
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
