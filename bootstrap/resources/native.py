"""The native network backend: Linux bridges on VLAN sub-interfaces of the uplink, via netlink.

One resource per link: ``link/eth0`` (the operator's uplink: MTU and up only),
``vlan/eth0.100`` and ``vlan/eth0.200`` (sub-interfaces), ``bridge/cloudbr0`` (the bridge and
its VLAN port), then the management address, then ``native/stale``: links we created for an
earlier spec that this one no longer lists. The desired state and all diffs are pure
(``native_state.py``); this module only reads and writes the kernel through pyroute2.

Links are never deleted and recreated when they match: only differing attributes are set, so
a second apply changes nothing and no link flaps. Every netlink socket is opened in the
calling thread, so the whole backend acts in whichever network namespace that thread is in.
"""

from __future__ import annotations

from typing import Any, ClassVar, TypeVar

from bootstrap.engine.resource import Change, Resource
from bootstrap.errors import InvalidDocument, ResourceError
from bootstrap.host.root import HostRoot
from bootstrap.model.spec import Network
from bootstrap.netlink import AsyncIPRoute, NetlinkError, get_link
from bootstrap.resources.native_state import (
    BOND_MODES,
    LACP_RATE,
    MARK,
    XMIT_HASH,
    BondState,
    BridgeState,
    LinkState,
    UplinkState,
    VlanState,
    bond_changes,
    bridge_changes,
    bridge_settings,
    layout,
    link_settings,
    uplink_changes,
    vlan_changes,
)

__all__ = [
    "BondResource",
    "BridgeResource",
    "StaleLinks",
    "UplinkResource",
    "VlanResource",
    "native_resources",
]

IFF_UP = 0x1
_L = TypeVar("_L", VlanState, BridgeState, BondState)
_BY_NUMBER = {
    "mode": {v: k for k, v in BOND_MODES.items()},
    "xmit_hash_policy": {v: k for k, v in XMIT_HASH.items()},
    "lacp_rate": {v: k for k, v in LACP_RATE.items()},
}


async def _index(ipr: Any, ifname: str, resource: str) -> int:
    msg = await get_link(ipr, ifname=ifname)
    if msg is None:
        raise ResourceError(f"interface {ifname} does not exist", resource=resource)
    index: int = msg["index"]
    return index


def _kind(msg: Any) -> str:
    return str(msg.get(("linkinfo", "kind")) or "device")


async def _vlan_state(ipr: Any, msg: Any) -> VlanState:
    parent = await get_link(ipr, index=msg.get("link"))
    return VlanState(
        ifname=msg.get("ifname"),
        parent=parent.get("ifname") if parent is not None else "?",
        vlan_id=int(msg.get(("linkinfo", "data", "vlan_id"))),
        mtu=int(msg.get("mtu")),
        up=bool(msg["flags"] & IFF_UP),
        ours=msg.get("ifalias") == MARK,
        alias=_foreign_alias(msg),
    )


def _foreign_alias(msg: Any) -> str | None:
    """The operator's own alias (kept to give an adopted link back as it was)."""
    alias = msg.get("ifalias")
    return None if alias in (None, "", MARK) else str(alias)


async def _bridge_state(ipr: Any, msg: Any, managed: frozenset[str] | None) -> BridgeState:
    """The bridge as we see it. Of its ports only ours (marked) and the ``managed`` names
    count, so a VM's tap or a container's veth that CloudStack attached is never touched;
    ``managed`` None: every port (a bridge we are about to delete, to restore on revert)."""
    ports = [
        port.get("ifname")
        async for port in await ipr.link("dump", master=msg["index"])
        if port.get("master") == msg["index"]
        and (managed is None or port.get("ifname") in managed or port.get("ifalias") == MARK)
    ]
    return BridgeState(
        ifname=msg.get("ifname"),
        mtu=int(msg.get("mtu")),
        up=bool(msg["flags"] & IFF_UP),
        stp=bool(msg.get(("linkinfo", "data", "br_stp_state"))),
        forward_delay_cs=int(msg.get(("linkinfo", "data", "br_forward_delay"))),
        ports=tuple(sorted(ports)),
        ours=msg.get("ifalias") == MARK,
        alias=_foreign_alias(msg),
    )


