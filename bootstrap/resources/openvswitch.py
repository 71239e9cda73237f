"""The Open vSwitch backend of ``spec.network``: the seed's trunk and fake bridges.

The seed builds, with ovs-vsctl::

    add-br cloudbr; add-port cloudbr eth0; set port eth0 trunks=100,200,300
    add-br mgmt0 cloudbr 100; add-br cloudbr0 cloudbr 200; add-br cloudbr1 cloudbr 300

We write the same rows straight into OVSDB, in ONE transaction per apply: a Bridge with
its local internal port, the uplink Port trunking every VLAN of the spec, and per VLAN a
*fake bridge*, which in OVSDB is a Port on the parent with ``tag`` = VLAN and
``fake_bridge`` = true whose Interface (same name) is ``type=internal``. Everything we
create carries ``external_ids:cloudstack-bootstrap=managed``; rows without it are never
modified or removed, and a name we need that is held by such a row is a conflict the plan
shows and the apply refuses. Existing rows are edited in place, so a re-apply never
recreates an internal port (no link flap).
"""

from __future__ import annotations

import asyncio
import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar

from bootstrap.engine.resource import Change, Resource
from bootstrap.errors import ResourceError
from bootstrap.host.root import HostRoot
from bootstrap.model.spec import Network
from bootstrap.netlink import AsyncIPRoute, get_link, wait_link
from bootstrap.resources.address import ManagementAddress
from bootstrap.resources.openvswitch_state import (
    FakeBridge,
    OvsBridge,
    OvsState,
    Uplink,
    conflicts,
    desired_bridge,
    diff_states,
)
from bootstrap.resources.ovsdb import OvsdbClient, OvsdbError, Row, Txn, connect

__all__ = ["MARK", "OpenVSwitch", "openvswitch_resources"]

MARK = {"cloudstack-bootstrap": "managed"}
BOND_OTHER_CONFIG = ("lacp-time", "bond-detect-mode", "bond-miimon-interval")
IFF_UP = 0x1


# -- OVSDB shell (blocking; runs in a worker thread) ---------------------------------------


def _ours(row: Row) -> bool:
    ext: dict[str, str] = row.external_ids
    return all(ext.get(k) == v for k, v in MARK.items())


def _opt(value: list[int]) -> int | None:
    return int(value[0]) if value else None


def _read(client: OvsdbClient, want: OvsBridge | None) -> OvsState:
    """Our bridges, and the operator's bridge the spec names (to adopt), with the ports
    that are ours or that the spec names; other ports (a VM's vif) are none of our business."""
    wanted = want.names() if want else set()
    main = want.name if want else None
    bridges: list[OvsBridge] = []
    foreign: set[str] = set()
    for row in client.rows("Bridge"):
        if not (_ours(row) or row.name == main):
            foreign |= {row.name} | {p.name for p in row.ports}
            continue
        mtu: int | None = None
        uplink: Uplink | None = None
        fakes: list[FakeBridge] = []
        for port in sorted(row.ports, key=lambda p: p.name):
            if not (_ours(port) or port.name in wanted) or not port.interfaces:
                continue
            iface_mtu = _opt(port.interfaces[0].mtu_request)
            mine = _ours(port)
            if port.name == row.name:
                mtu = iface_mtu
            elif port.fake_bridge:
                fakes.append(FakeBridge(port.name, _opt(port.tag) or 0, iface_mtu, False, mine))
            elif uplink is None:
                uplink = _read_uplink(port, iface_mtu, mine)
        bridges.append(
            OvsBridge(
                row.name,
                row.datapath_type or "system",
                mtu,
                False,
                uplink,
                tuple(fakes),
                _ours(row),
            )
        )
    return OvsState(tuple(sorted(bridges, key=lambda b: b.name)), tuple(sorted(foreign & wanted)))


