"""The native backend as data: desired links from the spec, and the diffs between states.

Pure functions only (no netlink here), so the whole layout logic is unit-tested without a
kernel. The netlink shell lives in ``native.py``.

Ownership: every link we create carries ``IFLA_IFALIAS = MARK``. A link with our mark is
``ours`` and may be changed or removed. A link the spec names that exists without our mark
(built by hand the seed's way, or by an installer) is *adopted*: the plan says ``adopt``
with what changes, the apply marks it ours, and its snapshot (``ours`` False and the
operator's own ``alias``) lets a revert give it back exactly as it was. Links the spec does
not name are never touched.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Literal, TypeVar

from pydantic import Discriminator

from bootstrap.engine.resource import Change
from bootstrap.errors import InvalidDocument
from bootstrap.model.spec import Network

__all__ = [
    "MARK",
    "BondState",
    "BridgeState",
    "Layout",
    "LinkState",
    "UplinkState",
    "VlanState",
    "bond_changes",
    "bridge_changes",
    "bridge_settings",
    "layout",
    "link_settings",
    "mismatch",
    "uplink_changes",
    "vlan_changes",
]

MARK = "cloudstack-bootstrap"
"""IFLA_IFALIAS of every link we create: how a later run tells ours from the operator's."""

CENTISECONDS = 100
"""The kernel takes and reports IFLA_BR_FORWARD_DELAY in clock_t (USER_HZ = 100 per second)."""

MIN_STP_FORWARD_DELAY = 2
"""With STP on, the kernel clamps the forward delay to 2..30 s (br_stp_start)."""


@dataclass(frozen=True, slots=True)
class UplinkState:
    """The operator's uplink: we only set its MTU and bring it up."""

    ifname: str
    mtu: int
    up: bool


@dataclass(frozen=True, slots=True)
class VlanState:
    """A VLAN sub-interface ``<parent>.<vlan_id>``; ``ours`` = it carries our mark."""

    ifname: str
    parent: str
    vlan_id: int
    mtu: int
    up: bool
    ours: bool = True
    alias: str | None = None  # the operator's own alias of a link that is not ours
    kind: Literal["vlan"] = "vlan"


@dataclass(frozen=True, slots=True)
class BridgeState:
    """A Linux bridge. ``ports`` (sorted) lists only the ports we manage: links we created
    and the spec's own port; other ports (CloudStack's vnetN taps, LXC veths) are none of
    our business and never touched."""

    ifname: str
    mtu: int
    up: bool
    stp: bool
    forward_delay_cs: int
    ports: tuple[str, ...]
    ours: bool = True
    alias: str | None = None
    kind: Literal["bridge"] = "bridge"


BOND_MODES = {
    "balance-rr": 0,
    "active-backup": 1,
    "balance-xor": 2,
    "broadcast": 3,
    "802.3ad": 4,
    "balance-tlb": 5,
    "balance-alb": 6,
}
"""IFLA_BOND_MODE values (include/uapi/linux/if_bonding.h)."""
XMIT_HASH = {"layer2": 0, "layer3+4": 1, "layer2+3": 2, "encap2+3": 3, "encap3+4": 4}
LACP_RATE = {"slow": 0, "fast": 1}
HASHED_MODES = frozenset({"balance-xor", "802.3ad", "balance-tlb"})
"""The modes whose transmit hash policy the kernel uses (and reports)."""


@dataclass(frozen=True, slots=True)
class BondState:
    """A Linux bond and its members (sorted); settings as the kernel reports them."""

    ifname: str
    mode: str
    miimon: int
    lacp_rate: str
    xmit_hash_policy: str
    members: tuple[str, ...]
    mtu: int
    up: bool
    ours: bool = True
    alias: str | None = None
    kind: Literal["bond"] = "bond"


LinkState = Annotated[VlanState | BridgeState | BondState, Discriminator("kind")]


@dataclass(frozen=True, slots=True)
class Layout:
    """Everything the native backend wants for one spec.network, in apply order."""

    uplinks: tuple[UplinkState, ...]
    vlans: tuple[VlanState, ...]
    bridges: tuple[BridgeState, ...]
    management_ifname: str | None
    bonds: tuple[BondState, ...] = ()

    @property
    def names(self) -> frozenset[str]:
        return (
            frozenset(v.ifname for v in self.vlans)
            | {b.ifname for b in self.bridges}
            | {b.ifname for b in self.bonds}
        )


