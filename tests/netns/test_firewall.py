"""The firewall on a real kernel: namespace ``host`` runs our table, ``peer`` knocks on it.

Listeners are made while inside ``host`` (the sockets stay there); connections are made
while inside ``peer``. The kernel answers SYNs from the listen backlog, so nobody needs to
accept, except for the connection that must survive the switch to ``drop``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace
from typing import Any, Literal

import nftables
import pytest

from bootstrap.engine.plan import make_plan
from bootstrap.engine.probe import IcmpProbe
from bootstrap.errors import ResourceError
from bootstrap.model.spec import Firewall
from bootstrap.resources.firewall import FirewallResource, read_table, write_table
from bootstrap.resources.nft_rules import TABLE
from simulator.namespaces import Namespace, veth_pair

pytestmark = [pytest.mark.root, pytest.mark.netns]

HOST, PEER, OTHER = "10.77.0.1", "10.77.0.2", "10.77.0.3"
HOST6, PEER6 = "fd77::1", "fd77::2"
IFA_F_NODAD = 0x02
EPHEMERAL = range(49152, 49217)
Outcome = Literal["open", "refused", "silent"]
NamespaceFactory = Callable[[str], Namespace]


@pytest.fixture
def lab(make_ns: NamespaceFactory) -> tuple[Namespace, Namespace]:
    host, peer = make_ns("host"), make_ns("peer")
    veth_pair(host, "eth0", peer, "p1")
    for ns, dev, addrs in ((host, "eth0", [HOST, HOST6]), (peer, "p1", [PEER, OTHER, PEER6])):
        with ns.iproute() as ipr:
            (idx,) = ipr.link_lookup(ifname=dev)
            for addr in addrs:
                v6 = ":" in addr
                ipr.addr(
                    "add",
                    index=idx,
                    address=addr,
                    prefixlen=64 if v6 else 24,
                    flags=IFA_F_NODAD if v6 else 0,
                )
    return host, peer


@contextlib.contextmanager
def listening(ns: Namespace, ports: Sequence[int]) -> Iterator[dict[int, socket.socket]]:
    socks: dict[int, socket.socket] = {}
    try:
        with ns.entered():
            for port in ports:
                sock = socket.socket(socket.AF_INET6)  # dual stack: IPv4 and IPv6
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                sock.bind(("::", port))
                sock.listen(64)
                socks[port] = sock
        yield socks
    finally:
        for sock in socks.values():
            sock.close()


async def knock(port: int, *, src: str = PEER, dst: str = HOST, timeout: float = 2.0) -> Outcome:
    """One TCP connect (made in the current thread's namespace)."""
    try:
        _, writer = await asyncio.wait_for(
            asyncio.open_connection(dst, port, local_addr=(src, 0)), timeout
        )
    except TimeoutError:
        return "silent"
    except ConnectionRefusedError:
        return "refused"
    writer.close()
    return "open"


async def knock_all(ports: Sequence[int], **kw: Any) -> dict[int, Outcome]:
    outcomes = await asyncio.gather(*(knock(p, **kw) for p in ports))
    return dict(zip(ports, outcomes, strict=True))


def listing(ns: Namespace, family: str, name: str) -> Any:
    """Another tool's table, as nft lists it (JSON, handles included)."""
    with ns.entered():
        nft = nftables.Nftables()
        rc, out, err = nft.json_cmd(
            {"nftables": [{"list": {"table": {"family": family, "name": name}}}]}
        )
    assert rc == 0, err
    return out


async def apply_spec(ns: Namespace, firewall: Firewall) -> FirewallResource:
    res = FirewallResource(firewall)
    with ns.entered():
        plan = await make_plan([res])
        for step in plan.pending:
            await res.apply(step.current, step.target)
    return res


async def test_drop_lets_only_the_allow_list_in(lab: tuple[Namespace, Namespace]) -> None:
    host, peer = lab
    with listening(host, [16509, 8080, *EPHEMERAL]) as socks:
        await apply_spec(host, Firewall())  # the seed: accept, the table only documents
        with peer.entered():
            assert await knock(8080) == "open"
            reader, writer = await asyncio.open_connection(HOST, 8080, local_addr=(PEER, 0))
        socks[8080].settimeout(2)
        kept, addr = socks[8080].accept()
        while addr[1] != writer.get_extra_info("sockname")[1]:  # skip the knock's connection
            kept.close()
            kept, addr = socks[8080].accept()

        await apply_spec(host, Firewall(policy="drop"))
        with peer.entered():
            assert await knock(8080, timeout=0.3) == "silent"  # no SYN-ACK, no RST
            outcomes = await knock_all([16509, *EPHEMERAL])
            assert await IcmpProbe(HOST).check()
            # ICMPv6 passes, and with it neighbour discovery, which IPv6 needs for anything
            assert await IcmpProbe(HOST6).check()
            assert await knock(16509, src=PEER6, dst=HOST6) == "open"
            assert await knock(8080, src=PEER6, dst=HOST6, timeout=0.3) == "silent"
            # the connection made before the switch still flows both ways
            writer.write(b"hi")
            await writer.drain()
            kept.settimeout(2)
            assert kept.recv(2) == b"hi"
            kept.sendall(b"ok")
            assert await asyncio.wait_for(reader.readexactly(2), 2) == b"ok"
        assert {p: o for p, o in outcomes.items() if o != "open"} == {}
        kept.close()
        writer.close()

        await apply_spec(host, Firewall(policy="accept"))
        with peer.entered():
            assert await knock(8080) == "open"
            assert await knock(8081, timeout=0.5) == "refused"  # reaches the host's stack


async def test_sources_limit_who_may_connect(lab: tuple[Namespace, Namespace]) -> None:
    host, peer = lab
    fw = Firewall.model_validate({"policy": "drop", "sources": [f"{PEER}/32", "fd00::/64"]})
    with listening(host, [16509]):
        await apply_spec(host, fw)
        with peer.entered():
            assert await knock(16509, src=PEER) == "open"
            assert await knock(16509, src=OTHER, timeout=0.3) == "silent"
            assert await IcmpProbe(HOST).check()  # ICMP is not limited by sources


FOREIGN = """
table inet othertool {
    chain c { type filter hook input priority 0; policy accept; tcp dport 9999 accept; }
}
table ip filter {
    chain INPUT { type filter hook input priority 0; policy accept; ip saddr 192.0.2.1 drop; }
}
"""


async def test_foreign_tables_idempotence_drift_and_revert(
    lab: tuple[Namespace, Namespace],
) -> None:
    host, _ = lab
    with host.entered():
        assert nftables.Nftables().cmd(FOREIGN)[0] == 0
    foreign = [("inet", "othertool"), ("ip", "filter")]
    before = [listing(host, *t) for t in foreign]

    def foreign_untouched() -> None:
        assert [listing(host, *t) for t in foreign] == before

    res = FirewallResource(Firewall(policy="drop"))
    with host.entered():
        nothing = await res.observe()
        assert nothing is None
        await apply_spec(host, Firewall(policy="drop"))
        foreign_untouched()
        assert not await make_plan([res])  # second plan: nothing to do
        target = res.target(await res.observe())
        await res.apply(None, target)  # a forced re-apply changes nothing visible
        assert not await make_plan([res])
        foreign_untouched()

        # a rule deleted by hand is drift, in words
        ours = nftables.Nftables().json_cmd(
            {"nftables": [{"list": {"table": {"family": "inet", "name": TABLE}}}]}
        )[1]["nftables"]
        (invalid,) = [o["rule"] for o in ours if "invalid" in json.dumps(o.get("rule", {}))]
        delete = {"family": "inet", "table": TABLE, "chain": "input", "handle": invalid["handle"]}
        assert nftables.Nftables().json_cmd({"nftables": [{"delete": {"rule": delete}}]})[0] == 0
        plan = await make_plan([res])
        assert [c.detail for c in plan.changes] == ["+ rule ct state invalid drop"]
        assert await res.verify(target)
        drifted = await res.observe()

        # a batch the kernel refuses changes nothing
        assert drifted is not None
        broken = replace(drifted, rules=(*drifted.rules, '{"expr":[{"match":{"op":"==",'
                         '"left":{"payload":{"protocol":"tcp","field":"dport"}},'
                         '"right":"@nope"}},{"accept":null}]}'))  # fmt: skip
        with pytest.raises(ResourceError, match="nft"):
            write_table(broken)
        assert read_table() == drifted

        await res.apply(drifted, target)
        assert not await make_plan([res])
        await res.revert(drifted)  # a snapshot comes back exactly, drift included
        assert await res.observe() == drifted
        await res.revert(nothing)  # and "no table" is a snapshot too
        assert await res.observe() is None
        assert not await res.verify(None)
        foreign_untouched()
