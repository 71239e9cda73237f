"""The nets file: one simulated data centre (VLANs, switch, broker, hosts, desired state, intent).

Pure data. ``load_net(path)`` parses YAML into a strict, frozen model whose errors name the
field; ``Net.layout()`` derives everything the simulator builds (addresses, documents, what
must reach what) so the builders and the checks never re-derive it differently.

The *expectation* comes from the seed's layout (``vlans`` + ``expect``), never from the host
overlays: a host whose overlay puts a bridge on the wrong VLAN is a fault the checks must
find, not a new truth.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator

from bootstrap.errors import InvalidDocument
from bootstrap.model.document import API_VERSION, Document, effective_spec, validated
from bootstrap.model.merge import deep_merge
from bootstrap.model.spec import FieldError, Spec

__all__ = [
    "HostLayout",
    "Layout",
    "Net",
    "load_net",
    "parse_net",
]

HOST_NAME = re.compile(r"^[a-z][a-z0-9-]{0,15}$")
VlanId = Annotated[int, Field(ge=1, le=4094)]
Port = Annotated[int, Field(ge=1, le=65535)]
Backend = Literal["native", "openvswitch"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Vlan(_Strict):
    id: VlanId
    name: str = Field(pattern=r"^[a-z][a-z0-9-]{0,31}$")
    subnet: ipaddress.IPv4Network
    gateway: ipaddress.IPv4Address | None = None
    traffic: tuple[
        Literal["management", "provisioning", "public", "private", "guest", "storage"], ...
    ] = ()

    @model_validator(mode="after")
    def _gateway_inside(self) -> Vlan:
        if self.gateway is not None and self.gateway not in self.subnet:
            raise FieldError(("gateway",), f"gateway {self.gateway} is outside {self.subnet}")
        return self


class NicPort(_Strict):
    """The switch port a host NIC is cabled to: the VLANs it carries, which one untagged."""

    trunk_vlans: tuple[VlanId, ...]
    native_vlan: VlanId | None = None


class SwitchBond(_Strict):
    """The switch's side of a host bond: the host's NICs' ports aggregated (LACP)."""

    nics: Annotated[tuple[str, ...], Field(min_length=2)] = ("eth0", "eth1")
    lacp: Literal["active", "passive", "off"] = "active"
    mode: Literal["balance-tcp", "balance-slb", "active-backup"] = "balance-tcp"


class Switch(_Strict):
    """A top-of-rack switch: host ports are trunks, the broker sits on an access port.

    ``trunk_vlans``/``native_vlan`` are every host's ``eth0`` port; ``nics`` cables further
    NICs (``eth1: {trunk_vlans: [300], native_vlan: 300}``), each to a port of its own.
    """

    kind: Literal["ovs", "linux"] = "ovs"
    trunk_vlans: tuple[VlanId, ...]
    native_vlan: VlanId | None = None
    nics: dict[Annotated[str, Field(pattern=r"^eth[1-9]$")], NicPort] = Field(default_factory=dict)
    bond: SwitchBond | None = None  # aggregate each host's ports (an LACP LAG per host)

    def host_ports(self) -> dict[str, NicPort]:
        """Every host NIC and its port, ``eth0`` first."""
        eth0 = NicPort(trunk_vlans=self.trunk_vlans, native_vlan=self.native_vlan)
        return {"eth0": eth0, **dict(sorted(self.nics.items()))}


class Broker(_Strict):
    vlan: VlanId
    address: ipaddress.IPv4Interface
    port: Port = 1883


