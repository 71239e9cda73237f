"""Would CloudStack's own KVM agent start on this host and work? (``csboot check --cloudstack``)

What the agent does, read from apache/cloudstack:

- ``LibvirtComputingResource.configure`` reads ``public.network.device`` (default
  ``cloudbr0``), ``private.network.device`` (default ``cloudbr1``), ``guest.network.device``
  (default: the private device) and ``network.bridge.type`` (``native`` unless
  ``openvswitch``); ``storage.network.device`` is optional.
- ``ServerResourceBase.configure`` takes the host's IP from the private device
  (``NetUtils.getNetworkParams``) and refuses to start without an IPv4 address there
  ("Incorrect details for private Nic"); that address is the host as the management
  server sees it, so the route to the management server must leave through that device.
- For each bridge it looks for the physical interface beneath (``getPif``/``getOvsPif``):
  a port of the bridge (for an OVS fake bridge, of its parent) whose name matches its
  interface name patterns (eth*, bond*, vlan*, ens*, ...).
- The management server reaches libvirtd on the port ``libvirtd.conf`` gives.

``gather`` is the imperative shell (agent.properties and libvirtd.conf under the file root,
netlink, OVSDB, /proc/net/tcp, our nftables table); ``evaluate`` is pure. Every failing
check names the agent.properties key and the device.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import ipaddress
import socket
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from bootstrap.engine.check import Check
from bootstrap.errors import BootstrapError
from bootstrap.host.root import HostRoot
from bootstrap.model.names import CLOUDSTACK_NIC_PATTERN
from bootstrap.netlink import AsyncIPRoute

__all__ = ["AgentFacts", "Link", "OvsView", "evaluate", "gather", "run_cloudstack_checks"]

AGENT_PROPERTIES = "/etc/cloudstack/agent/agent.properties"
LIBVIRTD_CONF = "/etc/libvirt/libvirtd.conf"
DEFAULTS = {"public.network.device": "cloudbr0", "private.network.device": "cloudbr1"}
DEFAULT_TCP_PORT = 16509
DEFAULT_TLS_PORT = 16514
DIAG_TIMEOUT = 2.0  # seconds for the kernel to answer a sock_diag dump (it does at once)


@dataclass(frozen=True, slots=True)
class Link:
    name: str
    kind: str  # "bridge", "openvswitch", "vlan", "device", "veth", ...
    ipv4: tuple[str, ...] = ()
    ports: tuple[str, ...] = ()  # a Linux bridge's ports


@dataclass(frozen=True, slots=True)
class OvsView:
    bridges: dict[str, tuple[str, ...]]  # bridge -> its non-internal, non-fake port names
    fake_parents: dict[str, str]  # fake bridge -> the bridge it is a VLAN of


@dataclass(frozen=True, slots=True)
class AgentFacts:
    properties: dict[str, str]
    links: dict[str, Link]
    ovs: OvsView | None
    management_target: str | None  # what the route check aims at
    route_oif: str | None  # where the kernel sends traffic for it
    libvirt_port: int | None  # None: libvirt listens on no TCP port by its configuration
    listening: frozenset[int]
    firewall_policy: str | None  # our nftables table's policy; None without our table
    firewall_allows: tuple[tuple[int, int], ...] = field(default=())


def device(props: dict[str, str], key: str) -> str:
    if key == "guest.network.device":
        return props.get(key) or device(props, "private.network.device")
    return props.get(key) or DEFAULTS.get(key, "")


# ------------------------------------------------------------------------------- pure


def evaluate(facts: AgentFacts) -> list[Check]:
    """Pure: one check per thing CloudStack's agent needs; failures name key and device."""
    props = facts.properties
    ovs = props.get("network.bridge.type", "native") == "openvswitch"
    checks = [_private(facts), _route(facts)]
    keys = ["private.network.device", "public.network.device", "guest.network.device"]
    if props.get("storage.network.device"):
        keys.append("storage.network.device")
    for key in keys:
        checks.append(_bridge(facts, key, ovs))
    checks.append(_libvirt(facts))
    return checks


def _private(facts: AgentFacts) -> Check:
    key = "private.network.device"
    name = device(facts.properties, key)
    link = facts.links.get(name)
    if link is None:
        return Check("cloudstack-private", False, f"{key}={name}: no such interface")
    if ":" in name:
        return Check("cloudstack-private", False, f"{key}={name}: ':' names an alias, not a NIC")
    if not link.ipv4:
        return Check(
            "cloudstack-private",
            False,
            f"{key}={name} holds no IPv4 address: the agent stops with "
            "'Incorrect details for private Nic'",
        )
    return Check("cloudstack-private", True, f"{key}={name} holds {', '.join(link.ipv4)}")