def layout(network: Network) -> Layout:
    """Pure: the links the spec asks for. Rejects what the kernel would silently alter.

    Each bridge enslaves its uplink's VLAN sub-interface, or the uplink itself when it is
    untagged (the current guide's ``cloudbr0`` on the bare NIC). The management address
    goes on the bridge carrying management: CloudStack's ``private.network.device``.
    """
    vlans: list[VlanState] = []
    bridges: list[BridgeState] = []
    implied = network.implied_management_bridge() is not None
    for i, spec in enumerate(network.all_bridges()):
        field = "network.management" if implied and i == 0 else f"network.bridges.{i - implied}"
        mtu = spec.mtu or network.mtu
        if mtu > network.mtu:
            raise InvalidDocument(
                f"MTU {mtu} is above the uplink's {network.mtu}: a bridge port "
                "cannot be larger than its uplink",
                field=f"{field}.mtu",
            )
        if spec.stp and spec.forward_delay < MIN_STP_FORWARD_DELAY:
            raise InvalidDocument(
                f"with stp on the kernel forces a forward delay of at least "
                f"{MIN_STP_FORWARD_DELAY} s, not {spec.forward_delay}",
                field=f"{field}.forward_delay",
            )
        port = network.port_name(spec)
        if spec.vlan is not None:
            vlans.append(VlanState(port, network.uplink_of(spec), spec.vlan, mtu, up=True))
        bridges.append(
            BridgeState(
                spec.name,
                mtu,
                up=True,
                stp=spec.stp,
                forward_delay_cs=spec.forward_delay * CENTISECONDS,
                ports=(port,),
            )
        )
    mgmt = network.device("management") if network.management is not None else None
    bonds = tuple(
        BondState(
            b.name,
            b.mode,
            b.miimon,
            b.lacp_rate if b.mode == "802.3ad" else "slow",
            (b.xmit_hash_policy or "layer2") if b.mode in HASHED_MODES else "layer2",
            tuple(sorted(b.members)),
            network.mtu,
            up=True,
        )
        for b in network.bonds
    )
    members = [m for b in network.bonds for m in b.members]
    nics = [u for u in network.uplinks() if network.bond(u) is None]
    return Layout(
        tuple(UplinkState(u, network.mtu, up=True) for u in [*members, *nics]),
        tuple(vlans),
        tuple(bridges),
        mgmt.name if mgmt is not None else None,
        bonds,
    )


AnyLink = VlanState | BridgeState | BondState
_Link = TypeVar("_Link", VlanState, BridgeState, BondState)


def mismatch(current: AnyLink, wanted: AnyLink) -> list[str]:
    """Pure: what differs between two links of one kind, ignoring who owns them."""
    if isinstance(current, VlanState) and isinstance(wanted, VlanState):
        return _vlan_words(current, wanted)
    if isinstance(current, BridgeState) and isinstance(wanted, BridgeState):
        return _bridge_words(current, wanted)
    if isinstance(current, BondState) and isinstance(wanted, BondState):
        return _bond_words(current, wanted)
    return [f"kind {current.kind} → {wanted.kind}"]


BOND_SETTINGS = ("mode", "miimon", "lacp_rate", "xmit_hash_policy")


def _bond_words(current: BondState, wanted: BondState) -> list[str]:
    words = [
        f"{name} {getattr(current, name)} → {getattr(wanted, name)}"
        for name in BOND_SETTINGS
        if getattr(current, name) != getattr(wanted, name)
    ]
    words += [f"member +{m}" for m in wanted.members if m not in current.members]
    words += [f"member -{m}" for m in current.members if m not in wanted.members]
    return words + _common_words(current, wanted)


def _describe_bond(state: BondState) -> str:
    members = ", ".join(state.members) or "none"
    return (
        f"mode {state.mode}, miimon {state.miimon}, lacp rate {state.lacp_rate}, "
        f"hash {state.xmit_hash_policy}, members {members}, mtu {state.mtu}, {_updown(state.up)}"
    )


def bond_changes(name: str, current: BondState | None, target: BondState | None) -> list[Change]:
    """Pure: the plan lines for one bond."""
    return _link_changes(name, current, target, _describe_bond)


def _updown(up: bool) -> str:
    return "up" if up else "down"


def _common_words(current: AnyLink | UplinkState, wanted: AnyLink | UplinkState) -> list[str]:
    words = []
    if current.mtu != wanted.mtu:
        words.append(f"mtu {current.mtu} → {wanted.mtu}")
    if current.up != wanted.up:
        words.append(f"{_updown(current.up)} → {_updown(wanted.up)}")
    return words


def _vlan_words(current: VlanState, wanted: VlanState) -> list[str]:
    words = []
    if (current.parent, current.vlan_id) != (wanted.parent, wanted.vlan_id):
        words.append(
            f"vlan {current.vlan_id} on {current.parent} → {wanted.vlan_id} on {wanted.parent}"
        )
    return words + _common_words(current, wanted)