class Install(_Strict):
    """What the installer (or an operator, years ago) left on a host: the first contact.

    ``untagged``: an address from the switch's native (provisioning) VLAN on the bare
    uplink, routed to the broker by the gateway; the first rollout moves the host onto its
    management address on the tagged management VLAN. ``vlan``: the management address is
    already on ``<uplink>.<vlan>`` (kickstart did it; needs 8021q). ``bare``: the
    management address itself on the bare uplink, whose switch port sends the management
    VLAN untagged (what most installers leave). ``seed-ovs``: the host was built by hand
    with the seed's own ``ovs-vsctl`` commands (``cloudbr`` trunk, ``mgmt0`` holding the
    address on the management VLAN, ``cloudbr0``/``cloudbr1``); needs backend openvswitch.
    """

    management: Literal["untagged", "vlan", "bare", "seed-ovs"] = "untagged"
    #: ``ifupdown``: the installer also wrote Debian's /etc/network/interfaces for that
    #: first-contact address (``iface eth0 inet static``), as debian-installer does, so
    #: ``network.persist: auto`` finds ifupdown and must disable the installer's stanza
    distro: Literal["none", "ifupdown"] = "none"


class HostEntry(_Strict):
    name: str = Field(pattern=HOST_NAME.pattern)
    roles: tuple[str, ...] = ("kvm",)
    backend: Backend = "native"
    uplink: str = "eth0"
    address: ipaddress.IPv4Interface | None = None
    install: Install | None = None


class HostCount(_Strict):
    count: Annotated[int, Field(ge=1, le=240)]
    prefix: str = Field(default="kvm", pattern=r"^[a-z][a-z0-9-]{0,9}$")
    roles: tuple[str, ...] = ("kvm",)
    backend: Backend = "native"


class RoleDoc(_Strict):
    version: Annotated[int, Field(ge=1)] = 1
    spec: dict[str, Any]


class HostOverlay(_Strict):
    version: Annotated[int, Field(ge=1)] = 1
    spec: dict[str, Any] = Field(default_factory=dict)


class Desired(_Strict):
    roles: dict[str, RoleDoc]
    hosts: dict[str, HostOverlay] = Field(default_factory=dict)


class Migration(_Strict):
    source: str | None = None
    target: str | None = None
    port: Port = 49200
    blocked_port: Port = 49300


class Expect(_Strict):
    """The intent the checks hold the fleet to."""

    reach: tuple[VlanId, ...] | None = None  # VLANs every host reaches every host on
    isolated: bool = True  # frames of one VLAN never appear on another
    ports: bool = True
    peers: Literal["all", "ring"] | None = None  # default: all up to 8 hosts, ring beyond
    migration: Migration | None = Migration()
    cloudstack: bool = True  # CloudStack's KVM agent would start on every host