def _read_uplink(port: Row, mtu: int | None, ours: bool) -> Uplink:
    other: dict[str, str] = port.other_config
    names = tuple(sorted(i.name for i in port.interfaces))
    bonded = len(names) > 1 or bool(port.bond_mode)
    miimon = other.get("bond-miimon-interval")
    return Uplink(
        port.name,
        tuple(sorted(port.trunks)),
        mtu,
        ours,
        members=names if bonded else (),
        bond_mode=port.bond_mode[0] if port.bond_mode else None,
        lacp=port.lacp[0] if port.lacp else None,
        lacp_time=other.get("lacp-time"),
        miimon=int(miimon) if miimon and miimon.isdigit() else None,
    )


def _mark(row: Row, ours: bool) -> bool:
    """Adopt (add our key) or give back (remove it); the operator's other keys stay."""
    if _ours(row) == ours:
        return False
    ext = {k: v for k, v in row.external_ids.items() if k not in MARK}
    row.external_ids = {**ext, **MARK} if ours else ext
    return True


@dataclass(frozen=True, slots=True)
class _PortSpec:
    name: str
    iface_type: str
    mtu: int | None
    ours: bool
    tag: int | None = None
    trunks: tuple[int, ...] = ()
    fake: bool = False
    local: bool = False  # the bridge's own port: its VLAN columns are not ours to set
    bond: Uplink | None = None  # a bond port: its interfaces and bond columns


def _port_specs(b: OvsBridge) -> list[_PortSpec]:
    specs = [_PortSpec(b.name, "internal", b.mtu, b.ours, local=True)]
    if b.uplink is not None:
        u = b.uplink
        specs.append(
            _PortSpec(u.name, "", u.mtu, u.ours, trunks=u.trunks, bond=u if u.members else None)
        )
    specs += [
        _PortSpec(f.name, "internal", f.mtu, f.ours, tag=f.vlan, fake=True) for f in b.fake_bridges
    ]
    return specs


def _set(row: Row, column: str, value: object) -> bool:
    """Write only what differs: unchanged columns stay out of the transaction."""
    try:
        if getattr(row, column) == value:
            return False
    except AttributeError:  # a row inserted in this transaction, column not yet written
        pass
    setattr(row, column, value)
    return True


def _new_interface(txn: Txn, name: str) -> Row:
    iface = txn.insert(txn.idl.tables["Interface"])
    iface.name = name
    iface.external_ids = dict(MARK)
    return iface


def _sync_interfaces(txn: Txn, port: Row, names: tuple[str, ...]) -> bool:
    """A bond port's interfaces become exactly ``names`` (added before any is removed)."""
    have = {i.name: i for i in port.interfaces}
    changed = False
    for name in names:
        if name not in have:
            port.addvalue("interfaces", _new_interface(txn, name))
            changed = True
    for name, iface in have.items():
        if name not in names:
            port.delvalue("interfaces", iface)
            iface.delete()
            changed = True
    return changed


def _sync_bond(port: Row, bond: Uplink | None) -> bool:
    """The bond columns, and our other_config keys (the operator's other keys stay)."""
    changed = _set(port, "bond_mode", [bond.bond_mode] if bond and bond.bond_mode else [])
    changed |= _set(port, "lacp", [bond.lacp] if bond and bond.lacp else [])
    try:
        found: dict[str, str] = dict(port.other_config)
    except AttributeError:  # a row inserted in this transaction
        found = {}
    other = {k: v for k, v in found.items() if k not in BOND_OTHER_CONFIG}
    if bond is not None:
        if bond.lacp_time:
            other["lacp-time"] = bond.lacp_time
        if bond.miimon is not None:
            other["bond-detect-mode"] = "miimon"
            other["bond-miimon-interval"] = str(bond.miimon)
    return changed | _set(port, "other_config", other)


