"""Isolation: tagged frames injected on one VLAN never appear on another VLAN's bridge.

Senders (up to four hosts) inject broadcast frames with scapy on their uplink, tagged with
each guest VLAN and carrying a marker (run token, sender, VLAN). Every guest of every host
listens on its bridge port at the same time, through raw packet sockets opened inside the
guest namespaces. A marker of VLAN v seen on a VLAN w != v bridge is a leak. As a positive
control, each VLAN's frames must be seen on that VLAN somewhere, or the check proves
nothing and fails; a single host that misses its own VLAN's frames is left to ``reach``.

The scapy sender inside the host namespaces is :mod:`simulator.checks.helper`.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import select
import socket
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from simulator.checks import CheckResult, Row, run_in
from simulator.checks.reach import attach_guests
from simulator.fabric import in_netns

if TYPE_CHECKING:
    from simulator.fleet import Sim

__all__ = ["check_isolation"]

ETH_P_ALL = 0x0003
HELPER = Path(__file__).with_name("helper.py")
MAX_SENDERS = 4


async def check_isolation(sim: Sim) -> CheckResult:
    result = CheckResult("isolation")
    await asyncio.to_thread(attach_guests, sim)
    vlans = sim.layout.reach_vlans()
    if len(vlans) < 2:
        result.skipped = "fewer than two guest VLANs"
        return result
    token = secrets.token_hex(4)
    socks: dict[socket.socket, tuple[str, int]] = {}
    for host in sim.hosts.values():
        for vlan, guest in host.guests.items():
            with in_netns(guest.ns):
                s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
                s.bind(("eth0", 0))
                s.setblocking(False)
            socks[s] = (host.name, vlan)
    senders = list(sim.hosts.values())[:MAX_SENDERS]
    try:
        sent = await asyncio.gather(
            *(
                run_in(
                    host.ns,
                    sys.executable,
                    str(HELPER),
                    "send",
                    host.layout.uplink,
                    token,
                    host.name,
                    *map(str, vlans),
                    timeout=300,
                )
                for host in senders
            )
        )
        for host, (code, _out, err) in zip(senders, sent, strict=True):
            if code != 0:
                result.rows.append(
                    Row(
                        f"inject from {host.name}",
                        False,
                        f"scapy failed: {err.strip()[-200:]}",
                        (host.name,),
                    )
                )
        seen = _collect(socks, token, settle=1.0)
    finally:
        for s in socks:
            s.close()
    leaks: dict[tuple[str, int], set[tuple[str, int]]] = {}
    own: dict[int, set[str]] = {v: set() for v in vlans}
    for (receiver, rvlan), markers in seen.items():
        for sender, svlan in markers:
            if svlan != rvlan:
                leaks.setdefault((receiver, rvlan), set()).add((sender, svlan))
            else:
                own[svlan].add(receiver)
    for host in sim.hosts.values():
        for vlan in sorted(host.guests):
            bad = leaks.get((host.name, vlan))
            subject = f"{host.name} vlan {vlan} bridge {host.guests[vlan].bridge}"
            if bad:
                what = ", ".join(f"vlan {v} from {s}" for s, v in sorted(bad))
                result.rows.append(
                    Row(subject, False, f"leak: saw frames of {what}", (host.name,), f"leak {vlan}")
                )
            else:
                others = ", ".join(str(v) for v in vlans if v != vlan)
                result.rows.append(
                    Row(subject, True, f"no frames of vlan {others}", (host.name,), f"leak {vlan}")
                )
    for vlan in vlans:
        ok = bool(own[vlan])
        result.rows.append(
            Row(
                f"control: vlan {vlan} frames seen on vlan {vlan}",
                ok,
                f"seen on {len(own[vlan])} host(s)"
                if ok
                else "nowhere: the sniffers prove nothing",
                (),
                f"control {vlan}",
            )
        )
    return result


def _collect(
    socks: dict[socket.socket, tuple[str, int]], token: str, *, settle: float
) -> dict[tuple[str, int], set[tuple[str, int]]]:
    """Drain every socket until ``settle`` seconds pass; markers seen per (host, vlan)."""
    prefix = f"CSBSIM:{token}:".encode()
    seen: dict[tuple[str, int], set[tuple[str, int]]] = {}
    deadline = time.monotonic() + settle
    while (left := deadline - time.monotonic()) > 0:
        ready, _, _ = select.select(list(socks), [], [], left)
        for s in ready:
            with contextlib.suppress(BlockingIOError):
                while True:
                    frame = s.recv(65535)
                    at = frame.find(prefix)
                    if at < 0:
                        continue
                    parts = frame[at:].split(b":")
                    seen.setdefault(socks[s], set()).add((parts[2].decode(), int(parts[3])))
    return seen
