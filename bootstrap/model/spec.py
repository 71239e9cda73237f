"""The effective host spec: the seed's KVM/LXC host set-up as typed, validated data.

Absent sections mean "unmanaged": a spec without ``network`` never touches links, one
without ``firewall`` never touches nftables. Everything else defaults to the seed's values.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Annotated, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    WithJsonSchema,
    field_validator,
    model_serializer,
    model_validator,
)

from bootstrap.model.hoststeps import Packages, Time
from bootstrap.model.names import CLOUDSTACK_NIC_PATTERN

IFNAMSIZ = 15
"""Longest Linux interface name (IFNAMSIZ - 1)."""

# ':' is how ifconfig spelt alias addresses (eth0:1): the kernel refuses it in a link name.
_IFNAME_CHARS = re.compile(r"^[A-Za-z0-9_.-]+$")

SEED_ALLOW_TCP: tuple[int | str, ...] = (22, 1798, 16509, 16514, "5900-6100", "49152-49216")


def _ifname(value: str) -> str:
    if not value or len(value) > IFNAMSIZ:
        raise ValueError(f"interface name {value!r} must be 1..{IFNAMSIZ} characters")
    if not _IFNAME_CHARS.match(value) or value in {".", ".."}:
        raise ValueError(f"interface name {value!r} has characters Linux does not allow")
    return value


def _nic_name(value: str) -> str:
    _ifname(value)
    if not CLOUDSTACK_NIC_PATTERN.match(value):
        raise ValueError(
            f"{value!r} is not a name CloudStack's agent recognises as a bridge port "
            "(eth*, bond*, vlan*, vx*, em*, ens*, eno*, enp*, team*, enx*, dummy*, pNpN*)"
        )
    return value


IfName = Annotated[str, AfterValidator(_ifname)]
NicName = Annotated[str, AfterValidator(_nic_name)]
VlanId = Annotated[StrictInt, Field(ge=1, le=4094)]
Port = Annotated[StrictInt, Field(ge=1, le=65535)]
Mtu = Annotated[StrictInt, Field(ge=68, le=65535)]


class FieldError(ValueError):
    """A validation error about a sub-field; ``path`` is appended to pydantic's location."""

    def __init__(self, path: tuple[str | int, ...], message: str) -> None:
        super().__init__(message)
        self.path = path


class MissingField(FieldError):
    """A field another document must still provide: only an error in the merged spec
    (a role names the management bridge, the host overlay gives the address)."""


