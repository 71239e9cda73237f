"""The Open vSwitch layout as data: what the spec wants and how two layouts differ (pure).

A bridge (with its local internal port), the uplink port trunking every VLAN, and one fake
bridge per VLAN. ``OvsState`` lists the rows we created and the operator's rows the spec
names (``ours`` False: built by hand with the seed's ovs-vsctl commands, or an installer),
which the apply *adopts* (marks ours) and a revert gives back exactly as they were.
``foreign`` names rows we need that sit elsewhere (another bridge): a conflict the plan
shows and the apply refuses.
"""

from __future__ import annotations

from dataclasses import dataclass

from bootstrap.engine.resource import Change
from bootstrap.model.spec import Network

__all__ = [
    "FakeBridge",
    "OvsBridge",
    "OvsState",
    "Uplink",
    "conflicts",
    "desired_bridge",
    "diff_states",
]


@dataclass(frozen=True, slots=True)
class FakeBridge:
    """A VLAN of the parent bridge, seen by the host (and CloudStack) as a bridge."""

    name: str
    vlan: int  # 0 = untagged
    mtu: int | None = None
    up: bool = True
    ours: bool = True


@dataclass(frozen=True, slots=True)
class Uplink:
    """The trunk port: one NIC (``members`` empty) or a bond of NICs with its settings."""

    name: str
    trunks: tuple[int, ...]
    mtu: int | None = None
    ours: bool = True
    members: tuple[str, ...] = ()
    bond_mode: str | None = None
    lacp: str | None = None  # active | passive | off; None: the column is empty
    lacp_time: str | None = None  # other_config:lacp-time, fast | slow
    miimon: int | None = None  # other_config:bond-miimon-interval (ms)

    def interfaces(self) -> tuple[str, ...]:
        return self.members or (self.name,)


@dataclass(frozen=True, slots=True)
class OvsBridge:
    name: str
    datapath: str = "system"
    mtu: int | None = None
    up: bool = True
    uplink: Uplink | None = None
    fake_bridges: tuple[FakeBridge, ...] = ()
    ours: bool = True

    def names(self) -> set[str]:
        """Bridge, Port and Interface names this bridge needs."""
        ports = {self.name, *(f.name for f in self.fake_bridges)}
        uplink = {self.uplink.name, *self.uplink.interfaces()} if self.uplink else set()
        return ports | uplink

    def internal(self) -> dict[str, bool]:
        """Internal interfaces (kernel devices) and whether they should be up."""
        return {self.name: self.up, **{f.name: f.up for f in self.fake_bridges}}


@dataclass(frozen=True, slots=True)
class OvsState:
    bridges: tuple[OvsBridge, ...] = ()  # ours only, by name
    foreign: tuple[str, ...] = ()  # names we need that rows we did not create hold


def desired_bridge(network: Network) -> OvsBridge:
    """The seed's layout for a spec: parent bridge, trunked uplink, one fake bridge per VLAN."""
    ovs = network.openvswitch
    fakes = [FakeBridge(b.name, b.vlan or 0, b.mtu or network.mtu) for b in network.all_bridges()]
    trunks = tuple(sorted({f.vlan for f in fakes}))  # 0: untagged frames too
    return OvsBridge(
        name=ovs.bridge,
        datapath=ovs.datapath,
        mtu=network.mtu,
        uplink=_uplink(network, trunks),
        fake_bridges=tuple(sorted(fakes, key=lambda f: f.name)),
    )


def _uplink(network: Network, trunks: tuple[int, ...]) -> Uplink:
    bond = network.bond(network.uplink)
    if bond is None:
        return Uplink(network.uplink, trunks, network.mtu)
    lacp_on = bond.lacp in ("active", "passive")
    return Uplink(
        bond.name,
        trunks,
        network.mtu,
        members=tuple(sorted(bond.members)),
        bond_mode=bond.mode,
        lacp=bond.lacp,
        lacp_time=bond.lacp_rate if lacp_on else None,
        miimon=bond.miimon,
    )