class Net(_Strict):
    name: str = Field(pattern=r"^[a-z0-9][a-z0-9-]{0,31}$")
    vlans: tuple[Vlan, ...]
    switch: Switch
    broker: Broker
    install: Install = Install()
    hosts: tuple[HostEntry, ...] | HostCount
    desired: Desired
    expect: Expect = Expect()
    converge_timeout: Annotated[float, Field(gt=0)] = 120.0

    @model_validator(mode="after")
    def _cross(self) -> Net:
        ids = [v.id for v in self.vlans]
        for i, vid in enumerate(ids):
            if vid in ids[:i]:
                raise FieldError(("vlans", i, "id"), f"duplicate VLAN {vid}")
        for i, vid in enumerate(self.switch.trunk_vlans):
            if vid not in ids:
                raise FieldError(("switch", "trunk_vlans", i), f"VLAN {vid} is not in vlans")
        if self.switch.native_vlan is not None and self.switch.native_vlan not in ids:
            raise FieldError(("switch", "native_vlan"), "not in vlans")
        if self.broker.vlan not in ids:
            raise FieldError(("broker", "vlan"), f"VLAN {self.broker.vlan} is not in vlans")
        if self.broker.address.ip not in self.vlan(self.broker.vlan).subnet:
            raise FieldError(("broker", "address"), "outside the broker VLAN's subnet")
        modes = {(e.install or self.install).management for e in self.entries()}
        untagged = "untagged" in modes
        native = self.switch.native_vlan
        if "bare" in modes and native != self.broker.vlan:
            raise FieldError(
                ("switch", "native_vlan"),
                f"hosts installed 'bare' hold the management address on the untagged uplink: "
                f"the native VLAN must be the management VLAN {self.broker.vlan}",
            )
        for i, e in enumerate(self.entries()):
            if (e.install or self.install).management == "seed-ovs" and e.backend != "openvswitch":
                raise FieldError(
                    ("hosts", i, "install"), "'seed-ovs' builds Open vSwitch: backend openvswitch"
                )
        if (bond := self.switch.bond) is not None:
            ports = self.switch.host_ports()
            for j, nic in enumerate(bond.nics):
                if nic not in ports:
                    raise FieldError(("switch", "bond", "nics", j), f"no host NIC {nic!r}")
                if ports[nic] != ports[bond.nics[0]]:
                    raise FieldError(
                        ("switch", "bond", "nics", j),
                        "a LAG's ports must carry the same VLANs (and native VLAN)",
                    )
        for nic, port in self.switch.nics.items():
            for j, vid in enumerate(port.trunk_vlans):
                if vid not in ids:
                    raise FieldError(
                        ("switch", "nics", nic, "trunk_vlans", j), f"VLAN {vid} is not in vlans"
                    )
            if port.native_vlan is not None and port.native_vlan not in ids:
                raise FieldError(("switch", "nics", nic, "native_vlan"), "not in vlans")
        if untagged and (native is None or self.vlan(native).gateway is None):
            raise FieldError(
                ("switch", "native_vlan"),
                "hosts installed untagged need a native (provisioning) VLAN with a gateway",
            )
        if untagged and native == self.broker.vlan:
            raise FieldError(
                ("switch", "native_vlan"),
                f"the native VLAN cannot be the management VLAN {native}: the switch sends "
                "it untagged, so a host could never move onto the tagged management VLAN",
            )
        names = self.host_names()
        if len(set(names)) != len(names):
            raise FieldError(("hosts",), "duplicate host names")
        for name in self.desired.hosts:
            if name not in names:
                raise FieldError(("desired", "hosts", name), "no such host")
        if isinstance(self.hosts, tuple):
            for i, h in enumerate(self.hosts):
                for role in h.roles:
                    if role not in self.desired.roles:
                        raise FieldError(("hosts", i, "roles"), f"role {role!r} is not desired")
        if self.expect.reach is not None:
            for i, vid in enumerate(self.expect.reach):
                if vid not in ids:
                    raise FieldError(("expect", "reach", i), f"VLAN {vid} is not in vlans")
        if (m := self.expect.migration) is not None:
            for key in ("source", "target"):
                value = getattr(m, key)
                if value is not None and value not in names:
                    raise FieldError(("expect", "migration", key), f"no host {value!r}")
        return self

    def vlan(self, vid: int) -> Vlan:
        return next(v for v in self.vlans if v.id == vid)

    def host_names(self) -> list[str]:
        if isinstance(self.hosts, HostCount):
            width = len(str(self.hosts.count))
            return [f"{self.hosts.prefix}{i + 1:0{width}d}" for i in range(self.hosts.count)]
        return [h.name for h in self.hosts]

    def entries(self) -> list[HostEntry]:
        if isinstance(self.hosts, HostCount):
            c = self.hosts
            return [HostEntry(name=n, roles=c.roles, backend=c.backend) for n in self.host_names()]
        return list(self.hosts)

    def layout(self) -> Layout:
        return build_layout(self)


@dataclass(frozen=True, slots=True)
class HostLayout:
    """One host as built: names, addresses, its documents and its effective spec."""

    index: int
    name: str
    backend: Backend
    uplink: str
    mgmt: ipaddress.IPv4Interface
    install_mode: str  # Install.management
    install_address: ipaddress.IPv4Interface  # what the installer left (first contact)
    install_gateway: ipaddress.IPv4Address | None
    install_distro: str  # Install.distro
    roles: tuple[str, ...]
    host_doc: dict[str, Any]
    spec: Spec
    bridges: dict[int, str]  # expected VLAN -> bridge name in the seed's layout
    nics: dict[str, NicPort]  # every NIC and the switch port it is cabled to

    @property
    def install_tagged(self) -> bool:
        return self.install_mode == "vlan"

    @property
    def port(self) -> str:
        """The switch-side port name of eth0 (short: IFNAMSIZ)."""
        return self.port_of(self.uplink)

    def port_of(self, nic: str) -> str:
        """The switch-side port of ``nic``: ``h007`` for eth0, ``h007n1`` for eth1."""
        k = list(self.nics).index(nic)
        return f"h{self.index:03d}" + (f"n{k}" if k else "")