def _sync_port(txn: Txn, bridge: Row, port: Row | None, spec: _PortSpec) -> bool:
    tables = txn.idl.tables
    changed = False
    names = spec.bond.interfaces() if spec.bond else (spec.name,)
    if port is None:
        port = txn.insert(tables["Port"])
        port.name = spec.name
        port.interfaces = [_new_interface(txn, n) for n in names]
        port.external_ids = dict(MARK)
        bridge.addvalue("ports", port)
        changed = True
    elif spec.bond is not None or len(port.interfaces) > 1:
        changed |= _sync_interfaces(txn, port, names)
    if not spec.local and not spec.fake:
        changed |= _sync_bond(port, spec.bond)
    changed |= _mark(port, spec.ours)
    if not spec.local:
        changed |= _set(port, "tag", [spec.tag] if spec.tag is not None else [])
        changed |= _set(port, "trunks", sorted(spec.trunks))
        changed |= _set(port, "fake_bridge", spec.fake)
    for iface in port.interfaces:
        changed |= _mark(iface, spec.ours)
        changed |= _set(iface, "type", spec.iface_type)
        changed |= _set(iface, "mtu_request", [spec.mtu] if spec.mtu else [])
    return changed


def _delete_port(bridge: Row, port: Row) -> None:
    bridge.delvalue("ports", port)
    for iface in port.interfaces:
        iface.delete()
    port.delete()


def _write(client: OvsdbClient, target: OvsState) -> bool:
    """One transaction: our rows become exactly ``target``; foreign rows are not touched."""

    def build(txn: Txn) -> bool:
        root = client.root()
        changed = False
        existing = {r.name: r for r in client.rows("Bridge")}
        wanted = {b.name: b for b in target.bridges}
        for name, row in existing.items():
            if _ours(row) and name not in wanted:
                # A bridge still holding ports we did not create (a VM's vif) keeps its
                # local port; verify then reports the bridge as still there.
                keep_local = any(not _ours(p) for p in row.ports)
                for port in row.ports:
                    if _ours(port) and not (keep_local and port.name == name):
                        _delete_port(row, port)
                if not keep_local:
                    root.delvalue("bridges", row)
                    row.delete()
                changed = True
        for b in target.bridges:
            row = existing.get(b.name)
            ports: dict[str, Row] = {}
            if row is None:
                row = txn.insert(txn.idl.tables["Bridge"])
                row.name = b.name
                row.external_ids = dict(MARK)
                root.addvalue("bridges", row)
                changed = True
            else:
                ports = {p.name: p for p in row.ports}
            changed |= _mark(row, b.ours)
            changed |= _set(row, "datapath_type", b.datapath)
            specs = _port_specs(b)
            for spec in specs:
                changed |= _sync_port(txn, row, ports.get(spec.name), spec)
            for pname, port in ports.items():
                if _ours(port) and pname not in {s.name for s in specs}:
                    _delete_port(row, port)
                    changed = True
        return changed

    return client.transact(build)


def _interface_names(b: OvsBridge) -> set[str]:
    """The Interface rows a bridge needs (a bond port's name is not an interface)."""
    uplink = set(b.uplink.interfaces()) if b.uplink else set()
    return {b.name, *(f.name for f in b.fake_bridges)} | uplink


def _errors(client: OvsdbClient, target: OvsState, settle: float = 10.0) -> list[str]:
    """What ovs-vswitchd made of our rows: bridges it could not open and ports it did not
    attach (no ofport) or attached with an error. Empty when all is well."""
    names = {n for b in target.bridges for n in _interface_names(b)}

    def interfaces() -> dict[str, Row]:
        return {i.name: i for i in client.rows("Interface") if i.name in names}

    def attached(iface: Row) -> bool:
        return bool(iface.ofport) and iface.ofport[0] >= 0

    # ofport is written with cur_cfg, but give a slow vswitchd time before judging: on a
    # loaded machine (100 simulated hosts on 2 cores) 2 s was not enough. It returns as soon
    # as every interface is attached or has an error, so only a silent failure waits it out.
    client.wait_until(lambda: all(attached(i) or i.error for i in interfaces().values()), settle)
    found = interfaces()
    errors: list[str] = []
    for b in target.bridges:
        local = found.get(b.name)
        if local is None or not attached(local):
            errors.append(
                f"bridge {b.name}: ovs-vswitchd could not open it on datapath {b.datapath}"
                + (" (is the openvswitch kernel module loaded?)" if b.datapath == "system" else "")
            )
            continue
        for name in sorted(_interface_names(b) - {b.name}):
            iface = found.get(name)
            if iface is not None and iface.error:
                errors.append(f"{name}: {iface.error[0]}")
            elif iface is None or not attached(iface):
                errors.append(f"{name}: not attached by ovs-vswitchd")
    return errors


