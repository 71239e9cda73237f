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

import errno
from typing import Any, ClassVar, TypeVar

from pyroute2 import AsyncIPRoute, NetlinkError

from bootstrap.engine.resource import Change, Resource
from bootstrap.errors import ResourceError
from bootstrap.host.root import HostRoot
from bootstrap.model.spec import Network
from bootstrap.resources.native_state import (
    MARK,
    BridgeState,
    LinkState,
    UplinkState,
    VlanState,
    bridge_changes,
    bridge_settings,
    layout,
    link_settings,
    mismatch,
    uplink_changes,
    vlan_changes,
)

__all__ = ["BridgeResource", "StaleLinks", "UplinkResource", "VlanResource", "native_resources"]

IFF_UP = 0x1
_L = TypeVar("_L", VlanState, BridgeState)


async def _get(ipr: Any, **key: Any) -> Any | None:
    """One link message by name or index; None when there is no such link."""
    try:
        (msg,) = await ipr.link("get", **key)
    except NetlinkError as exc:
        if exc.code == errno.ENODEV:
            return None
        raise
    return msg


async def _index(ipr: Any, ifname: str, resource: str) -> int:
    msg = await _get(ipr, ifname=ifname)
    if msg is None:
        raise ResourceError(f"interface {ifname} does not exist", resource=resource)
    index: int = msg["index"]
    return index


def _kind(msg: Any) -> str:
    return str(msg.get(("linkinfo", "kind")) or "device")


async def _vlan_state(ipr: Any, msg: Any) -> VlanState:
    parent = await _get(ipr, index=msg.get("link"))
    return VlanState(
        ifname=msg.get("ifname"),
        parent=parent.get("ifname") if parent is not None else "?",
        vlan_id=int(msg.get(("linkinfo", "data", "vlan_id"))),
        mtu=int(msg.get("mtu")),
        up=bool(msg["flags"] & IFF_UP),
        ours=msg.get("ifalias") == MARK,
    )


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
    )


async def read_link(
    ifname: str, kind: str, resource: str, managed: frozenset[str] = frozenset()
) -> VlanState | BridgeState | None:
    """The link ``ifname`` if it exists; an error naming ``resource`` if it is another kind."""
    async with AsyncIPRoute() as ipr:
        msg = await _get(ipr, ifname=ifname)
        if msg is None:
            return None
        if _kind(msg) != kind:
            raise ResourceError(
                f"{ifname} exists as a {_kind(msg)} link, not a {kind}; rename or remove it",
                resource=resource,
            )
        if kind == "vlan":
            return await _vlan_state(ipr, msg)
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
    return tuple(sorted(found, key=lambda s: (s.kind != "vlan", s.ifname)))


def _owned_target(resource: str, current: _L | None, desired: _L | None) -> _L | None:
    """Ours (or absent): the spec decides. The operator's: adopted only when it matches."""
    if current is None or current.ours:
        return desired
    if desired is None or not mismatch(current, desired):
        return current
    raise ResourceError(
        f"{current.ifname} exists but was not created by cloudstack-bootstrap (alias is not "
        f"{MARK!r}) and differs from the spec: {'; '.join(mismatch(current, desired))}; "
        "change or remove it by hand",
        resource=resource,
    )


def _refuse_foreign(resource: str, now: LinkState | None, target: LinkState | None) -> bool:
    """True when ``now`` is the operator's: only an unchanged adoption passes."""
    if now is None or now.ours:
        return False
    if target is not None and target != now:
        raise ResourceError(f"refusing to change the operator's {now.ifname}", resource=resource)
    return True


async def _set(ipr: Any, index: int, settings: dict[str, object]) -> None:
    if settings:
        await ipr.link("set", index=index, **settings)


async def converge_vlan(
    ipr: Any, resource: str, now: VlanState | None, target: VlanState | None
) -> None:
    """Take one VLAN sub-interface from ``now`` to ``target``, touching only what differs."""
    if _refuse_foreign(resource, now, target) or now == target:
        return
    master = 0
    if now is not None and (
        target is None or (now.parent, now.vlan_id) != (target.parent, target.vlan_id)
    ):
        old = await _get(ipr, ifname=now.ifname)
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
        if target.ours:  # the kernel ignores IFLA_IFALIAS on creation: set it after
            await ipr.link("set", index=index, ifalias=MARK)
        if master:  # recreated with another VLAN id: back into the bridge it was in
            await ipr.link("set", index=index, master=master)
        if target.up:
            await ipr.link("set", index=index, state="up")
        return
    await _set(ipr, await _index(ipr, now.ifname, resource), link_settings(now, target))