@dataclass(frozen=True, slots=True)
class Layout:
    net: Net
    hosts: tuple[HostLayout, ...]
    role_docs: dict[str, dict[str, Any]]
    mgmt_vlan: int
    gateway: ipaddress.IPv4Interface | None

    def routers(self) -> list[tuple[int, list[ipaddress.IPv4Interface]]]:
        """The gateway namespace's legs: (VLAN, addresses) for every VLAN with a gateway.

        The broker's namespace is the router: the management leg carries the broker's
        address, a provisioning leg lets freshly installed hosts reach it.
        """
        legs = []
        for v in self.net.vlans:
            addrs = []
            if v.id == self.mgmt_vlan:
                addrs.append(self.net.broker.address)
            if v.gateway is not None:
                addrs.append(ipaddress.IPv4Interface(f"{v.gateway}/{v.subnet.prefixlen}"))
            if addrs:
                legs.append((v.id, addrs))
        return legs

    def host(self, name: str) -> HostLayout:
        return next(h for h in self.hosts if h.name == name)

    def reach_vlans(self) -> list[int]:
        """Guest VLANs (not management) every host should reach every other host on."""
        if self.net.expect.reach is not None:
            return [v for v in self.net.expect.reach if v != self.mgmt_vlan]
        return sorted({v for h in self.hosts for v in h.bridges})

    def peers(self) -> list[tuple[HostLayout, HostLayout]]:
        """Ordered (from, to) pairs the pairwise checks test: all, or a ring for big fleets."""
        mode = self.net.expect.peers or ("all" if len(self.hosts) <= 8 else "ring")
        hs = self.hosts
        if len(hs) < 2:
            return []
        if mode == "all":
            return [(a, b) for a in hs for b in hs if a is not b]
        return [(hs[i], hs[(i + 1) % len(hs)]) for i in range(len(hs))]


def _role_bridges(spec: dict[str, Any], ports: dict[str, NicPort]) -> dict[int, str]:
    """VLAN -> bridge, as the role intends: an untagged bridge carries its NIC's native VLAN."""
    net = spec.get("network") or {}
    out: dict[int, str] = {}
    for b in net.get("bridges") or ():
        vlan = b.get("vlan")
        if vlan is None:
            port = ports.get(str(b.get("uplink") or net.get("uplink") or "eth0"))
            vlan = port.native_vlan if port is not None else None
        if vlan is not None:
            out[int(vlan)] = str(b["name"])
    return out


def _carries_management(specs: list[dict[str, Any]]) -> bool:
    bridges = [b for s in specs for b in (s.get("network") or {}).get("bridges") or ()]
    return any("management" in (b.get("traffic") or ()) for b in bridges)