LACP_TIMEOUT = 15.0
"""How long a bond may take to negotiate LACP with the switch (fast: a LACPDU a second;
ovs-vswitchd publishes ``lacp_current`` with its status refresh)."""


def lacp_partners(show: str) -> dict[str, str]:
    """Pure: member -> partner system id, from ``ovs-appctl lacp/show BOND``, for members
    whose LACP is current with a real partner (not defaulted to 00:00:00:00:00:00)."""
    out: dict[str, str] = {}
    member: str | None = None
    for line in show.splitlines():
        words = line.strip().split()
        if line.startswith("member: ") and len(words) >= 3:
            member = words[1].rstrip(":") if "current" in words[2:] else None
        elif (
            member
            and line.strip().startswith("partner sys_id:")
            and len(words) == 3
            and words[2] != "00:00:00:00:00:00"
        ):
            out[member] = words[2]
    return out


async def _lacp_errors(host: HostRoot, bond: Uplink) -> list[str]:
    """A LACP bond carries traffic only once the switch answers: wait for a real partner.

    Without this, a probe could pass in the moment before LACP gives up on a switch that
    has no LAG (a new bond counts as current until its first timeout), and the transaction
    would commit a host that loses its path seconds later.
    """
    rundir = host.ovsdb_socket.parent
    loop = asyncio.get_running_loop()
    deadline = loop.time() + LACP_TIMEOUT
    while True:
        ctls = sorted(rundir.glob("ovs-vswitchd*.ctl"))
        target = ["-t", str(ctls[0])] if ctls else []
        proc = await asyncio.create_subprocess_exec(
            "ovs-appctl", *target, "lacp/show", bond.name,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
        )  # fmt: skip
        out, _ = await proc.communicate()
        if lacp_partners(out.decode(errors="replace")):
            return []
        if loop.time() > deadline:
            break
        await asyncio.sleep(0.25)  # ovs-vswitchd cannot tell us when: ask again
    return [
        f"{bond.name}: LACP not negotiated with the switch within {LACP_TIMEOUT:g} s "
        f"(no partner on {', '.join(bond.interfaces())}): is the switch side a LAG?"
    ]


# -- the resource ---------------------------------------------------------------------------