def _route(facts: AgentFacts) -> Check:
    key = "private.network.device"
    name = device(facts.properties, key)
    if facts.management_target is None:
        return Check("cloudstack-private-route", True, "no management server or gateway known")
    if facts.route_oif == name:
        return Check(
            "cloudstack-private-route", True, f"{facts.management_target} is reached via {name}"
        )
    return Check(
        "cloudstack-private-route",
        False,
        f"{key}={name}: the management side {facts.management_target} is reached via "
        f"{facts.route_oif or 'no route'}, not {name}",
    )


def _bridge(facts: AgentFacts, key: str, ovs: bool) -> Check:
    name = device(facts.properties, key)
    kind = key.split(".", maxsplit=1)[0]
    check = f"cloudstack-{kind}" + ("-bridge" if kind == "private" else "")
    link = facts.links.get(name)
    if link is None:
        return Check(check, False, f"{key}={name}: no such interface")
    pif = _pif(facts, name, link, ovs)
    if isinstance(pif, str) and pif.startswith("!"):
        return Check(check, False, f"{key}={name}: {pif[1:]}")
    return Check(check, True, f"{key}={name}, physical interface {pif}")


def _pif(facts: AgentFacts, name: str, link: Link, ovs: bool) -> str:
    """The physical interface CloudStack finds under bridge ``name``; ``!why`` if none."""
    if ovs:
        view = facts.ovs
        if view is None:
            return "!network.bridge.type=openvswitch but OVSDB cannot be read"
        parent = view.fake_parents.get(name, name)
        if parent not in view.bridges:
            return f"!not an Open vSwitch bridge (kind {link.kind})"
        ports = view.bridges[parent]
    else:
        if link.kind != "bridge":
            return f"!not a Linux bridge (kind {link.kind})"
        ports = link.ports
    found = [p for p in ports if CLOUDSTACK_NIC_PATTERN.match(p)]
    if not found:
        return f"!no port CloudStack recognises as a NIC, bond or VLAN interface ({_list(ports)})"
    return found[0]


def _list(names: tuple[str, ...]) -> str:
    return ", ".join(names) or "no ports"


def _libvirt(facts: AgentFacts) -> Check:
    port = facts.libvirt_port
    if port is None:
        return Check("cloudstack-libvirt", True, "libvirt listens on no TCP port: not judged")
    problems = []
    if port not in facts.listening:
        problems.append(f"nothing listens on tcp {port}")
    if facts.firewall_policy == "drop" and not any(
        a <= port <= b for a, b in facts.firewall_allows
    ):
        problems.append(f"the firewall drops tcp {port}")
    if problems:
        return Check("cloudstack-libvirt", False, f"{LIBVIRTD_CONF}: " + "; ".join(problems))
    return Check("cloudstack-libvirt", True, f"libvirtd listens on tcp {port}")


# ------------------------------------------------------------------------------- shell


def _read(host: HostRoot, path: str) -> str:
    try:
        return host.path(path).read_bytes().decode("latin-1")
    except OSError:
        return ""


def _libvirt_port(host: HostRoot) -> int | None:
    from bootstrap.resources.conffile import values

    conf = values(_read(host, LIBVIRTD_CONF))

    def last(key: str) -> str | None:
        found = conf.get(key)
        return found[-1].strip().strip('"') if found else None

    if last("listen_tcp") == "1":
        with contextlib.suppress(ValueError):
            return int(last("tcp_port") or DEFAULT_TCP_PORT)
    if last("listen_tls") != "0" and last("listen_tls") is not None:
        with contextlib.suppress(ValueError):
            return int(last("tls_port") or DEFAULT_TLS_PORT)
    return None


def _listening() -> frozenset[int]:
    """TCP ports in LISTEN in this network namespace, as ``ss -ltn`` finds them: the
    kernel's socket diagnostics (sock_diag), asked for LISTEN alone, walk only the
    listening sockets. ``/proc/net/tcp`` walks every bucket of the machine's established
    table however few sockets there are: 8-17 ms a call on this 24 GiB machine (sock_diag:
    0.2 ms), in every agent's check after every apply. /proc stays the fallback (a kernel
    without ``inet_diag``).

    pyroute2's message classes over a plain socket, not its ``DiagSocket``: that one runs
    an event loop of its own (this is called from the agent's), and a worker thread would
    not be in the caller's namespace (the simulator's batch enters one per host)."""
    from pyroute2.netlink import NETLINK_SOCK_DIAG, NLM_F_DUMP, NLM_F_REQUEST
    from pyroute2.netlink.diag import SOCK_DIAG_BY_FAMILY, SS_LISTEN, inet_diag_req

    ports: set[int] = set()
    try:
        with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_SOCK_DIAG) as sock:
            sock.settimeout(DIAG_TIMEOUT)
            for seq, family in enumerate((socket.AF_INET, socket.AF_INET6), 1):
                req = inet_diag_req()
                req["header"]["type"] = SOCK_DIAG_BY_FAMILY
                req["header"]["flags"] = NLM_F_REQUEST | NLM_F_DUMP
                req["header"]["sequence_number"] = seq
                req["sdiag_family"] = family
                req["sdiag_protocol"] = socket.IPPROTO_TCP
                req["idiag_states"] = 1 << SS_LISTEN
                req.encode()
                sock.send(req.data)
                ports.update(_diag_ports(sock))
    except OSError:
        return _listening_from_proc()
    return frozenset(ports)