class Strict(BaseModel):
    """Frozen, and unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=False)


class PortRange(Strict):
    first: Port
    last: Port

    @model_validator(mode="after")
    def _ordered(self) -> PortRange:
        if self.first > self.last:
            raise FieldError(("last",), f"reversed port range {self.first}-{self.last}")
        return self

    def __str__(self) -> str:
        return str(self.first) if self.first == self.last else f"{self.first}-{self.last}"

    @model_serializer
    def _as_written(self) -> int | str:
        """Serialise as an operator writes it (``22``, ``"5900-6100"``): round-trips."""
        return self.first if self.first == self.last else str(self)

    @classmethod
    def parse(cls, value: object) -> PortRange:
        return cls.model_validate(_port_fields(value))


def _port_fields(value: object) -> object:
    """``22`` or ``"5900-6100"`` as ``{first, last}``; pydantic then checks the bounds."""
    if isinstance(value, bool):
        raise ValueError("a port is a number or a 'first-last' range")
    if isinstance(value, int):
        return {"first": value, "last": value}
    if isinstance(value, str):
        parts = value.strip().split("-")
        if len(parts) in (1, 2) and all(p.strip().isascii() and p.strip().isdigit() for p in parts):
            return {"first": int(parts[0]), "last": int(parts[-1])}
        raise ValueError(f"{value!r} is not a port or a 'first-last' range")
    return value


PortItem = Annotated[
    PortRange,
    BeforeValidator(_port_fields),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "integer", "minimum": 1, "maximum": 65535},
                {"type": "string", "pattern": r"^\d{1,5}(-\d{1,5})?$"},
            ]
        }
    ),
]


class Cpu(Strict):
    mode: Literal["custom", "host-model", "host-passthrough"] = "host-model"
    model: str | None = None

    @model_validator(mode="after")
    def _model_only_with_custom(self) -> Cpu:
        if self.mode == "custom" and not self.model:
            raise FieldError(("model",), "mode 'custom' needs a model (from libvirt's cpu_map.xml)")
        if self.mode != "custom" and self.model is not None:
            raise FieldError(
                ("model",), f"model is only valid with mode 'custom', not {self.mode!r}"
            )
        if self.model is not None and not re.fullmatch(r"[A-Za-z0-9_.+-]+", self.model):
            raise FieldError(("model",), f"cpu model {self.model!r} is not a libvirt model name")
        return self


class Management(Strict):
    """The host's management address: CloudStack's *private* network.

    It sits on the bridge whose ``traffic`` lists ``management``; that bridge becomes
    ``private.network.device``. ``vlan`` is the older spelling: with no bridge carrying
    management, it implies one (``openvswitch.management_bridge``, ``mgmt0`` by default) on
    that VLAN, or untagged on the uplink when null.
    """

    vlan: VlanId | None = None
    address: ipaddress.IPv4Interface | ipaddress.IPv6Interface
    gateway: ipaddress.IPv4Address | ipaddress.IPv6Address | None = None

    @model_validator(mode="after")
    def _gateway_in_subnet(self) -> Management:
        if self.address.version != 4:
            raise FieldError(
                ("address",),
                "CloudStack's agent takes the host's IPv4 address from private.network.device "
                "(ServerResourceBase: 'Incorrect details for private Nic' without one); "
                "the management address must be IPv4",
            )
        if self.gateway is not None and self.gateway not in self.address.network:
            raise FieldError(
                ("gateway",),
                f"gateway {self.gateway} is outside the management subnet {self.address.network}",
            )
        return self


TRAFFIC_TYPES = ("management", "public", "guest", "storage")
"""CloudStack's traffic types a bridge can carry; each but storage maps to one device key."""


def _traffic(value: str) -> str:
    if value == "private":
        raise ValueError(
            "'private' is ambiguous: in CloudStack's words the private network is the "
            "management network (write 'management' on the bridge that holds the host's "
            "address: it becomes private.network.device); the instances' own network is "
            "'guest' (guest.network.device)"
        )
    if value not in TRAFFIC_TYPES:
        raise ValueError(f"unknown traffic type {value!r}; one of {', '.join(TRAFFIC_TYPES)}")
    return value


Traffic = Annotated[str, AfterValidator(_traffic), WithJsonSchema({"enum": list(TRAFFIC_TYPES)})]


class Bridge(Strict):
    """A bridge CloudStack uses: on ``uplink`` (default: the network's), tagged ``vlan`` or
    untagged when ``vlan`` is null."""

    name: IfName
    vlan: VlanId | None = None
    uplink: NicName | None = None
    traffic: tuple[Traffic, ...] = ()
    stp: StrictBool = False
    forward_delay: Annotated[StrictInt, Field(ge=0, le=30)] = 5
    mtu: Mtu | None = None

    @field_validator("traffic")
    @classmethod
    def _unique_traffic(cls, traffic: tuple[str, ...]) -> tuple[str, ...]:
        for i, t in enumerate(traffic):
            if t in traffic[:i]:
                raise FieldError((i,), f"traffic {t!r} is listed twice")
        return traffic


NATIVE_BOND_MODES = ("active-backup", "802.3ad", "balance-xor", "balance-tlb", "balance-alb")
OVS_BOND_MODES = ("active-backup", "balance-slb", "balance-tcp")
BondMode = Literal[
    "active-backup",
    "802.3ad",
    "balance-xor",
    "balance-tlb",
    "balance-alb",
    "balance-slb",
    "balance-tcp",
]


