"""One asynchronous prober for every ICMP and TCP probe of a check, in this process.

A socket belongs to the network namespace it was created in, whichever namespace its
process later runs in. So a worker thread enters a namespace (``setns``), creates the
sockets, and leaves; the event loop then drives every socket of every namespace at once.
No process per probe: 10,000 pings cost 10,000 packets, not 10,000 ``nsenter ping``.

ICMP uses one raw socket per source namespace: echo requests carry a per-socket identifier
and a per-probe sequence number, replies are matched on (source address, identifier,
sequence). Like ``ping -c 1 -w DEADLINE``, a probe resends every ``INTERVAL`` until the
first reply or its deadline, so a slow ARP on a busy machine costs time, not a false
failure. TCP probes are non-blocking ``connect`` calls from sockets made inside the source
namespace.

The kernel's ARP table is one table for every namespace of the machine, and it refuses
new entries beyond ``gc_thresh3`` (1024 here) until entries are 5 s old: 100 hosts
pinging every pair would overflow it in a moment (and starve every other user of the
machine). So every ping that makes entries deletes them when it is done (the source's
entry for the target, the target's for the source), and at most ``NEIGH_BUDGET`` entries
are in use at once. Permanent entries do not count against the limit: a check that pings
many pairs can install them (``set_neighbours``) and remove them afterwards.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import resource
import socket
import struct
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TypeVar

from simulator.fabric import in_netns
from simulator.namespaces import Namespace

__all__ = [
    "Forget",
    "IcmpProbe",
    "Neighbour",
    "TcpProbe",
    "announce",
    "close_packet_sockets",
    "garp",
    "in_namespace",
    "packet_socket",
    "ping_all",
    "set_neighbours",
    "tcp_all",
]

T = TypeVar("T")
INTERVAL = 0.25
ICMP_ECHO_REPLY, ICMP_ECHO = 0, 8
NEIGH_BUDGET = 240  # dynamic neighbour entries our pings may hold at once (two per ping)
RTM_NEWNEIGH, RTM_DELNEIGH = 28, 29
NLM_F_REQUEST, NLM_F_REPLACE, NLM_F_CREATE = 0x1, 0x100, 0x400
NDA_DST, NDA_LLADDR, NUD_PERMANENT = 1, 2, 0x80
_POOL = ThreadPoolExecutor(4, thread_name_prefix="netns")


async def in_namespace(ns: Namespace, make: Callable[[], T]) -> T:
    """``make()`` run by a worker thread inside ``ns``: sockets it creates stay in ``ns``."""

    def entered() -> T:
        with in_netns(ns):
            return make()

    return await asyncio.get_running_loop().run_in_executor(_POOL, entered)


@dataclass(frozen=True, slots=True)
class Forget:
    """The neighbour entries one ping makes, deleted once it is answered (or given up)."""

    ifindex: int  # the source's interface towards ``address``
    peer_ns: Namespace  # the target, which learnt the source from its ARP request
    peer_ifindex: int
    source: str  # the source address the target saw


@dataclass(frozen=True, slots=True)
class IcmpProbe:
    ns: Namespace  # where the echo request leaves from
    address: str
    deadline: float  # seconds
    forget: Forget | None = None  # None: entries that were there before (the broker's)


@dataclass(frozen=True, slots=True)
class TcpProbe:
    ns: Namespace
    address: str
    port: int
    timeout: float
    retry: bool = True  # False for a port expected closed: its timeout is the answer


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    total = (total >> 16) + (total & 0xFFFF)
    total += total >> 16
    return int(~total & 0xFFFF)


def _echo(ident: int, seq: int) -> bytes:
    payload = b"csboot-sim-probe"
    head = struct.pack("!BBHHH", ICMP_ECHO, 0, 0, ident, seq)
    return struct.pack("!BBHHH", ICMP_ECHO, 0, _checksum(head + payload), ident, seq) + payload


@dataclass(slots=True)
class _Pinger:
    """The raw ICMP socket of one namespace and the probes waiting on it."""

    sock: socket.socket
    ident: int
    waiting: dict[tuple[str, int], asyncio.Future[bool]] = field(default_factory=dict)
    next_seq: int = 0

    def readable(self) -> None:
        while True:
            try:
                data, _ = self.sock.recvfrom(2048)
            except (BlockingIOError, InterruptedError):
                return
            ihl = (data[0] & 0x0F) * 4
            if len(data) < ihl + 8 or data[ihl] != ICMP_ECHO_REPLY:
                continue
            ident, seq = struct.unpack_from("!HH", data, ihl + 4)
            if ident != self.ident:
                continue
            fut = self.waiting.get((socket.inet_ntoa(data[12:16]), seq))
            if fut is not None and not fut.done():
                fut.set_result(True)


def _netlink() -> socket.socket:
    s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)
    s.setblocking(False)
    return s


def _neigh(kind: int, ifindex: int, address: str, mac: str | None = None) -> bytes:
    """One RTM_NEWNEIGH (permanent, with ``mac``) or RTM_DELNEIGH message. No ACK is asked
    for; errors (an entry already gone) come back unread and are dropped with the socket."""
    state, flags = (NUD_PERMANENT, NLM_F_CREATE | NLM_F_REPLACE) if mac else (0, 0)
    body = struct.pack("=BBHiHBB", socket.AF_INET, 0, 0, ifindex, state, 0, 0)
    body += struct.pack("=HH", 8, NDA_DST) + socket.inet_aton(address)
    if mac is not None:
        body += struct.pack("=HH", 10, NDA_LLADDR) + bytes.fromhex(mac.replace(":", "")) + b"\0\0"
    return struct.pack("=IHHII", 16 + len(body), kind, NLM_F_REQUEST | flags, 0, 0) + body


def _delneigh(ifindex: int, address: str) -> bytes:
    return _neigh(RTM_DELNEIGH, ifindex, address)


@dataclass(frozen=True, slots=True)
class Neighbour:
    """A neighbour entry: ``address`` is at ``mac`` behind interface ``ifindex`` of ``ns``."""

    ns: Namespace
    ifindex: int
    address: str
    mac: str


async def set_neighbours(entries: Sequence[Neighbour], *, present: bool) -> None:
    """Add (permanent) or delete neighbour entries: one batch of messages per namespace."""
    by_ns: dict[str, list[Neighbour]] = {}
    for e in entries:
        by_ns.setdefault(e.ns.name, []).append(e)
    for group in by_ns.values():
        sock = await in_namespace(group[0].ns, _netlink)
        try:
            batch = b""
            for e in group:
                if present:
                    batch += _neigh(RTM_NEWNEIGH, e.ifindex, e.address, e.mac)
                else:
                    batch += _neigh(RTM_DELNEIGH, e.ifindex, e.address)
                if len(batch) > 32768:
                    await _send(sock, batch)
                    batch = b""
            if batch:
                await _send(sock, batch)
        finally:
            sock.close()


async def _send(sock: socket.socket, data: bytes) -> None:
    """Send on a non-blocking netlink socket, draining the kernel's answers when it is full."""
    while True:
        try:
            sock.send(data)
            return
        except BlockingIOError:
            _drain(sock)
            await asyncio.sleep(0)