async def _bond_state(ipr: Any, msg: Any) -> BondState:
    """The bond with every member (a bond's members are all the spec's business)."""

    def data(key: str) -> int:
        return int(msg.get(("linkinfo", "data", key)) or 0)

    members = [
        port.get("ifname")
        async for port in await ipr.link("dump", master=msg["index"])
        if port.get("master") == msg["index"]
    ]
    return BondState(
        ifname=msg.get("ifname"),
        mode=_BY_NUMBER["mode"].get(data("bond_mode"), "?"),
        miimon=data("bond_miimon"),
        lacp_rate=_BY_NUMBER["lacp_rate"].get(data("bond_ad_lacp_rate"), "?"),
        xmit_hash_policy=_BY_NUMBER["xmit_hash_policy"].get(data("bond_xmit_hash_policy"), "?"),
        members=tuple(sorted(members)),
        mtu=int(msg.get("mtu")),
        up=bool(msg["flags"] & IFF_UP),
        ours=msg.get("ifalias") == MARK,
        alias=_foreign_alias(msg),
    )


async def read_link(
    ifname: str, kind: str, resource: str, managed: frozenset[str] = frozenset()
) -> VlanState | BridgeState | BondState | None:
    """The link ``ifname`` if it exists; an error naming ``resource`` if it is another kind."""
    async with AsyncIPRoute() as ipr:
        msg = await get_link(ipr, ifname=ifname)
        if msg is None:
            return None
        if _kind(msg) != kind:
            raise ResourceError(
                f"{ifname} exists as a {_kind(msg)} link, not a {kind}; rename or remove it",
                resource=resource,
            )
        if kind == "vlan":
            return await _vlan_state(ipr, msg)
        if kind == "bond":
            return await _bond_state(ipr, msg)
        return await _bridge_state(ipr, msg, managed)


async def read_marked(exclude: frozenset[str]) -> tuple[LinkState, ...]:
    """Every VLAN and bridge that carries our mark, except those named in ``exclude``."""
    found: list[LinkState] = []
    async with AsyncIPRoute() as ipr:
        links = [msg async for msg in await ipr.link("dump")]  # no request during a dump
        for msg in links:
            if msg.get("ifalias") != MARK or msg.get("ifname") in exclude:
                continue
            if _kind(msg) == "vlan":
                found.append(await _vlan_state(ipr, msg))
            elif _kind(msg) == "bridge":
                found.append(await _bridge_state(ipr, msg, None))
            elif _kind(msg) == "bond":
                found.append(await _bond_state(ipr, msg))
    order = {"bond": 0, "vlan": 1, "bridge": 2}
    return tuple(sorted(found, key=lambda s: (order[s.kind], s.ifname)))


def _owned_target(current: _L | None, desired: _L | None) -> _L | None:
    """Ours or absent: the spec decides. The operator's: adopted when the spec names it
    (``desired`` is marked ours), and never removed when it does not."""
    if current is not None and not current.ours and desired is None:
        return current
    return desired


async def _mark(ipr: Any, index: int, now: LinkState | None, target: LinkState) -> None:
    """Set our mark on adoption, or give the operator's alias back on a revert."""
    was = now.ours if now is not None else None
    if target.ours and was is not True:
        await ipr.link("set", index=index, ifalias=MARK)
    elif not target.ours and was is not False:
        await ipr.link("set", index=index, ifalias=target.alias or "")


async def _set(ipr: Any, index: int, settings: dict[str, object]) -> None:
    if settings:
        await ipr.link("set", index=index, **settings)