class Bond(Strict):
    """A bond of NICs that bridges (or the network's uplink) sit on, like any NIC.

    Native (Linux bonding): ``active-backup``, ``802.3ad`` (LACP), ``balance-xor``,
    ``balance-tlb``, ``balance-alb``. Open vSwitch: ``active-backup``, ``balance-slb``,
    ``balance-tcp`` with ``lacp``. ``lacp_rate`` is LACPDUs every second (fast) or 30 s.
    """

    name: NicName
    members: Annotated[tuple[NicName, ...], Field(min_length=1, max_length=16)]
    mode: BondMode = "active-backup"
    miimon: Annotated[StrictInt, Field(ge=0, le=60000)] = 100
    lacp: Literal["active", "passive", "off"] | None = None
    lacp_rate: Literal["slow", "fast"] = "slow"
    xmit_hash_policy: Literal["layer2", "layer2+3", "layer3+4", "encap2+3", "encap3+4"] | None = (
        None
    )

    @field_validator("members")
    @classmethod
    def _distinct(cls, members: tuple[str, ...]) -> tuple[str, ...]:
        for i, m in enumerate(members):
            if m in members[:i]:
                raise FieldError((i,), f"{m!r} is listed twice")
        return members


class OpenVSwitch(Strict):
    bridge: IfName = "cloudbr"
    datapath: Literal["system", "netdev"] = "system"
    management_bridge: IfName = "mgmt0"


PERSIST_MODES = ("auto", "ifupdown", "netplan", "networkmanager", "none")
Persist = Literal["auto", "ifupdown", "netplan", "networkmanager", "none"]


class Network(Strict):
    """``persist``: where the layout is also written so the distro's own network manager
    brings it back at boot without us (``auto``: what the host has; see
    ``bootstrap/resources/persist.py``)."""

    backend: Literal["native", "openvswitch"] = "native"
    persist: Persist = "auto"
    uplink: NicName
    mtu: Mtu = 1500
    management: Management | None = None
    bonds: tuple[Bond, ...] = ()
    bridges: tuple[Bridge, ...] = ()
    openvswitch: OpenVSwitch = OpenVSwitch()

    @field_validator("bridges")
    @classmethod
    def _unique_names(cls, bridges: tuple[Bridge, ...]) -> tuple[Bridge, ...]:
        seen: set[str] = set()
        for i, bridge in enumerate(bridges):
            if bridge.name in seen:
                raise FieldError((i, "name"), f"duplicate bridge {bridge.name!r}")
            seen.add(bridge.name)
        return bridges

    @model_validator(mode="after")
    def _cross_rules(self) -> Network:
        _check_network(self)
        return self

    # -- derived views (pure) -------------------------------------------------------------

    def implied_management_bridge(self) -> Bridge | None:
        """The bridge the older ``management.vlan`` spelling implies, if it is used."""
        if self.management is None or any("management" in b.traffic for b in self.bridges):
            return None
        return Bridge(
            name=self.openvswitch.management_bridge,
            vlan=self.management.vlan,
            traffic=("management",),
        )

    def all_bridges(self) -> tuple[Bridge, ...]:
        """Every bridge this host gets, the implied management bridge first."""
        implied = self.implied_management_bridge()
        return ((implied,) if implied else ()) + self.bridges

    def uplink_of(self, bridge: Bridge) -> str:
        return bridge.uplink or self.uplink

    def bond(self, name: str) -> Bond | None:
        return next((b for b in self.bonds if b.name == name), None)

    def uplinks(self) -> tuple[str, ...]:
        """Every NIC (or bond) a bridge sits on, the network's own first."""
        out = [self.uplink]
        for b in self.bridges:
            if (u := self.uplink_of(b)) not in out:
                out.append(u)
        return tuple(out)

    def nics(self) -> dict[str, str]:
        """Every NIC the host must have (bond members, not bonds), each with the spec field
        that names it, so a missing one is an error naming the field."""
        out: dict[str, str] = {}
        for i, bond in enumerate(self.bonds):
            for j, member in enumerate(bond.members):
                out[member] = f"spec.network.bonds[{i}].members[{j}]"
        if self.bond(self.uplink) is None:
            out.setdefault(self.uplink, "spec.network.uplink")
        for i, b in enumerate(self.bridges):
            if b.uplink and self.bond(b.uplink) is None:
                out.setdefault(b.uplink, f"spec.network.bridges[{i}].uplink")
        return out

    def port_name(self, bridge: Bridge) -> str:
        """The link a native bridge enslaves: the NIC itself, or its VLAN sub-interface."""
        uplink = self.uplink_of(bridge)
        return uplink if bridge.vlan is None else f"{uplink}.{bridge.vlan}"

    def device(self, traffic: str) -> Bridge | None:
        """The bridge carrying ``traffic`` (``management`` = CloudStack's private device)."""
        return next((b for b in self.all_bridges() if traffic in b.traffic), None)

    def vlans(self) -> list[int]:
        """Every tagged VLAN this host carries, management first."""
        return [b.vlan for b in self.all_bridges() if b.vlan is not None]