async def converge_bridge(
    ipr: Any, resource: str, now: BridgeState | None, target: BridgeState | None
) -> None:
    """Take one bridge from ``now`` to ``target``: attributes, VLAN ports, MTU, then up."""
    if _refuse_foreign(resource, now, target) or now == target:
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
        if target.ours:
            await ipr.link("set", index=index, ifalias=MARK)
        now = await _bridge_state(ipr, await _get(ipr, index=index), frozenset(target.ports))
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


class UplinkResource(Resource[UplinkState | None]):
    """The operator's uplink: we set its MTU and bring it up, nothing else."""

    network = True  # can cut a network path

    state_type: ClassVar[Any] = UplinkState | None

    def __init__(self, desired: UplinkState) -> None:
        self._desired = desired

    @property
    def name(self) -> str:
        return f"link/{self._desired.ifname}"

    async def observe(self) -> UplinkState | None:
        async with AsyncIPRoute() as ipr:
            msg = await _get(ipr, ifname=self._desired.ifname)
        if msg is None:
            return None
        return UplinkState(msg.get("ifname"), int(msg.get("mtu")), bool(msg["flags"] & IFF_UP))

    def target(self, current: UplinkState | None) -> UplinkState | None:
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
        return _owned_target(self.name, current, self._desired)

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
            if isinstance(now, BridgeState) or isinstance(then, BridgeState):
                bnow = now if isinstance(now, BridgeState) else None
                bthen = then if isinstance(then, BridgeState) else None
                out += bridge_changes(f"bridge/{name}", bnow, bthen)
            else:
                out += vlan_changes(f"vlan/{name}", now, then)
        return out

    async def apply(self, current: tuple[LinkState, ...], target: tuple[LinkState, ...]) -> None:
        found = {s.ifname: s for s in await self.observe()}
        wanted = {s.ifname: s for s in target}
        try:
            async with AsyncIPRoute() as ipr:
                for kind in ("bridge", "vlan"):  # bridges go first and free their ports
                    for state in found.values():
                        if state.kind == kind and state.ifname not in wanted:
                            await _converge(ipr, state, None)
                for kind in ("vlan", "bridge"):  # ports exist before their bridge
                    for state in wanted.values():
                        if state.kind == kind:
                            await _converge(ipr, found.get(state.ifname), state)
        except NetlinkError as exc:
            raise ResourceError(f"netlink: {exc}", resource=self.name) from exc


async def _converge(ipr: Any, now: LinkState | None, target: LinkState | None) -> None:
    state = target or now
    assert state is not None
    if isinstance(state, BridgeState):
        bnow = now if isinstance(now, BridgeState) else None
        bthen = target if isinstance(target, BridgeState) else None
        await converge_bridge(ipr, _resource_name(state), bnow, bthen)
    else:
        vnow = now if isinstance(now, VlanState) else None
        vthen = target if isinstance(target, VlanState) else None
        await converge_vlan(ipr, _resource_name(state), vnow, vthen)


def native_resources(network: Network, host: HostRoot) -> list[Resource[Any]]:
    """The resources of a native spec.network, in apply order (the revert runs backwards).

    ``host`` is unused: links live in the network namespace, not under the file root.
    """
    del host
    wanted = layout(network)
    out: list[Resource[Any]] = [UplinkResource(wanted.uplink)]
    ports = {p: b for b in wanted.bridges for p in b.ports}
    for vlan in wanted.vlans:
        out.append(VlanResource(vlan.ifname, vlan))
        if vlan.ifname in ports:
            out.append(BridgeResource(ports[vlan.ifname].ifname, ports[vlan.ifname]))
    if network.management is not None and wanted.management_ifname is not None:
        from bootstrap.resources.address import ManagementAddress

        mgmt = network.management
        out.append(ManagementAddress(wanted.management_ifname, mgmt.address, mgmt.gateway))
    out.append(StaleLinks(wanted.names))
    return out