class OpenVSwitch(Resource[OvsState]):
    """Our OVS bridges. ``want=None`` removes every bridge and port we created.

    ``timeout`` bounds each wait on ovsdb-server and ovs-vswitchd: 30 s, because a
    vswitchd on a loaded host (100 simulated ones on two cores, a hypervisor busy with
    guests) can take more than 10 s to reconfigure, and rolling back a good change for
    that is worse than waiting; a dead daemon still fails at once (its socket refuses)."""

    network = True  # can cut a network path

    state_type: ClassVar[Any] = OvsState

    def __init__(self, host: HostRoot, want: OvsBridge | None, *, timeout: float = 30.0) -> None:
        self.host = host
        self.want = want
        self.timeout = timeout

    @property
    def name(self) -> str:
        return "openvswitch"

    async def observe(self) -> OvsState:
        state = await asyncio.to_thread(self._observe_db)
        flags = await _link_flags({n for b in state.bridges for n in b.internal()})
        return dataclasses.replace(
            state,
            bridges=tuple(
                dataclasses.replace(
                    b,
                    up=flags.get(b.name, False),
                    fake_bridges=tuple(
                        dataclasses.replace(f, up=flags.get(f.name, False)) for f in b.fake_bridges
                    ),
                )
                for b in state.bridges
            ),
        )

    def target(self, current: OvsState) -> OvsState:
        return OvsState((self.want,) if self.want else (), current.foreign)

    def diff(self, current: OvsState, target: OvsState) -> list[Change]:
        return diff_states(current, target)

    async def apply(self, current: OvsState, target: OvsState) -> None:
        if clash := conflicts(current, target):
            raise ResourceError(
                f"not created by cloudstack-bootstrap, left alone: {', '.join(clash)}",
                resource=self.name,
            )
        errors = await asyncio.to_thread(self._apply_db, target)
        for b in target.bridges:
            if not errors and b.uplink is not None and b.uplink.lacp in ("active", "passive"):
                errors += await _lacp_errors(self.host, b.uplink)
        if errors:
            raise ResourceError("ovs-vswitchd: " + "; ".join(errors), resource=self.name)
        wanted = {n: up for b in target.bridges for n, up in b.internal().items()}
        await _set_links(wanted, self.timeout, self.name)

    def _observe_db(self) -> OvsState:
        try:
            with connect(self.host.ovsdb_socket, timeout=self.timeout) as client:
                return _read(client, self.want)
        except OvsdbError as exc:
            raise ResourceError(str(exc), resource=self.name) from exc

    def _apply_db(self, target: OvsState) -> list[str]:
        try:
            with connect(self.host.ovsdb_socket, timeout=self.timeout) as client:
                _write(client, target)
                return _errors(client, target)
        except OvsdbError as exc:
            raise ResourceError(str(exc), resource=self.name) from exc


# -- netlink: the internal ports as kernel devices -------------------------------------------


async def _link_flags(names: set[str]) -> dict[str, bool]:
    """Whether each of ``names`` is up; a name without a device is left out."""
    if not names:
        return {}
    async with AsyncIPRoute() as ipr:
        links = {name: await get_link(ipr, ifname=name) for name in sorted(names)}
    return {name: bool(link["flags"] & IFF_UP) for name, link in links.items() if link}


async def _set_links(wanted: dict[str, bool], timeout: float, resource: str) -> None:
    """Internal ports appear once vswitchd reconfigured; wait for all of them, then set
    their states together.

    Every change of a link makes ovs-vswitchd reconfigure all its bridges (its interface
    notifier; a port brought up, twice). Requests sent together mostly reach it within
    one of its loops; one at a time, each acknowledged before the next, each can cost a
    reconfiguration of its own (``bench/host_apply.py``: 7 to 9 reconfigurations over a
    first apply and a no-op of nets/scale-100.yaml's host one at a time, 6 to 8 together;
    the seed's commands 19). Every request is answered before an error is raised, so
    none is left in flight."""
    if not wanted:
        return
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    async with AsyncIPRoute() as ipr:
        changes: list[tuple[int, bool]] = []
        for name, up in sorted(wanted.items()):
            link = await wait_link(ipr, name, max(0.0, deadline - loop.time()))
            if link is None:
                raise ResourceError(f"internal port {name} has no kernel device", resource=resource)
            if bool(link["flags"] & IFF_UP) != up:
                changes.append((link["index"], up))
        answers = await asyncio.gather(
            *(ipr.link("set", index=i, state="up" if up else "down") for i, up in changes),
            return_exceptions=True,
        )
        for answer in answers:
            if isinstance(answer, BaseException):
                raise answer


def openvswitch_resources(network: Network, host: HostRoot) -> list[Resource[Any]]:
    """The NICs (they must exist: an error names the spec field), the OVS layout, then the
    management address on the fake bridge carrying management."""
    from bootstrap.resources.native import UplinkResource
    from bootstrap.resources.native_state import UplinkState

    out: list[Resource[Any]] = [
        UplinkResource(UplinkState(nic, network.mtu, up=True), field=field)
        for nic, field in network.nics().items()
    ]
    out.append(OpenVSwitch(host, desired_bridge(network)))
    mgmt = network.management
    if mgmt is not None and (bridge := network.device("management")) is not None:
        out.append(ManagementAddress(bridge.name, mgmt.address, mgmt.gateway))
    return out