class _Neighbours:
    """One rtnetlink socket per namespace, to delete the entries our pings made."""

    def __init__(self) -> None:
        self.socks: dict[str, socket.socket] = {}

    async def open(self, ns: Namespace) -> None:
        if ns.name not in self.socks:
            sock = await in_namespace(ns, _netlink)
            asyncio.get_running_loop().add_reader(sock.fileno(), _drain, sock)
            self.socks[ns.name] = sock

    def forget(self, ns: Namespace, ifindex: int, address: str) -> None:
        with contextlib.suppress(OSError):
            self.socks[ns.name].send(_delneigh(ifindex, address))

    def close(self) -> None:
        loop = asyncio.get_running_loop()
        for sock in self.socks.values():
            loop.remove_reader(sock.fileno())
            sock.close()


def garp(mac: str, address: str, vlan: int | None = None, *, broadcast: bool = False) -> bytes:
    """A gratuitous ARP *reply*, "``address`` is at ``mac``" (802.1Q-tagged with ``vlan``
    when given). Broadcast (``arping -A``), receivers refresh an entry they hold and make
    none (``arp_accept`` 0). Else addressed to its own sender: a MAC-learning bridge
    learns where ``mac`` is and has nowhere to send it but the port it came in on."""
    hw, ip = bytes.fromhex(mac.replace(":", "")), socket.inet_aton(address)
    arp = struct.pack("!HHBBH", 1, 0x0800, 6, 4, 2) + hw + ip + hw + ip
    tag = b"" if vlan is None else struct.pack("!HH", 0x8100, vlan)
    return (b"\xff" * 6 if broadcast else hw) + hw + tag + struct.pack("!H", 0x0806) + arp


def packet_socket(interface: str | int) -> socket.socket:
    """A send-only packet socket on ``interface`` (a name, or an index resolved here: call
    it inside the interface's namespace). No protocol, so the kernel hooks no receiver."""
    name = interface if isinstance(interface, str) else socket.if_indextoname(interface)
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
    s.bind((name, 0))
    return s


async def close_packet_sockets(socks: Iterable[socket.socket]) -> None:
    """Closed together: closing a packet socket waits for an RCU grace period in the
    kernel (``packet_release``: ``synchronize_net``), 15 ms here, so 500 closed one by one
    took 7.5 s of wall time; closed from many threads at once they share the waits."""
    socks = list(socks)
    if socks:
        loop = asyncio.get_running_loop()
        with ThreadPoolExecutor(min(64, len(socks)), thread_name_prefix="close") as pool:
            await asyncio.gather(*(loop.run_in_executor(pool, s.close) for s in socks))


async def announce(entries: Sequence[Neighbour]) -> None:
    """Each entry's namespace says once, on its interface, that its address is at its MAC
    (a broadcast gratuitous ARP, what a host does when an address comes up)."""
    sockets = [
        (await in_namespace(e.ns, functools.partial(packet_socket, e.ifindex)), e) for e in entries
    ]
    try:
        for sock, e in sockets:
            with contextlib.suppress(OSError):  # a full queue: that one is found by ARP
                sock.send(garp(e.mac, e.address, broadcast=True))
    finally:
        await close_packet_sockets(sock for sock, _ in sockets)