def _diag_ports(sock: socket.socket) -> Iterator[int]:
    """The local ports of one sock_diag dump's answers, up to its NLMSG_DONE."""
    from pyroute2.netlink import NLMSG_DONE, NLMSG_ERROR
    from pyroute2.netlink.diag import inet_diag_msg

    while True:
        data = sock.recv(65536)
        offset = 0
        while offset + 16 <= len(data):
            length, kind = struct.unpack_from("=IH", data, offset)
            if kind == NLMSG_DONE:
                return
            if kind == NLMSG_ERROR:
                (code,) = struct.unpack_from("=i", data, offset + 16)
                raise OSError(-code, "sock_diag refused the dump")
            if length < 16 or offset + length > len(data):
                raise OSError(errno.EPROTO, "sock_diag: a malformed answer")
            msg = inet_diag_msg(data[offset : offset + length])
            msg.decode()
            yield int(msg["idiag_sport"])
            offset += (length + 3) & ~3


def _listening_from_proc() -> frozenset[int]:
    """The same from ``/proc/net/tcp{,6}`` (they follow the reader's netns)."""
    ports: set[int] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                if len(fields) > 3 and fields[3] == "0A":
                    ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return frozenset(ports)


async def _links_and_route(target: str | None) -> tuple[dict[str, Link], str | None, str | None]:
    async with AsyncIPRoute() as ipr:
        msgs = [m async for m in await ipr.link("dump")]
        names = {m["index"]: m.get("ifname") for m in msgs}
        ipv4: dict[int, list[str]] = {}
        async for a in await ipr.addr("dump", family=2):
            ipv4.setdefault(a["index"], []).append(f"{a.get('address')}/{a['prefixlen']}")
        gateway: str | None = None
        async for r in await ipr.route("dump", family=2, table=254):
            if r["dst_len"] == 0 and r.get("gateway") and gateway is None:
                gateway = r.get("gateway")
        target = target or gateway
        oif: str | None = None
        if target is not None:
            with contextlib.suppress(Exception):
                (route,) = await ipr.route("get", dst=target)
                oif = names.get(route.get("oif"))
    links: dict[str, Link] = {}
    for m in msgs:
        kind = str(m.get(("linkinfo", "kind")) or "device")
        ports = tuple(sorted(names[p["index"]] for p in msgs if p.get("master") == m["index"]))
        addresses = tuple(ipv4.get(m["index"], ()))
        links[m.get("ifname")] = Link(
            m.get("ifname"), kind, addresses, ports if kind == "bridge" else ()
        )
    return links, target, oif


def _ovs_view(host: HostRoot) -> OvsView | None:
    from bootstrap.resources.ovsdb import OvsdbError, connect

    try:
        with connect(host.ovsdb_socket, timeout=5.0) as client:
            bridges: dict[str, tuple[str, ...]] = {}
            parents: dict[str, str] = {}
            for row in client.rows("Bridge"):
                plain = []
                for port in row.ports:
                    if port.fake_bridge:
                        parents[port.name] = row.name
                    elif port.name != row.name:
                        plain.append(port.name)
                bridges[row.name] = tuple(sorted(plain))
            return OvsView(bridges, parents)
    except OvsdbError:
        return None


def _management_target(props: dict[str, str]) -> str | None:
    """The management server named by agent.properties' ``host`` (an address), if any."""
    for candidate in props.get("host", "").split(","):
        with contextlib.suppress(ValueError):
            return str(ipaddress.IPv4Address(candidate.strip()))
    return None


async def gather(host: HostRoot) -> AgentFacts:
    from bootstrap.resources.firewall import read_table
    from bootstrap.resources.properties import parse

    props = parse(_read(host, AGENT_PROPERTIES)).mapping()
    links, target, oif = await _links_and_route(_management_target(props))
    ovs = None
    if props.get("network.bridge.type") == "openvswitch":
        ovs = await asyncio.to_thread(_ovs_view, host)
    policy: str | None = None
    allows: tuple[tuple[int, int], ...] = ()
    with contextlib.suppress(BootstrapError):
        if (table := read_table()) is not None:
            policy, allows = table.policy, tuple((s[0], s[1]) for s in table.allow_tcp)
    return AgentFacts(
        properties=props,
        links=links,
        ovs=ovs,
        management_target=target,
        route_oif=oif,
        libvirt_port=_libvirt_port(host),
        listening=_listening(),
        firewall_policy=policy,
        firewall_allows=allows,
    )


async def run_cloudstack_checks(host: HostRoot) -> list[Check]:
    return evaluate(await gather(host))