async def converge_vlan(
    ipr: Any, resource: str, now: VlanState | None, target: VlanState | None
) -> None:
    """Take one VLAN sub-interface from ``now`` to ``target``, touching only what differs."""
    if now == target:
        return
    master = 0
    if now is not None and (
        target is None or (now.parent, now.vlan_id) != (target.parent, target.vlan_id)
    ):
        old = await get_link(ipr, ifname=now.ifname)
        if old is not None:
            master = old.get("master") or 0
            await ipr.link("del", index=old["index"])
        now = None
    if target is None:
        return
    if now is None:
        await ipr.link(
            "add",
            ifname=target.ifname,
            kind="vlan",
            link=await _index(ipr, target.parent, resource),
            vlan_id=target.vlan_id,
            mtu=target.mtu,
        )
        index = await _index(ipr, target.ifname, resource)
        # the kernel ignores IFLA_IFALIAS on creation: set it after
        if target.ours or target.alias:
            await _mark(ipr, index, None, target)
        if master:  # recreated with another VLAN id: back into the bridge it was in
            await ipr.link("set", index=index, master=master)
        if target.up:
            await ipr.link("set", index=index, state="up")
        return
    index = await _index(ipr, now.ifname, resource)
    await _set(ipr, index, link_settings(now, target))
    await _mark(ipr, index, now, target)


async def converge_bridge(
    ipr: Any, resource: str, now: BridgeState | None, target: BridgeState | None
) -> None:
    """Take one bridge from ``now`` to ``target``: attributes, VLAN ports, MTU, then up."""
    if now == target:
        return
    if target is None:
        if now is not None:
            await ipr.link("del", index=await _index(ipr, now.ifname, resource))
        return
    if now is None:
        await ipr.link(
            "add",
            ifname=target.ifname,
            kind="bridge",
            br_stp_state=int(target.stp),
            br_forward_delay=target.forward_delay_cs,
        )
        index = await _index(ipr, target.ifname, resource)
        if target.ours or target.alias:
            await _mark(ipr, index, None, target)
        now = await _bridge_state(ipr, await get_link(ipr, index=index), frozenset(target.ports))
    index = await _index(ipr, target.ifname, resource)
    await _set(ipr, index, bridge_settings(now, target))
    for port in target.ports:
        if port not in now.ports:
            await ipr.link("set", index=await _index(ipr, port, resource), master=index)
    for port in now.ports:
        if port not in target.ports:
            await ipr.link("set", index=await _index(ipr, port, resource), master=0)
    # after the ports: an MTU set explicitly is kept when ports join (not auto-adjusted)
    await _set(ipr, index, link_settings(now, target))
    await _mark(ipr, index, now, target)


def bond_settings(target: BondState) -> dict[str, object]:
    """Pure: pyroute2 ``link add``/``set`` arguments for a bond's settings."""
    return {
        "kind": "bond",
        "bond_mode": BOND_MODES[target.mode],
        "bond_miimon": target.miimon,
        "bond_ad_lacp_rate": LACP_RATE[target.lacp_rate],
        "bond_xmit_hash_policy": XMIT_HASH[target.xmit_hash_policy],
    }


async def converge_bond(
    ipr: Any, resource: str, now: BondState | None, target: BondState | None
) -> None:
    """Take one bond from ``now`` to ``target``. A new mode means a new bond (the kernel
    changes it only on an empty, down bond): members are released and enslaved again."""
    if now == target:
        return
    if now is not None and (target is None or now.mode != target.mode):
        old = await get_link(ipr, ifname=now.ifname)
        if old is not None:
            await ipr.link("del", index=old["index"])  # releases every member
        now = None
    if target is None:
        return
    if now is None:
        await ipr.link("add", ifname=target.ifname, **bond_settings(target))
        index = await _index(ipr, target.ifname, resource)
        if target.ours or target.alias:
            await _mark(ipr, index, None, target)
        now = await _bond_state(ipr, await get_link(ipr, index=index))
    index = await _index(ipr, target.ifname, resource)
    if any(
        getattr(now, k) != getattr(target, k) for k in ("miimon", "lacp_rate", "xmit_hash_policy")
    ):
        settings = bond_settings(target)
        del settings["bond_mode"]
        await ipr.link("set", index=index, **settings)
    for member in now.members:
        if member not in target.members:
            await ipr.link("set", index=await _index(ipr, member, resource), master=0)
    for member in target.members:
        if member not in now.members:
            m = await _index(ipr, member, resource)
            await ipr.link("set", index=m, state="down")  # the kernel enslaves only down links
            await ipr.link("set", index=m, master=index)
            await ipr.link("set", index=m, state="up")
    await _set(ipr, index, link_settings(now, target))  # the MTU reaches every member
    await _mark(ipr, index, now, target)