def _bridge_words(current: BridgeState, wanted: BridgeState) -> list[str]:
    words = _common_words(current, wanted)
    if current.stp != wanted.stp:
        words.append(f"stp {_onoff(current.stp)} → {_onoff(wanted.stp)}")
    if current.forward_delay_cs != wanted.forward_delay_cs:
        words.append(
            f"forward delay {_seconds(current.forward_delay_cs)} → "
            f"{_seconds(wanted.forward_delay_cs)}"
        )
    words += [f"port +{p}" for p in wanted.ports if p not in current.ports]
    words += [f"port -{p}" for p in current.ports if p not in wanted.ports]
    return words


def _onoff(flag: bool) -> str:
    return "on" if flag else "off"


def _seconds(centiseconds: int) -> str:
    return f"{centiseconds / CENTISECONDS:g}s"


def _describe_vlan(state: VlanState) -> str:
    return f"vlan {state.vlan_id} on {state.parent}, mtu {state.mtu}, {_updown(state.up)}"


def _describe_bridge(state: BridgeState) -> str:
    ports = ", ".join(state.ports) or "none"
    return (
        f"mtu {state.mtu}, stp {_onoff(state.stp)}, forward delay "
        f"{_seconds(state.forward_delay_cs)}, ports {ports}, {_updown(state.up)}"
    )


def _ownership(name: str, current: AnyLink, target: AnyLink, words: list[str]) -> list[Change]:
    """An adoption (the operator's link becomes ours) or its undo, with what else changes."""
    if current.ours == target.ours:
        return []
    if target.ours:
        return [Change(name, "adopt", "; ".join(words) or "unchanged, marked as ours")]
    back = f"alias {target.alias!r}" if target.alias else "no alias"
    return [Change(name, "modify", "; ".join([*words, f"given back ({back})"]))]


def vlan_changes(name: str, current: VlanState | None, target: VlanState | None) -> list[Change]:
    """Pure: the plan lines for one VLAN sub-interface."""
    if current == target:
        return []
    if current is None:
        assert target is not None
        return [Change(name, "create", _describe_vlan(target))]
    if target is None:
        return [Change(name, "delete", _describe_vlan(current))]
    words = mismatch(current, target)
    if adopted := _ownership(name, current, target, words):
        return adopted
    if (current.parent, current.vlan_id) != (target.parent, target.vlan_id):
        return [
            Change(name, "delete", "recreate: " + "; ".join(words)),
            Change(name, "create", _describe_vlan(target)),
        ]
    return [Change(name, "modify", "; ".join(words))] if words else []


def _link_changes(
    name: str, current: _Link | None, target: _Link | None, describe: Callable[[_Link], str]
) -> list[Change]:
    """Pure: create, delete, adopt (or give back) or modify one link."""
    if current == target:
        return []
    if current is None:
        assert target is not None
        return [Change(name, "create", describe(target))]
    if target is None:
        return [Change(name, "delete", describe(current))]
    words = mismatch(current, target)
    if adopted := _ownership(name, current, target, words):
        return adopted
    return [Change(name, "modify", "; ".join(words))] if words else []


def bridge_changes(
    name: str, current: BridgeState | None, target: BridgeState | None
) -> list[Change]:
    """Pure: the plan lines for one bridge."""
    return _link_changes(name, current, target, _describe_bridge)


def uplink_changes(name: str, current: UplinkState, target: UplinkState) -> list[Change]:
    words = _common_words(current, target)
    return [Change(name, "modify", "; ".join(words))] if words else []


def link_settings(
    current: AnyLink | UplinkState, target: AnyLink | UplinkState
) -> dict[str, object]:
    """Pure: the pyroute2 ``link set`` arguments for the MTU and up/down, when they differ."""
    out: dict[str, object] = {}
    if current.mtu != target.mtu:
        out["mtu"] = target.mtu
    if current.up != target.up:
        out["state"] = _updown(target.up)
    return out


def bridge_settings(current: BridgeState, target: BridgeState) -> dict[str, object]:
    """Pure: the bridge attributes that differ, as pyroute2 ``link set`` arguments.

    ``br_forward_delay`` goes to the kernel in centiseconds (clock_t), as it is read back.
    """
    out: dict[str, object] = {}
    if current.stp != target.stp:
        out["br_stp_state"] = int(target.stp)
    if current.forward_delay_cs != target.forward_delay_cs:
        out["br_forward_delay"] = target.forward_delay_cs
    if out:
        out["kind"] = "bridge"
    return out
