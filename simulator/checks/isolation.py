"""Isolation: tagged frames injected on one VLAN never appear on another VLAN's bridge.

Senders (up to four hosts) inject broadcast frames on their uplink (a packet socket made
inside the host's namespace, driven from this process), tagged with
each guest VLAN and carrying a marker (run token, sender, VLAN). Every guest of every host
listens on its bridge port at the same time, through raw packet sockets opened inside the
guest namespaces. A marker of VLAN v seen on a VLAN w != v bridge is a leak. As a positive
control, each VLAN's frames must be seen on that VLAN somewhere, or the check proves
nothing and fails; a single host that misses its own VLAN's frames is left to ``reach``.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import secrets
import select
import socket
import struct
import time
from typing import TYPE_CHECKING

from simulator.checks import CheckResult, Row
from simulator.checks.prober import close_packet_sockets, in_namespace, packet_socket
from simulator.checks.reach import attach_guests
from simulator.fabric import in_netns
from simulator.hosts import SimHost

if TYPE_CHECKING:
    from simulator.fleet import Sim

__all__ = ["check_isolation"]

ETHERTYPE = 0x88B5  # IEEE local experimental


def marker(token: str, sender: str, vlan: int) -> bytes:
    return f"CSBSIM:{token}:{sender}:{vlan}:".encode()


ETH_P_ALL = 0x0003
MAX_SENDERS = 4
SETTLE = 1.0  # seconds every sniffer keeps listening after the last frame was sent


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
                # no protocol until bound: a socket made with one is hooked at once, and
                # binding it then unhooks it, which waits on the kernel (15 ms a socket)
                s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
                s.bind(("eth0", ETH_P_ALL))  # host byte order: Python swaps it
                s.setblocking(False)
            socks[s] = (host.name, vlan)
    senders = list(sim.hosts.values())[:MAX_SENDERS]
    try:
        for host in senders:
            try:
                await _inject(host, token, vlans)
            except OSError as exc:
                subject = f"inject from {host.name}"
                result.rows.append(Row(subject, False, f"cannot send: {exc}", (host.name,)))
        seen = await asyncio.to_thread(_collect, socks, token, settle=SETTLE)
    finally:
        await close_packet_sockets(socks)
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


def frames(token: str, sender: str, vlans: list[int]) -> list[bytes]:
    """Broadcast frames tagged with each VLAN, carrying the marker (run token, sender, VLAN)."""
    head = b"\xff" * 6 + bytes.fromhex("02cb00000001")
    return [
        head + struct.pack("!HHH", 0x8100, v, ETHERTYPE) + marker(token, sender, v) + b"\0" * 32
        for v in vlans
    ]


async def _inject(host: SimHost, token: str, vlans: list[int]) -> None:
    """The frames, three times, from a packet socket on the host's uplink (made inside it)."""

    sock = await in_namespace(host.ns, functools.partial(packet_socket, host.layout.uplink))
    try:
        for _ in range(3):
            for frame in frames(token, host.name, vlans):
                sock.send(frame)
            await asyncio.sleep(0.05)  # a burst spread out, as scapy's ``inter`` did
    finally:
        await close_packet_sockets([sock])


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