class UplinkResource(Resource[UplinkState | None]):
    """The operator's uplink: we set its MTU and bring it up, nothing else."""

    network = True  # can cut a network path

    state_type: ClassVar[Any] = UplinkState | None

    def __init__(self, desired: UplinkState, *, field: str | None = None) -> None:
        self._desired = desired
        self._field = field  # where the spec names it, for an error that says so

    @property
    def name(self) -> str:
        return f"link/{self._desired.ifname}"

    async def observe(self) -> UplinkState | None:
        async with AsyncIPRoute() as ipr:
            msg = await get_link(ipr, ifname=self._desired.ifname)
        if msg is None:
            return None
        return UplinkState(msg.get("ifname"), int(msg.get("mtu")), bool(msg["flags"] & IFF_UP))

    def target(self, current: UplinkState | None) -> UplinkState | None:
        if current is None and self._field is not None:
            raise InvalidDocument(
                f"{self._desired.ifname} does not exist on this host", field=self._field
            )
        if current is None:
            raise ResourceError(
                f"the uplink {self._desired.ifname} does not exist", resource=self.name
            )
        return self._desired

    def diff(self, current: UplinkState | None, target: UplinkState | None) -> list[Change]:
        if current is None or target is None:
            return []
        return uplink_changes(self.name, current, target)

    async def apply(self, current: UplinkState | None, target: UplinkState | None) -> None:
        now = await self.observe()
        if now is None or target is None:
            return
        async with AsyncIPRoute() as ipr:
            await _set(ipr, await _index(ipr, now.ifname, self.name), link_settings(now, target))


class _OwnedLink(Resource[_L | None]):
    """A link we create and own by name; ``desired`` None removes it if it is ours."""

    network = True  # can cut a network path

    kind: ClassVar[str]

    def __init__(self, ifname: str, desired: _L | None) -> None:
        self._ifname = ifname
        self._desired: _L | None = desired

    @property
    def name(self) -> str:
        return f"{self.kind}/{self._ifname}"

    def target(self, current: _L | None) -> _L | None:
        return _owned_target(current, self._desired)

    async def apply(self, current: _L | None, target: _L | None) -> None:
        now = await self.observe()  # act on what is there now, not on the plan's look
        try:
            async with AsyncIPRoute() as ipr:
                await _converge(ipr, now, target)
        except NetlinkError as exc:
            raise ResourceError(f"netlink: {exc}", resource=self.name) from exc


class VlanResource(_OwnedLink[VlanState]):
    """One VLAN sub-interface of the uplink."""

    state_type: ClassVar[Any] = VlanState | None
    kind = "vlan"

    async def observe(self) -> VlanState | None:
        state = await read_link(self._ifname, "vlan", self.name)
        assert state is None or isinstance(state, VlanState)
        return state

    def diff(self, current: VlanState | None, target: VlanState | None) -> list[Change]:
        return vlan_changes(self.name, current, target)


class BondResource(_OwnedLink[BondState]):
    """One bond of NICs; VLAN interfaces and bridges sit on it as on a NIC."""

    state_type: ClassVar[Any] = BondState | None
    kind = "bond"

    async def observe(self) -> BondState | None:
        state = await read_link(self._ifname, "bond", self.name)
        assert state is None or isinstance(state, BondState)
        return state

    def diff(self, current: BondState | None, target: BondState | None) -> list[Change]:
        return bond_changes(self.name, current, target)


class BridgeResource(_OwnedLink[BridgeState]):
    """One bridge with its VLAN port."""

    state_type: ClassVar[Any] = BridgeState | None
    kind = "bridge"

    async def observe(self) -> BridgeState | None:
        ports = frozenset(self._desired.ports if self._desired else ())
        state = await read_link(self._ifname, "bridge", self.name, ports)
        assert state is None or isinstance(state, BridgeState)
        return state

    def diff(self, current: BridgeState | None, target: BridgeState | None) -> list[Change]:
        return bridge_changes(self.name, current, target)


