"""The host's management address and its default route: the first-contact move.

At install time the management address sits wherever the installer left it (often
untagged on the uplink, eth0). The seed's layout wants it on the management VLAN
(mgmt0 on the OVS trunk, or eth0.100 natively). This resource observes *where the
address is now* and moves it: add on the new interface, remove from the old one(s),
then replace the default route. Revert is the same move backwards, from the snapshot.

Ownership: the address is identified by its IP (any prefix length, on any interface), so
we find it wherever it is; nothing else on any interface is touched. The address and
the default route we add carry protocol number ``PROTO`` (77, "csboot": IFA_PROTO on the
address, rtm_protocol on the route) so ``ip addr``/``ip route`` show what is ours. Default
routes we replace: ours, those via the management gateway, and those on interfaces the
address leaves or arrives on; any other default route (another NIC, another metric) stays.
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass
from errno import EADDRNOTAVAIL, ENODEV, ESRCH
from typing import Any, ClassVar

from bootstrap.engine.resource import Change, Resource
from bootstrap.errors import ResourceError
from bootstrap.netlink import AsyncIPRoute, get_link, wait_link

__all__ = ["PROTO", "AddressState", "DefaultRoute", "ManagementAddress", "Placement"]

IPInterface = ipaddress.IPv4Interface | ipaddress.IPv6Interface
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

PROTO = 77
"""Our mark on addresses (IFA_PROTO) and routes (rtm_protocol): 'csboot'."""
MAIN_TABLE = 254
IFA_F_NODAD = 0x02
IFF_UP = 0x1
RTNH_F_ONLINK = 0x4


@dataclass(frozen=True, slots=True)
class Placement:
    """The address as found on one interface."""

    ifname: str
    address: IPInterface

    def __str__(self) -> str:
        return f"{self.address} on {self.ifname}"


@dataclass(frozen=True, slots=True)
class DefaultRoute:
    gateway: IPAddress | None
    ifname: str | None
    metric: int = 0
    proto: int = PROTO
    onlink: bool = False  # RTNH_F_ONLINK: the gateway is taken as on the link, as written

    def __str__(self) -> str:
        via = f"via {self.gateway} " if self.gateway else ""
        onlink = " onlink" if self.onlink else ""
        return f"default {via}dev {self.ifname or '?'} metric {self.metric}{onlink}"


@dataclass(frozen=True, slots=True)
class AddressState:
    placements: tuple[Placement, ...] = ()
    routes: tuple[DefaultRoute, ...] = ()


def _sorted_placements(items: list[Placement]) -> tuple[Placement, ...]:
    return tuple(sorted(set(items), key=lambda p: (p.ifname, str(p.address))))


def _sorted_routes(items: list[DefaultRoute]) -> tuple[DefaultRoute, ...]:
    return tuple(sorted(set(items), key=lambda r: (r.metric, str(r.ifname), str(r.gateway))))


def target_state(
    current: AddressState, ifname: str, address: IPInterface, gateway: IPAddress | None
) -> AddressState:
    """Pure: the address only on ``ifname``; our default route replaces the ones we own."""
    placements = (Placement(ifname, address),)
    if gateway is None:
        return AddressState(placements, current.routes)
    touched = {p.ifname for p in current.placements} | {ifname}
    kept = [
        r
        for r in current.routes
        if r.proto != PROTO and r.gateway != gateway and r.ifname not in touched
    ]
    metric = 0 if address.version == 4 else 1024  # what the kernel stores for "no metric"
    ours = DefaultRoute(gateway, ifname, metric)
    return AddressState(placements, _sorted_routes([*kept, ours]))


def diff_states(
    name: str, route_name: str, current: AddressState, target: AddressState
) -> list[Change]:
    """Pure: a move reads as one line ("from eth0 to mgmt0"), not as a delete and a create."""
    changes: list[Change] = []
    gone = [p for p in current.placements if p not in target.placements]
    new = [p for p in target.placements if p not in current.placements]
    if gone and new:
        changes.append(
            Change(
                name,
                "modify",
                f"move {', '.join(map(str, gone))} to {', '.join(map(str, new))}",
            )
        )
    elif new:
        changes.append(Change(name, "create", ", ".join(map(str, new))))
    elif gone:
        changes.append(Change(name, "delete", ", ".join(map(str, gone))))

    def same(r: DefaultRoute) -> tuple[object, ...]:
        return (r.gateway, r.ifname, r.metric)  # proto and flags are how it was made

    gone_routes = [r for r in current.routes if r not in target.routes]
    new_routes = [r for r in target.routes if r not in current.routes]
    marked = {same(r) for r in new_routes if r.proto == PROTO} & {same(r) for r in gone_routes}
    for r in gone_routes:
        if same(r) not in marked:
            changes.append(Change(route_name, "delete", str(r)))
    for r in new_routes:
        if same(r) in marked:  # the operator's own route, now marked ours
            changes.append(Change(route_name, "adopt", str(r)))
        else:
            changes.append(Change(route_name, "create", str(r)))
    return changes


def _ifname(index: int) -> str | None:
    """The name of link ``index`` in this thread's namespace (the netlink socket's too):
    one ioctl, where a link dump decoded every attribute of every link for one name."""
    try:
        return socket.if_indextoname(index)
    except OSError:
        return None


class ManagementAddress(Resource[AddressState]):
    """``address`` on ``ifname`` and, when ``gateway`` is set, the default route via it."""

    network = True  # can cut a network path

    state_type: ClassVar[Any] = AddressState

    def __init__(
        self,
        ifname: str,
        address: IPInterface,
        gateway: IPAddress | None,
        *,
        timeout: float = 10.0,
    ) -> None:
        if gateway is not None and gateway.version != address.version:
            raise ValueError(f"gateway {gateway} is not an IPv{address.version} address")
        self.ifname = ifname
        self.address = address
        self.gateway = gateway
        self.timeout = timeout

    @property
    def name(self) -> str:
        return f"address/{self.address.ip}"

    @property
    def family(self) -> int:
        return socket.AF_INET if self.address.version == 4 else socket.AF_INET6

    async def observe(self) -> AddressState:
        async with AsyncIPRoute() as ipr:
            return await self._observe(ipr)

    def target(self, current: AddressState) -> AddressState:
        return target_state(current, self.ifname, self.address, self.gateway)

    def diff(self, current: AddressState, target: AddressState) -> list[Change]:
        route = "route/default" if self.address.version == 4 else "route/default-v6"
        return diff_states(self.name, route, current, target)

    async def apply(self, current: AddressState, target: AddressState) -> None:
        """Add first, then remove, then routes: the host is never without the address."""
        del current  # the host may have moved on since the plan: act on a fresh look
        async with AsyncIPRoute() as ipr:
            now = await self._observe(ipr)
            for p in target.placements:
                if p not in now.placements:
                    await self._add_address(ipr, await self._wait_link(ipr, p.ifname), p.address)
            removed = [p for p in now.placements if p not in target.placements]
            for p in removed:
                old = await self._index(ipr, p.ifname)
                if old is not None:
                    await self._call(
                        ipr.addr(
                            "del",
                            index=old,
                            address=str(p.address.ip),
                            prefixlen=p.address.network.prefixlen,
                        ),
                        f"remove {p}",
                        ok=(EADDRNOTAVAIL, ENODEV),
                    )
            if removed:  # removing an address can take routes with it: look again
                now = await self._observe(ipr)
            for r in now.routes:
                if r not in target.routes:
                    await self._route(ipr, "del", r)
            for r in target.routes:
                if r not in now.routes:
                    await self._route(ipr, "replace", r)

    # -- netlink --------------------------------------------------------------------------

    async def _observe(self, ipr: Any) -> AddressState:
        placements: list[Placement] = []
        async for msg in await ipr.addr("dump", family=self.family):
            ip = msg.get("local") or msg.get("address")
            if ip is None or ipaddress.ip_address(ip) != self.address.ip:
                continue
            iface = ipaddress.ip_interface(f"{ip}/{msg['prefixlen']}")
            placements.append(Placement(_ifname(msg["index"]) or "?", iface))
        routes: list[DefaultRoute] = []
        async for msg in await ipr.route("dump", family=self.family, table=MAIN_TABLE):
            if msg["dst_len"] != 0 or msg["type"] != 1:  # default, unicast
                continue
            gw = msg.get("gateway")
            oif = msg.get("oif")
            routes.append(
                DefaultRoute(
                    ipaddress.ip_address(gw) if gw else None,
                    _ifname(oif) if oif is not None else None,
                    int(msg.get("priority") or 0),
                    int(msg["proto"]),
                    bool(msg["flags"] & RTNH_F_ONLINK),
                )
            )
        return AddressState(_sorted_placements(placements), _sorted_routes(routes))

    async def _index(self, ipr: Any, ifname: str) -> int | None:
        link = await get_link(ipr, ifname=ifname)
        return None if link is None else int(link["index"])

    async def _wait_link(self, ipr: Any, ifname: str) -> int:
        """The interface may be appearing right now (an OVS internal port): wait, bring up."""
        link = await wait_link(ipr, ifname, self.timeout)
        if link is None:
            raise ResourceError(f"interface {ifname} does not exist", resource=self.name)
        index: int = link["index"]
        if not link["flags"] & IFF_UP:
            await self._call(ipr.link("set", index=index, state="up"), f"set {ifname} up")
        return index

    async def _add_address(self, ipr: Any, index: int, address: IPInterface) -> None:
        extra: dict[str, Any] = {"proto": PROTO}
        if address.version == 4:
            extra["broadcast"] = str(address.network.broadcast_address)
        else:
            extra["flags"] = IFA_F_NODAD  # no DAD wait: the move must not stall
        await self._call(
            ipr.addr(
                "add",
                index=index,
                address=str(address.ip),
                prefixlen=address.network.prefixlen,
                **extra,
            ),
            f"add {address}",
        )

    async def _route(self, ipr: Any, command: str, route: DefaultRoute) -> None:
        spec: dict[str, Any] = {
            "dst": "::/0" if self.address.version == 6 else "0.0.0.0/0",
            "family": self.family,
            "table": MAIN_TABLE,
            "priority": route.metric,
            "proto": route.proto,
        }
        if route.gateway is not None:
            spec["gateway"] = str(route.gateway)
        if route.onlink:
            spec["flags"] = RTNH_F_ONLINK
        if route.ifname is not None:
            index = await self._index(ipr, route.ifname)
            if index is None:
                if command == "del":
                    return  # the interface (and so the route) is gone already
                raise ResourceError(f"no interface {route.ifname} for {route}", resource=self.name)
            spec["oif"] = index
        ok = (ESRCH, ENODEV) if command == "del" else ()
        await self._call(ipr.route(command, **spec), f"{command} {route}", ok=ok)

    async def _call(self, request: Any, what: str, *, ok: tuple[int, ...] = ()) -> None:
        """Run one netlink request; ``ok`` errnos mean "already so" (idempotent deletes)."""
        try:
            await request
        except Exception as exc:
            if getattr(exc, "code", None) in ok:
                return
            raise ResourceError(f"{what}: {exc}", resource=self.name) from exc