def _check_bonds(net: Network) -> None:
    modes = NATIVE_BOND_MODES if net.backend == "native" else OVS_BOND_MODES
    seen: dict[str, tuple[str | int, ...]] = {}
    for i, bond in enumerate(net.bonds):
        where: tuple[str | int, ...] = ("bonds", i)
        if bond.name in seen:
            raise FieldError((*where, "name"), f"duplicate bond {bond.name!r}")
        seen[bond.name] = (*where, "name")
        if bond.mode not in modes:
            raise FieldError(
                (*where, "mode"),
                f"the {net.backend} backend has no bond mode {bond.mode!r}; "
                f"one of {', '.join(modes)}",
            )
        if net.backend == "native":
            if bond.lacp is not None:
                raise FieldError(
                    (*where, "lacp"),
                    "lacp is Open vSwitch's setting; a native bond speaks LACP in mode 802.3ad",
                )
        else:
            if bond.xmit_hash_policy is not None:
                raise FieldError(
                    (*where, "xmit_hash_policy"),
                    "a Linux bonding setting; Open vSwitch hashes by its bond mode",
                )
            if bond.mode == "balance-tcp" and bond.lacp in (None, "off"):
                raise FieldError((*where, "lacp"), "balance-tcp needs LACP: lacp active or passive")
        for j, member in enumerate(bond.members):
            if member in seen:
                raise FieldError(
                    (*where, "members", j), f"{member!r} is already used by {_dot(seen[member])}"
                )
            seen[member] = (*where, "members", j)
            if member in net.uplinks() or net.bond(member) is not None:
                raise FieldError(
                    (*where, "members", j),
                    f"{member!r} is a bond member: bridges sit on the bond {bond.name!r}, "
                    "not on its members",
                )
    if net.backend == "openvswitch" and len(net.bonds) > 1:
        raise FieldError(("bonds", 1), "the openvswitch backend trunks one uplink (one bond)")
    for i, bond in enumerate(net.bonds):
        if bond.name not in net.uplinks():
            raise FieldError(
                ("bonds", i, "name"),
                f"no bridge sits on bond {bond.name!r}: name it as an uplink or remove it",
            )