def build_layout(net: Net) -> Layout:
    mgmt_vlan = net.broker.vlan
    mvlan = net.vlan(mgmt_vlan)
    role_docs = {
        name: {
            "apiVersion": API_VERSION,
            "kind": "Role",
            "name": name,
            "version": r.version,
            "spec": r.spec,
        }
        for name, r in net.desired.roles.items()
    }
    taken = {net.broker.address.ip} | {v.gateway for v in net.vlans if v.gateway}
    hosts: list[HostLayout] = []
    for i, entry in enumerate(net.entries()):
        addr = entry.address or ipaddress.IPv4Interface(
            f"{mvlan.subnet.network_address + 11 + i}/{mvlan.subnet.prefixlen}"
        )
        where: tuple[str | int, ...] = ("hosts", i, "address")
        if addr.ip not in mvlan.subnet or addr.ip == mvlan.subnet.broadcast_address:
            raise InvalidDocument(f"{addr} is outside {mvlan.subnet}", field=_dotted(where))
        if addr.ip in taken:
            raise InvalidDocument(f"{addr.ip} is already used", field=_dotted(where))
        taken.add(addr.ip)
        management: dict[str, Any] = {
            "address": str(addr),
            **({"gateway": str(mvlan.gateway)} if mvlan.gateway else {}),
        }
        role_specs = [net.desired.roles[r].spec for r in entry.roles]
        if not _carries_management(role_specs):  # the older spelling: mgmt0 on this VLAN
            management["vlan"] = mgmt_vlan
        network: dict[str, Any] = {"backend": entry.backend, "management": management}
        if not any((s.get("network") or {}).get("uplink") for s in role_specs):
            network["uplink"] = entry.uplink  # a role naming its uplink (a bond) keeps it
        base: dict[str, Any] = {"network": network}
        overlay = net.desired.hosts.get(entry.name, HostOverlay())
        host_doc = {
            "apiVersion": API_VERSION,
            "kind": "Host",
            "name": entry.name,
            "version": overlay.version,
            "spec": deep_merge(base, overlay.spec),
        }
        docs = [Document.model_validate(role_docs[r]) for r in entry.roles]
        try:
            spec = effective_spec([*docs, Document.model_validate(host_doc)])
        except InvalidDocument as exc:
            raise InvalidDocument(
                exc.reason, field=f"desired (host {entry.name}).{exc.field}"
            ) from exc
        ports = net.switch.host_ports()
        expected: dict[int, str] = {}
        for r in entry.roles:
            expected.update(_role_bridges(net.desired.roles[r].spec, ports))
        expected.pop(mgmt_vlan, None)  # management is checked host to host, not by guests
        install = entry.install or net.install
        if install.management != "untagged" or net.switch.native_vlan is None:
            inst_addr, inst_gw = addr, mvlan.gateway
        else:
            pvlan = net.vlan(net.switch.native_vlan)
            inst_addr = ipaddress.IPv4Interface(
                f"{pvlan.subnet.network_address + 11 + i}/{pvlan.subnet.prefixlen}"
            )
            inst_gw = pvlan.gateway
        hosts.append(
            HostLayout(
                index=i,
                name=entry.name,
                backend=entry.backend,
                uplink=entry.uplink,
                mgmt=addr,
                install_mode=install.management,
                install_address=inst_addr,
                install_gateway=inst_gw,
                install_distro=install.distro,
                roles=entry.roles,
                host_doc=host_doc,
                spec=spec,
                bridges=expected,
                nics=ports,
            )
        )
    gw = (
        ipaddress.IPv4Interface(f"{mvlan.gateway}/{mvlan.subnet.prefixlen}")
        if mvlan.gateway
        else None
    )
    return Layout(net, tuple(hosts), role_docs, mgmt_vlan, gw)


def _dotted(path: tuple[str | int, ...]) -> str:
    out = ""
    for p in path:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else p)
    return out


def parse_net(data: object, *, source: str = "nets file") -> Net:
    """Validate a decoded nets file; the error names the field (``hosts[2].backend``)."""
    if not isinstance(data, dict):
        raise InvalidDocument(f"{source} must be a mapping", field="")
    net = validated(Net, data)
    net.layout()  # every host's merged spec must be valid too
    return net


def load_net(path: str | Path) -> Net:
    p = Path(path)
    try:
        data = yaml.safe_load(p.read_text())
    except OSError as exc:
        raise InvalidDocument(f"cannot read {p}: {exc.strerror}", field="") from exc
    except yaml.YAMLError as exc:
        raise InvalidDocument(f"{p} is not YAML: {exc}", field="") from exc
    return parse_net(data, source=str(p))


def needs_8021q(net: Net) -> bool:
    """Native-backend hosts with VLAN sub-interfaces or bonds need the full kernel (8021q,
    bonding); so does a tagged install network."""
    layout = net.layout()
    return any(
        h.install_tagged
        or (
            h.backend == "native"
            and h.spec.network is not None
            and bool(h.spec.network.vlans() or h.spec.network.bonds)
        )
        for h in layout.hosts
    )