def _drain(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        while sock.recv(65536):
            pass


def _raw_icmp() -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    s.setblocking(False)
    return s


async def ping_all(probes: Sequence[IcmpProbe], *, limit: int = NEIGH_BUDGET // 2) -> list[bool]:
    """Every probe, ``limit`` in flight at a time: True where a reply came back."""
    loop = asyncio.get_running_loop()
    pingers: dict[str, _Pinger] = {}
    neighbours = _Neighbours()
    for ns in {p.ns.name: p.ns for p in probes}.values():
        sock = await in_namespace(ns, _raw_icmp)
        pinger = _Pinger(sock, int.from_bytes(os.urandom(2), "big"))
        loop.add_reader(sock.fileno(), pinger.readable)
        pingers[ns.name] = pinger
    for p in probes:
        if p.forget is not None:
            await neighbours.open(p.ns)
            await neighbours.open(p.forget.peer_ns)
    sem = asyncio.Semaphore(limit)

    async def one(p: IcmpProbe) -> bool:
        pinger = pingers[p.ns.name]
        seq = pinger.next_seq = (pinger.next_seq + 1) & 0xFFFF
        fut: asyncio.Future[bool] = loop.create_future()
        pinger.waiting[(p.address, seq)] = fut
        packet = _echo(pinger.ident, seq)
        async with sem:
            end = loop.time() + p.deadline
            try:
                while (left := end - loop.time()) > 0:
                    with contextlib.suppress(OSError):  # no route yet, buffer full: resend
                        pinger.sock.sendto(packet, (p.address, 0))
                    with contextlib.suppress(TimeoutError):
                        return await asyncio.wait_for(asyncio.shield(fut), min(INTERVAL, left))
                return False
            finally:
                pinger.waiting.pop((p.address, seq), None)
                if (f := p.forget) is not None:
                    neighbours.forget(p.ns, f.ifindex, p.address)
                    neighbours.forget(f.peer_ns, f.peer_ifindex, f.source)

    try:
        return list(await asyncio.gather(*(one(p) for p in probes)))
    finally:
        neighbours.close()
        for pinger in pingers.values():
            loop.remove_reader(pinger.sock.fileno())
            pinger.sock.close()


def _tcp_sockets(n: int) -> list[socket.socket]:
    out = []
    for _ in range(n):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setblocking(False)
        out.append(s)
    return out


async def _connect(sock: socket.socket, address: str, port: int, timeout: float) -> bool:
    loop = asyncio.get_running_loop()
    try:
        await asyncio.wait_for(loop.sock_connect(sock, (address, port)), timeout)
    except (OSError, TimeoutError):
        return False
    else:
        # the handshake is the answer: close with a RST (SO_LINGER 0), not a FIN exchange
        # that costs the userspace datapaths four more frames per probe
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    finally:
        sock.close()
    return True


def fd_budget(cap: int = 512) -> int:
    """How many sockets a batch may hold open: the soft open-files limit raised to the hard
    one where it is lower (1024 by default in the VM), with room left for everything else,
    and at most ``cap``: thousands of SYNs at once overflow the userspace datapaths' queues
    on a loaded machine (at 100 hosts, ports then looked closed), 512 at a time do not."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
    return max(64, min(cap, (soft - 256) // 2))


async def tcp_all(probes: Sequence[TcpProbe], *, limit: int | None = None) -> list[bool]:
    """TCP connects, at most ``limit`` open at a time (default: what the open-files limit
    allows, capped), as a sliding window: a probe that waits out its timeout (a filtered
    port) holds one slot, not a whole batch. A failure is retried once, three times slower
    (a busy machine can miss a handshake: ask again before calling a port closed)."""
    got: list[bool] = [False] * len(probes)
    limit = limit or fd_budget()
    chunk = max(1, min(64, limit))  # sockets made per trip into a namespace

    async def run(indices: list[int], slow: float) -> None:
        slots = asyncio.Semaphore(limit)

        async def connect(i: int, sock: socket.socket) -> None:
            try:
                p = probes[i]
                got[i] = await _connect(sock, p.address, p.port, p.timeout * slow)
            finally:
                slots.release()

        tasks: list[asyncio.Task[None]] = []
        try:
            for start in range(0, len(indices), chunk):
                part = indices[start : start + chunk]
                for _ in part:
                    await slots.acquire()
                by_ns: dict[str, list[int]] = {}
                for i in part:
                    by_ns.setdefault(probes[i].ns.name, []).append(i)
                for members in by_ns.values():
                    ns = probes[members[0]].ns
                    make = functools.partial(_tcp_sockets, len(members))
                    socks = await in_namespace(ns, make)
                    for i, sock in zip(members, socks, strict=True):
                        tasks.append(asyncio.create_task(connect(i, sock)))
            await asyncio.gather(*tasks)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    await run(list(range(len(probes))), 1.0)
    await run([i for i, ok in enumerate(got) if not ok and probes[i].retry], 3.0)
    return got