def _resource_name(state: LinkState) -> str:
    return f"{state.kind}/{state.ifname}"


class StaleLinks(Resource[tuple[LinkState, ...]]):
    """Links we created for an earlier spec that this one no longer lists: removed.

    Runs last, so a VLAN that moved to another bridge has left the old one first; its
    snapshot keeps the links it removes, so a revert recreates them.
    """

    network = True  # can cut a network path

    state_type: ClassVar[Any] = tuple[LinkState, ...]

    def __init__(self, keep: frozenset[str]) -> None:
        self._keep = keep

    @property
    def name(self) -> str:
        return "native/stale"

    async def observe(self) -> tuple[LinkState, ...]:
        return await read_marked(self._keep)

    def target(self, current: tuple[LinkState, ...]) -> tuple[LinkState, ...]:
        return ()

    def diff(self, current: tuple[LinkState, ...], target: tuple[LinkState, ...]) -> list[Change]:
        wanted = {s.ifname: s for s in target}
        found = {s.ifname: s for s in current}
        out: list[Change] = []
        for name in sorted(wanted.keys() | found.keys()):
            now, then = found.get(name), wanted.get(name)
            either = now or then
            assert either is not None
            kind = either.kind
            if kind == "bridge":
                out += bridge_changes(
                    f"bridge/{name}", _as(BridgeState, now), _as(BridgeState, then)
                )
            elif kind == "bond":
                out += bond_changes(f"bond/{name}", _as(BondState, now), _as(BondState, then))
            else:
                out += vlan_changes(f"vlan/{name}", _as(VlanState, now), _as(VlanState, then))
        return out

    async def apply(self, current: tuple[LinkState, ...], target: tuple[LinkState, ...]) -> None:
        found = {s.ifname: s for s in await self.observe()}
        wanted = {s.ifname: s for s in target}
        try:
            async with AsyncIPRoute() as ipr:
                for kind in ("bridge", "vlan", "bond"):  # bridges go first and free their ports
                    for state in found.values():
                        if state.kind == kind and state.ifname not in wanted:
                            await _converge(ipr, state, None)
                for kind in ("bond", "vlan", "bridge"):  # ports exist before their bridge
                    for state in wanted.values():
                        if state.kind == kind:
                            await _converge(ipr, found.get(state.ifname), state)
        except NetlinkError as exc:
            raise ResourceError(f"netlink: {exc}", resource=self.name) from exc


_T = TypeVar("_T")


def _as(kind: type[_T], state: object) -> _T | None:
    return state if isinstance(state, kind) else None


async def _converge(ipr: Any, now: LinkState | None, target: LinkState | None) -> None:
    state = target or now
    assert state is not None
    name = _resource_name(state)
    if isinstance(state, BridgeState):
        await converge_bridge(ipr, name, _as(BridgeState, now), _as(BridgeState, target))
    elif isinstance(state, BondState):
        await converge_bond(ipr, name, _as(BondState, now), _as(BondState, target))
    else:
        await converge_vlan(ipr, name, _as(VlanState, now), _as(VlanState, target))


def native_resources(network: Network, host: HostRoot) -> list[Resource[Any]]:
    """The resources of a native spec.network, in apply order (the revert runs backwards).

    ``host`` is unused: links live in the network namespace, not under the file root.
    """
    del host
    wanted = layout(network)
    fields = network.nics()
    out: list[Resource[Any]] = [
        UplinkResource(u, field=fields.get(u.ifname)) for u in wanted.uplinks
    ]
    out += [BondResource(b.ifname, b) for b in wanted.bonds]
    vlans = {v.ifname: v for v in wanted.vlans}
    for bridge in wanted.bridges:  # each bridge right after the VLAN it enslaves
        for port in bridge.ports:
            if port in vlans:
                out.append(VlanResource(port, vlans[port]))
        out.append(BridgeResource(bridge.ifname, bridge))
    if network.management is not None and wanted.management_ifname is not None:
        from bootstrap.resources.address import ManagementAddress

        mgmt = network.management
        out.append(ManagementAddress(wanted.management_ifname, mgmt.address, mgmt.gateway))
    out.append(StaleLinks(wanted.names))
    return out