def _check_network(net: Network) -> None:
    """The cross-field rules of ``spec.network``; each error names its field."""
    _check_bonds(net)
    implied = net.implied_management_bridge()
    # (bridge, the field that defined it): the implied bridge is the management section's
    sources: list[tuple[Bridge, tuple[str | int, ...]]] = []
    if implied is not None:
        sources.append((implied, ("management", "vlan")))
    sources += [(b, ("bridges", i)) for i, b in enumerate(net.bridges)]
    for traffic in TRAFFIC_TYPES:
        carriers = [(b, f) for b, f in sources if traffic in b.traffic]
        if len(carriers) > 1:
            (_, first), (b, where) = carriers[0], carriers[1]
            raise FieldError(
                (*where, "traffic"),
                f"{traffic!r} is already carried by {carriers[0][0].name!r} ({_dot(first)}): "
                "CloudStack's agent names one device per traffic type",
            )
    for b, where in sources:
        if "management" in b.traffic and where[0] == "bridges":
            if net.management is None:
                raise MissingField(
                    (*where, "traffic"),
                    f"bridge {b.name!r} carries management but spec.network.management gives "
                    "no address: CloudStack's private.network.device must hold the host's "
                    "IPv4 address",
                )
            if net.management.vlan is not None:
                raise FieldError(
                    ("management", "vlan"),
                    f"the management VLAN is bridge {b.name!r}'s own vlan; remove "
                    "management.vlan (it is the older spelling for a bridge the spec "
                    "does not list)",
                )
    names = {b.name for b, _ in sources}
    if implied is not None and implied.name in {b.name for b in net.bridges}:
        raise FieldError(
            ("openvswitch", "management_bridge"),
            f"management.vlan implies a management bridge {implied.name!r}, and a listed "
            "bridge has that name: list the management bridge with traffic [management] "
            "instead, or name it otherwise",
        )
    ports: dict[tuple[str, int | None], tuple[str | int, ...]] = {}
    for b, where in sources:
        uplink = net.uplink_of(b)
        key = (uplink, b.vlan)
        if key in ports:
            what = f"duplicate VLAN {b.vlan}" if b.vlan is not None else "a second untagged bridge"
            blamed, first = where, ports[key]
            if first[0] == "management":  # blame the older spelling, not the listed bridge
                blamed, first = first, where
            raise FieldError(
                (*blamed, "vlan") if blamed[0] == "bridges" else blamed,
                f"{what} on {uplink}: already bridged by {_dot(first)}",
            )
        ports[key] = where
        if b.name in net.uplinks():
            raise FieldError((*where, "name"), f"{b.name!r} is an uplink, not a bridge")
        if net.backend == "native" and b.vlan is not None:
            sub = net.port_name(b)
            if len(sub) > IFNAMSIZ:
                raise FieldError(
                    (*where, "uplink") if b.uplink else ("uplink",),
                    f"VLAN sub-interface {sub!r} is longer than {IFNAMSIZ} characters",
                )
            if sub in names:
                raise FieldError(
                    (*where, "vlan"), f"{sub!r} is the name of a bridge: pick another name"
                )
        if net.backend == "openvswitch" and b.uplink not in (None, net.uplink):
            raise FieldError(
                (*where, "uplink"),
                f"the openvswitch backend trunks one uplink ({net.uplink}) into "
                f"{net.openvswitch.bridge}; a bridge on a second NIC needs the native backend",
            )
    if net.backend == "openvswitch":
        ovs = net.openvswitch
        if ovs.bridge in names or ovs.bridge in net.uplinks():
            raise FieldError(
                ("openvswitch", "bridge"),
                f"{ovs.bridge!r} is the trunk bridge; no fake bridge or uplink may share its name",
            )


def _dot(path: tuple[str | int, ...]) -> str:
    return "spec.network." + ".".join(str(p) for p in path)


class Firewall(Strict):
    """The ports CloudStack needs open, and through what they are opened.

    ``backend``: ``nftables`` is our own table; ``firewalld`` / ``ufw`` open the same ports
    through that manager (a manager's reject wins over our table's accept, so where one is
    active our table alone cannot open anything); ``auto`` picks the active manager, else
    our table. ``policy`` is our table's: a manager keeps its own default.
    """

    backend: Literal["auto", "nftables", "firewalld", "ufw"] = "auto"
    policy: Literal["accept", "drop"] = "accept"
    allow_tcp: tuple[PortItem, ...] = tuple(PortRange.parse(p) for p in SEED_ALLOW_TCP)
    sources: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()


class HostSettings(Strict):
    """Kernel settings CloudStack's KVM agent relies on (``/etc/sysctl.d``, live in /proc/sys).

    ``reserved_ports``: kept out of Linux's ephemeral range (``ip_local_reserved_ports``),
    added to what the host already reserves; libvirt's migration ports (49152-49215 by
    default) lie inside that range. ``security_groups``: CloudStack's KVM security groups
    filter bridged guest traffic with iptables/ebtables, which needs ``br_netfilter`` and
    ``net.bridge.bridge-nf-call-{arp,ip,ip6}tables = 1``; off by default because it sends
    every bridged frame through the host's firewall (a manager that drops forwarded
    traffic then drops guests' traffic unless the bridges' forward path is opened).
    """

    reserved_ports: tuple[PortItem, ...] = (PortRange.parse("49152-49216"),)
    security_groups: StrictBool = False


