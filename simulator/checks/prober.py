"""One asynchronous prober for every ICMP and TCP probe of a check, in this process.

A socket belongs to the network namespace it was created in, whichever namespace its
process later runs in. So a worker thread enters a namespace (``setns``), creates the
sockets, and leaves; the event loop then drives every socket of every namespace at once.
No process per probe: 10,000 pings cost 10,000 packets, not 10,000 ``nsenter ping``.

ICMP uses one raw socket per source namespace: echo requests carry a per-socket identifier
and a per-probe sequence number, replies are matched on (source address, identifier,
sequence). Like ``ping -c 1 -w DEADLINE``, a probe resends every ``INTERVAL`` until the
first reply or its deadline, so a slow ARP on a busy machine costs time, not a false
failure. TCP probes are SYNs from one raw socket per source namespace, answered by a
SYN-ACK (open) or a RST (closed), as ``nmap -sS`` asks.

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
import collections
import contextlib
import functools
import os
import secrets
import socket
import struct
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Protocol, TypeVar

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
    "in_namespaces",
    "packet_socket",
    "ping_all",
    "set_neighbours",
    "tcp_all",
]

T = TypeVar("T")
INTERVAL = 0.25
ICMP_ECHO_REPLY, ICMP_ECHO = 0, 8
NEIGH_BUDGET = 240  # dynamic neighbour entries our pings may hold at once (two per ping)
TCP_SYN, TCP_RST, TCP_ACK = 0x02, 0x04, 0x10
SYN_INTERVAL = 0.5  # seconds between a probe's SYNs (the kernel's first retransmit: 1 s)
SYN_PORTS = (20000, 30000)  # the probes' source ports: below the ephemeral range, no listener's
# SYNs waiting at once: thousands overflow the userspace datapaths' queues on a loaded
# machine (at 100 hosts ports then looked closed), 512 at a time do not
SYN_WINDOW = 512
SYN_TICK = 0.05  # seconds between looks for SYNs to send again or give up
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


class _Closes(Protocol):
    def close(self) -> None: ...


C = TypeVar("C", bound=_Closes)


async def in_namespaces(jobs: Iterable[tuple[Namespace, Callable[[], C]]]) -> list[C]:
    """Each ``make()`` run inside its namespace, all in one trip to a worker thread.

    A trip costs two hand-offs of the GIL, up to its switch interval (5 ms) each while
    other threads compute: one trip per namespace took 4-5 s for reach's 300 at 100 hosts.
    If one fails, what was already made is closed."""
    jobs = list(jobs)

    def made() -> list[C]:
        out: list[C] = []
        try:
            for ns, make in jobs:
                with in_netns(ns):
                    out.append(make())
        except BaseException:
            for sock in out:
                sock.close()
            raise
        return out

    return await asyncio.get_running_loop().run_in_executor(_POOL, made)


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
    socks = await in_namespaces((group[0].ns, _netlink) for group in by_ns.values())
    try:
        for sock, group in zip(socks, by_ns.values(), strict=True):
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
        for sock in socks:
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

    async def open(self, spaces: Iterable[Namespace]) -> None:
        todo = {ns.name: ns for ns in spaces if ns.name not in self.socks}
        socks = await in_namespaces((ns, _netlink) for ns in todo.values())
        for name, sock in zip(todo, socks, strict=True):
            asyncio.get_running_loop().add_reader(sock.fileno(), _drain, sock)
            self.socks[name] = sock

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
    made = await in_namespaces((e.ns, functools.partial(packet_socket, e.ifindex)) for e in entries)
    sockets = list(zip(made, entries, strict=True))
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

    spaces = {p.ns.name: p.ns for p in probes}
    socks = await in_namespaces((ns, _raw_icmp) for ns in spaces.values())
    try:
        for name, sock in zip(spaces, socks, strict=True):
            pinger = _Pinger(sock, int.from_bytes(os.urandom(2), "big"))
            loop.add_reader(sock.fileno(), pinger.readable)
            pingers[name] = pinger
        await neighbours.open(
            ns for p in probes if (f := p.forget) is not None for ns in (p.ns, f.peer_ns)
        )
        return list(await asyncio.gather(*(one(p) for p in probes)))
    finally:
        neighbours.close()
        for pinger in pingers.values():
            loop.remove_reader(pinger.sock.fileno())
        for sock in socks:
            sock.close()


def _syn(source: bytes, target: bytes, sport: int, dport: int) -> bytes:
    """A TCP SYN without options, its checksum over the IPv4 pseudo-header (a raw socket
    without ``IP_HDRINCL``: the kernel writes the IP header, never the TCP checksum)."""
    head = struct.pack("!HHIIBBHHH", sport, dport, 0, 0, 5 << 4, TCP_SYN, 64240, 0, 0)
    pseudo = source + target + struct.pack("!BBH", 0, socket.IPPROTO_TCP, len(head))
    return head[:16] + struct.pack("!H", _checksum(pseudo + head)) + head[18:]


def _scanner(name: str, targets: Sequence[str]) -> _Scanner:
    """A raw TCP socket in this thread's namespace (``name``), a source port, and the
    source address its routing picks for each target that has a route (the SYN's checksum
    covers it)."""
    sources: dict[str, bytes] = {}
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        for target in targets:
            with contextlib.suppress(OSError):  # no route: that probe fails
                udp.connect((target, 9))  # no packet: a route lookup
                sources[target] = socket.inet_aton(udp.getsockname()[0])
    s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_TCP)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 21)
    s.setblocking(False)
    return _Scanner(name, s, SYN_PORTS[0] + secrets.randbelow(SYN_PORTS[1] - SYN_PORTS[0]), sources)


@dataclass(slots=True)
class _Scanner:
    """The raw TCP socket of one namespace, its source port, and where answers go."""

    name: str  # the namespace's
    sock: socket.socket
    sport: int
    sources: dict[str, bytes]
    answer: Callable[[tuple[str, str, int], bool], None] = lambda _key, _ok: None

    def close(self) -> None:
        self.sock.close()

    def readable(self) -> None:
        """Every TCP segment the namespace receives: a SYN-ACK to our port is open, a RST
        closed; anything else (the agents' own connections) is not ours."""
        while True:
            try:
                data = self.sock.recv(2048)
            except (BlockingIOError, InterruptedError):
                return
            ihl = (data[0] & 0x0F) * 4 if data else 0
            if ihl < 20 or len(data) < ihl + 14:  # not an IPv4 header and a TCP one's ports
                continue
            sport, dport = struct.unpack_from("!HH", data, ihl)
            if dport != self.sport:
                continue
            flags = data[ihl + 13]
            if flags & TCP_SYN and flags & TCP_ACK:
                self.answer((self.name, socket.inet_ntoa(data[12:16]), sport), True)
            elif flags & TCP_RST:
                self.answer((self.name, socket.inet_ntoa(data[12:16]), sport), False)


_Key = tuple[str, str, int]  # source namespace, address, port


async def tcp_all(probes: Sequence[TcpProbe], *, limit: int = SYN_WINDOW) -> list[bool]:
    """Whether each probe's port answers a TCP SYN with a SYN-ACK (as ``nmap -sS`` asks),
    at most ``limit`` waiting at a time. A SYN is sent again every ``SYN_INTERVAL`` until
    an answer or the probe's timeout; a RST is a closed port at once. The source kernel,
    which holds no socket for it, answers the SYN-ACK with a RST: three frames a probe
    through the datapaths, where a ``connect`` took four (and a socket, a coroutine and
    125 µs of this process's CPU each at 100 hosts). A failure is asked again once,
    three times slower (a busy machine can lose a frame: ask again before calling a port
    closed). The listeners stand behind the target's firewall as before: an allowed port
    answers only if something listens on it."""
    first: dict[_Key, TcpProbe] = {}
    for p in probes:
        first.setdefault((p.ns.name, p.address, p.port), p)  # each asked once
    answers: dict[_Key, bool] = dict.fromkeys(first, False)
    spaces = {p.ns.name: p.ns for p in probes}
    targets: dict[str, set[str]] = {name: set() for name in spaces}
    for p in probes:
        targets[p.ns.name].add(p.address)
    loop = asyncio.get_running_loop()
    jobs = [(ns, functools.partial(_scanner, n, sorted(targets[n]))) for n, ns in spaces.items()]
    scanners = {sc.name: sc for sc in await in_namespaces(jobs)}  # one trip for all
    try:
        for sc in scanners.values():
            loop.add_reader(sc.sock.fileno(), sc.readable)
        scan = functools.partial(
            _scan, probes=first, scanners=scanners, answers=answers, limit=limit
        )
        await scan(list(first), slow=1.0)
        await scan([k for k, ok in answers.items() if not ok and first[k].retry], slow=3.0)
    finally:
        for scanner in scanners.values():
            loop.remove_reader(scanner.sock.fileno())
            scanner.close()
    return [answers[(p.ns.name, p.address, p.port)] for p in probes]


async def _scan(
    keys: list[_Key],
    *,
    probes: dict[_Key, TcpProbe],
    scanners: dict[str, _Scanner],
    answers: dict[_Key, bool],
    limit: int,
    slow: float,
) -> None:
    """One pass: a window of SYNs in flight, refilled as answers come (from the sockets'
    readers) and as probes time out (a tick every ``SYN_TICK``), no task per probe."""
    loop = asyncio.get_running_loop()
    done = loop.create_future()
    todo = collections.deque(keys)
    flying: dict[_Key, tuple[float, float, bytes]] = {}  # deadline, next send, the SYN
    timer: asyncio.TimerHandle | None = None

    def send(key: _Key, packet: bytes) -> None:
        with contextlib.suppress(OSError):  # a full buffer: sent again at the next interval
            scanners[key[0]].sock.sendto(packet, (key[1], 0))

    def refill() -> None:
        while todo and len(flying) < limit:
            key = todo.popleft()
            scanner, p = scanners[key[0]], probes[key]
            source = scanner.sources.get(p.address)
            if source is None:  # no route: not open
                continue
            packet = _syn(source, socket.inet_aton(p.address), scanner.sport, p.port)
            now = loop.time()
            flying[key] = (now + p.timeout * slow, now + SYN_INTERVAL, packet)
            send(key, packet)
        if not todo and not flying and not done.done():
            done.set_result(None)

    def answer(key: _Key, ok: bool) -> None:
        if flying.pop(key, None) is not None:
            answers[key] = ok
            refill()

    def tick() -> None:
        nonlocal timer
        now = loop.time()
        for key, (deadline, again, packet) in list(flying.items()):
            if now >= deadline:
                del flying[key]  # silence: not open
            elif now >= again:
                flying[key] = (deadline, now + SYN_INTERVAL, packet)
                send(key, packet)
        refill()
        timer = loop.call_later(SYN_TICK, tick)

    for scanner in scanners.values():
        scanner.answer = answer
    timer = loop.call_later(SYN_TICK, tick)
    try:
        refill()
        await done
    finally:
        timer.cancel()
