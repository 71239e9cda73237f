"""The simulator's TCP probes (the ports check), between two namespaces of their own: a SYN
answered by a SYN-ACK is open, by a RST closed at once, by nothing closed after the
probe's time; a target without a route fails alone; no handshake is ever completed. The
ports check's listeners: helper processes holding ports in many namespaces each."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import subprocess
import sys
from collections.abc import Callable, Iterator

import pytest

from simulator.checks.ports import HELPER, ListenError, batches, listening
from simulator.checks.prober import TcpProbe, tcp_all
from simulator.namespaces import Namespace, veth_pair

pytestmark = pytest.mark.root

NamespaceFactory = Callable[[str], Namespace]
SOURCE, TARGET, NOBODY = "10.9.0.1", "10.9.0.2", "10.9.0.99"


@pytest.fixture
def pair(make_ns: NamespaceFactory) -> tuple[Namespace, Namespace]:
    source, target = make_ns("src"), make_ns("dst")
    veth_pair(source, "eth0", target, "eth0")
    for ns, address in ((source, SOURCE), (target, TARGET)):
        with ns.iproute() as ipr:
            (idx,) = ipr.link_lookup(ifname="eth0")
            ipr.addr("add", index=idx, address=address, prefixlen=24)
    return source, target


@contextlib.contextmanager
def held(ns: Namespace, ports: list[int]) -> Iterator[list[socket.socket]]:
    with ns.inside():
        socks = [socket.create_server((TARGET, port)) for port in ports]
    try:
        yield socks
    finally:
        for s in socks:
            s.close()


def test_open_closed_silent_and_unroutable(pair: tuple[Namespace, Namespace]) -> None:
    source, target = pair
    with held(target, [2222, 2223]) as socks:
        probes = [
            TcpProbe(source, TARGET, 2222, 5.0),
            TcpProbe(source, TARGET, 2223, 5.0),
            TcpProbe(source, TARGET, 2224, 5.0),  # nobody listens: a RST
            TcpProbe(source, NOBODY, 2222, 0.3, retry=False),  # no answer at all
            TcpProbe(source, "192.0.2.1", 2222, 0.3),  # no route from the source
            TcpProbe(source, TARGET, 2222, 5.0),  # asked twice: answered twice
        ]
        loop = asyncio.new_event_loop()
        try:
            t0 = loop.time()
            got = loop.run_until_complete(tcp_all(probes))
            took = loop.time() - t0
        finally:
            loop.close()
        assert got == [True, True, False, False, False, True]
        # the RST is the answer: nothing waited out its 5 s (the silent probe took 0.3 s)
        assert took < 5.0
        # a SYN scan: the source's kernel reset each half-open connection, none was made
        for s in socks:
            s.setblocking(False)
            with pytest.raises(BlockingIOError):
                s.accept()


def test_helpers_hold_ports_in_every_namespace_they_are_given_until_the_block_ends(
    pair: tuple[Namespace, Namespace],
) -> None:
    source, target = pair
    back = [TcpProbe(source, TARGET, 2222, 5.0), TcpProbe(source, TARGET, 2223, 5.0)]
    back += [TcpProbe(target, SOURCE, 2300, 5.0), TcpProbe(target, SOURCE, 2301, 5.0)]
    wanted = [(target.name, [2222]), (source.name, [2300]), (source.name, [2301])]
    wanted += [(target.name, [2223])]

    async def scenario() -> tuple[list[bool], list[bool]]:
        # four sockets, at most two a helper: two helpers, each in both namespaces
        async with listening(wanted, per=2):
            during = await tcp_all(back)
        return during, await tcp_all(back)

    during, after = asyncio.run(scenario())
    assert during == [True, True, True, True]
    assert after == [False, False, False, False]  # let go: each answered by a RST


def test_a_port_someone_holds_is_named_and_nothing_stays_held(
    pair: tuple[Namespace, Namespace],
) -> None:
    source, target = pair

    async def scenario() -> None:
        async with listening([(target.name, [2222, 2223, 2224])]):
            raise AssertionError("listening despite a taken port")

    taken = rf"error {target.name}: port 2223: Address already in use"
    with held(target, [2223]), pytest.raises(ListenError, match=taken):
        asyncio.run(scenario())
    assert asyncio.run(tcp_all([TcpProbe(source, TARGET, 2222, 5.0)])) == [False]


def test_a_helper_whose_simulator_is_gone_lets_go(pair: tuple[Namespace, Namespace]) -> None:
    """Its standard input is its lifeline: when the simulator's end closes (a simulator
    killed mid-check), the helper exits and its ports close, with nobody to SIGTERM it."""
    source, target = pair
    helper = subprocess.Popen(
        [sys.executable, "-I", "-S", str(HELPER), "listen", target.name, "2222"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    try:
        assert helper.stdout is not None and helper.stdout.readline() == b"ready\n"
        assert asyncio.run(tcp_all([TcpProbe(source, TARGET, 2222, 5.0)])) == [True]
        assert helper.stdin is not None
        helper.stdin.close()
        assert helper.wait(10) == 0
        assert asyncio.run(tcp_all([TcpProbe(source, TARGET, 2222, 5.0)])) == [False]
    finally:
        helper.kill()
        helper.wait()


def test_batches_are_even_and_within_the_limit() -> None:
    wanted = [(f"h{i}", list(range(271))) for i in range(100)]  # 100 hosts' allowed ports
    groups = batches(wanted, 19_872)
    assert [sum(len(p) for _, p in g) for g in groups] == [13_550, 13_550]
    assert sorted(n for g in groups for n, _ in g) == sorted(n for n, _ in wanted)
    assert len(batches(wanted, 271)) == 100
    assert batches([("big", list(range(50)))], 10) == [[("big", list(range(50)))]]


def test_the_scanner_skips_what_is_not_an_answer_to_it() -> None:
    """Segments from the wire: empty, truncated, a bad header length, another port's, then
    one SYN-ACK and one RST to its port; only those two are answers."""
    from simulator.checks.prober import _Scanner

    ours, wire = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    ours.setblocking(False)
    seen: list[tuple[tuple[str, str, int], bool]] = []
    scanner = _Scanner("ns", ours, 20001, {}, lambda key, ok: seen.append((key, ok)))

    def segment(sport: int, dport: int, flags: int, ihl: int = 5) -> bytes:
        ip = bytes([0x40 | ihl]) + bytes(11) + socket.inet_aton(TARGET) + bytes(4)
        return ip + bytes(max(0, ihl * 4 - 20)) + struct.pack("!HH8xBB", sport, dport, 0x50, flags)

    for junk in (
        b"",
        b"\x45",
        segment(80, 20001, 0x12)[:30],
        segment(80, 20001, 0x12, ihl=2),
        segment(80, 20001, 0x12, ihl=15)[:40],
        segment(80, 20002, 0x12),
        b"\xff" * 4000,
    ):
        wire.send(junk)
    wire.send(segment(2222, 20001, 0x12))  # SYN-ACK
    wire.send(segment(2224, 20001, 0x14))  # RST-ACK
    scanner.readable()
    assert seen == [(("ns", TARGET, 2222), True), (("ns", TARGET, 2224), False)]
    scanner.close()
    wire.close()