class Libvirt(Strict):
    """How libvirtd listens for CloudStack (live migration, the management server).

    ``mode: tls`` is what the current guide and ``cloudstack-setup-agent -s`` leave
    (``listen_tls=1``, ``listen_tcp=0`` on ``tls_port``); ``mode: tcp`` is the seed's plain
    TCP on ``tcp_port``. The older booleans stay valid: ``mode`` fills them in, and a
    document that contradicts its own ``mode`` is rejected naming the boolean.
    """

    mode: Literal["tcp", "tls"] | None = None
    listen_tcp: StrictBool = True
    listen_tls: StrictBool = False
    tcp_port: Port = 16509
    tls_port: Port = 16514
    auth_tcp: Literal["none", "sasl"] = "none"
    mdns_adv: StrictBool = False
    vnc_listen: ipaddress.IPv4Address | ipaddress.IPv6Address = ipaddress.IPv4Address("0.0.0.0")

    @model_validator(mode="before")
    @classmethod
    def _mode_sets_flags(cls, data: object) -> object:
        if not isinstance(data, dict) or data.get("mode") not in ("tcp", "tls"):
            return data
        wanted = {"listen_tcp": data["mode"] == "tcp", "listen_tls": data["mode"] == "tls"}
        for flag, value in wanted.items():
            if flag in data and data[flag] is not value:
                raise FieldError(
                    (flag,),
                    f"mode {data['mode']!r} means {flag}: {str(value).lower()}; "
                    "remove the boolean or make it agree",
                )
        return {**data, **wanted}

    @model_validator(mode="after")
    def _mode_from_flags(self) -> Libvirt:
        if self.mode is None and self.listen_tcp != self.listen_tls:
            object.__setattr__(self, "mode", "tcp" if self.listen_tcp else "tls")
        return self

    @property
    def port(self) -> int | None:
        """The port CloudStack reaches libvirtd on in this mode (None: not listening)."""
        if self.mode == "tls":
            return self.tls_port
        return self.tcp_port if self.listen_tcp else None


def _property_key(key: str) -> str:
    if not key or any(c in key for c in "\r\n=:") or key != key.strip() or key[0] in "#!":
        raise ValueError(f"property key {key!r} must be non-empty, without newlines, '=' or ':'")
    return key


def _property_value(value: str) -> str:
    if "\n" in value or "\r" in value:
        raise ValueError("property values cannot contain newlines")
    return value


PropertyKey = Annotated[str, AfterValidator(_property_key)]
PropertyValue = Annotated[str, AfterValidator(_property_value)]


class Direct(Strict):
    """LXC direct networking (DirectVifDriver) instead of bridges."""

    source_mode: Literal["private", "bridge", "vepa", "passthrough"] = "private"
    device: NicName = "eth0"


class AgentSettings(Strict):
    properties: dict[PropertyKey, PropertyValue] = Field(default_factory=dict)
    direct: Direct | None = None
    # CloudStack has added the host: what its setup manages is no longer ours (also
    # detected from agent.properties, see bootstrap/resources/handoff.py)
    handed_off: StrictBool = False


class Security(Strict):
    selinux: Literal["permissive", "unmanaged"] = "permissive"
    apparmor_libvirt: Literal["disabled", "unmanaged"] = "disabled"


class Spec(Strict):
    """The effective spec of one host (roles merged, then the host overlay)."""

    hypervisor: Literal["kvm", "lxc"] = "kvm"
    cpu: Cpu = Cpu()
    network: Network | None = None
    firewall: Firewall | None = None
    host: HostSettings | None = None
    libvirt: Libvirt = Libvirt()
    agent: AgentSettings = AgentSettings()
    security: Security = Security()
    packages: Packages | None = None
    time: Time | None = None

    @model_validator(mode="after")
    def _direct_needs_lxc(self) -> Spec:
        if self.agent.direct is not None and self.hypervisor != "lxc":
            raise FieldError(
                ("agent", "direct"), "direct networking (DirectVifDriver) is for hypervisor 'lxc'"
            )
        return self