UPLINK_FIELDS = ("trunks", "mtu", "members", "bond_mode", "lacp", "lacp_time", "miimon")


def _fields(old: object, new: object, names: tuple[str, ...]) -> str:
    return ", ".join(
        f"{n} {getattr(old, n)} -> {getattr(new, n)}"
        for n in names
        if getattr(old, n) != getattr(new, n)
    )


def _describe(b: OvsBridge) -> str:
    return f"datapath {b.datapath}, mtu {b.mtu}"


def _diff_bridge(old: OvsBridge | None, new: OvsBridge | None) -> list[Change]:
    changes: list[Change] = []
    either = new or old
    if either is None:
        return changes
    name = either.name
    res = f"ovs-bridge/{name}"
    if old is None and new is not None:
        changes.append(Change(res, "create", _describe(new)))
    elif new is None and old is not None:
        changes.append(Change(res, "delete", _describe(old)))
    elif old is not None and new is not None:
        changes += _changed(res, old, new, ("datapath", "mtu", "up"))
    up_old = old.uplink if old else None
    up_new = new.uplink if new else None
    if up_old != up_new:
        if up_old is None and up_new is not None:
            changes.append(Change(f"ovs-port/{up_new.name}", "create", f"trunks {up_new.trunks}"))
        elif up_new is None and up_old is not None:
            changes.append(Change(f"ovs-port/{up_old.name}", "delete", f"trunks {up_old.trunks}"))
        elif up_old is not None and up_new is not None:
            if up_old.name != up_new.name:
                changes.append(Change(f"ovs-port/{up_old.name}", "delete", "uplink replaced"))
                changes.append(Change(f"ovs-port/{up_new.name}", "create", f"{up_new.trunks}"))
            else:
                changes += _changed(f"ovs-port/{up_new.name}", up_old, up_new, UPLINK_FIELDS)
    old_f = {f.name: f for f in (old.fake_bridges if old else ())}
    new_f = {f.name: f for f in (new.fake_bridges if new else ())}
    for fname in sorted(old_f.keys() | new_f.keys()):
        a, b = old_f.get(fname), new_f.get(fname)
        res = f"ovs-fake-bridge/{fname}"
        if a is None and b is not None:
            changes.append(Change(res, "create", f"vlan {b.vlan} on {name}, mtu {b.mtu}"))
        elif b is None and a is not None:
            changes.append(Change(res, "delete", f"vlan {a.vlan} on {name}"))
        elif a is not None and b is not None and a != b:
            changes += _changed(res, a, b, ("vlan", "mtu", "up"))
    return changes


def _changed(
    res: str,
    old: OvsBridge | Uplink | FakeBridge,
    new: OvsBridge | Uplink | FakeBridge,
    names: tuple[str, ...],
) -> list[Change]:
    """One line for a row that differs: an adoption, a give-back, or a plain change."""
    detail = _fields(old, new, names)
    if new.ours and not old.ours:
        return [Change(res, "adopt", detail or "unchanged, marked as ours")]
    if old.ours and not new.ours:
        return [Change(res, "modify", ", ".join(filter(None, [detail, "given back"])))]
    return [Change(res, "modify", detail)] if detail else []


def conflicts(current: OvsState, target: OvsState) -> list[str]:
    wanted = set().union(*(b.names() for b in target.bridges))
    return sorted(wanted & set(current.foreign))


def diff_states(current: OvsState, target: OvsState) -> list[Change]:
    """Pure: one line per bridge, uplink port and fake bridge that differs."""
    changes = [
        Change(
            f"ovs/{n}",
            "modify",
            "exists but was not created by cloudstack-bootstrap: "
            "refusing to touch it (remove it, or rename ours in the spec)",
        )
        for n in conflicts(current, target)
    ]
    old = {b.name: b for b in current.bridges}
    new = {b.name: b for b in target.bridges}
    for name in sorted(old.keys() | new.keys()):
        changes += _diff_bridge(old.get(name), new.get(name))
    return changes
