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
    WithJsonSchema,
    field_validator,
    model_serializer,
    model_validator,
)

IFNAMSIZ = 15
"""Longest Linux interface name (IFNAMSIZ - 1)."""

# CloudStack's agent finds the physical port of a bridge by these name prefixes
# (LibvirtComputingResource.ifNamePatterns); a port it cannot recognise breaks it.
CLOUDSTACK_NIC_PATTERN = re.compile(r"^(eth|bond|vlan|vx|em|ens|eno|enp|team|enx|dummy|p\d+p\d+)")
_IFNAME_CHARS = re.compile(r"^[A-Za-z0-9_.:-]+$")

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
VlanId = Annotated[int, Field(ge=1, le=4094)]
Port = Annotated[int, Field(ge=1, le=65535)]


class FieldError(ValueError):
    """A validation error about a sub-field; ``path`` is appended to pydantic's location."""

    def __init__(self, path: tuple[str | int, ...], message: str) -> None:
        super().__init__(message)
        self.path = path


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
        if len(parts) in (1, 2) and all(p.strip().isdigit() for p in parts):
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
    """The host's management address; ``vlan: null`` puts it untagged on the uplink."""

    vlan: VlanId | None = None
    address: ipaddress.IPv4Interface | ipaddress.IPv6Interface
    gateway: ipaddress.IPv4Address | ipaddress.IPv6Address | None = None

    @model_validator(mode="after")
    def _gateway_in_subnet(self) -> Management:
        if self.gateway is not None and self.gateway not in self.address.network:
            raise FieldError(
                ("gateway",),
                f"gateway {self.gateway} is outside the management subnet {self.address.network}",
            )
        return self


Traffic = Literal["public", "private", "guest", "storage"]


class Bridge(Strict):
    name: IfName
    vlan: VlanId
    traffic: tuple[Traffic, ...] = ()
    stp: bool = False
    forward_delay: Annotated[int, Field(ge=0, le=30)] = 5
    mtu: Annotated[int, Field(ge=68, le=65535)] | None = None


class OpenVSwitch(Strict):
    bridge: IfName = "cloudbr"
    datapath: Literal["system", "netdev"] = "system"
    management_bridge: IfName = "mgmt0"


class Network(Strict):
    backend: Literal["native", "openvswitch"] = "native"
    uplink: NicName
    mtu: Annotated[int, Field(ge=68, le=65535)] = 1500
    management: Management | None = None
    bridges: tuple[Bridge, ...] = ()
    openvswitch: OpenVSwitch = OpenVSwitch()

    @field_validator("bridges")
    @classmethod
    def _unique_bridges(cls, bridges: tuple[Bridge, ...]) -> tuple[Bridge, ...]:
        seen_names: set[str] = set()
        seen_vlans: set[int] = set()
        for i, bridge in enumerate(bridges):
            if bridge.name in seen_names:
                raise FieldError((i, "name"), f"duplicate bridge {bridge.name!r}")
            if bridge.vlan in seen_vlans:
                raise FieldError((i, "vlan"), f"duplicate VLAN {bridge.vlan} ({bridge.name!r})")
            seen_names.add(bridge.name)
            seen_vlans.add(bridge.vlan)
        return bridges

    @model_validator(mode="after")
    def _cross_rules(self) -> Network:
        vlans = {b.vlan: b.name for b in self.bridges}
        if self.management and self.management.vlan in vlans:
            raise FieldError(
                ("management", "vlan"),
                f"duplicate VLAN {self.management.vlan}: management and "
                f"bridge {vlans[self.management.vlan]!r}",
            )
        names = {b.name for b in self.bridges}
        if self.uplink in names:
            raise FieldError(("uplink",), f"the uplink {self.uplink!r} cannot also be a bridge")
        if self.backend == "native":
            for vlan in self.vlans():
                sub = f"{self.uplink}.{vlan}"
                if len(sub) > IFNAMSIZ:
                    raise FieldError(
                        ("uplink",),
                        f"VLAN sub-interface {sub!r} is longer than {IFNAMSIZ} characters",
                    )
        else:
            ovs = self.openvswitch
            reserved = {ovs.bridge, ovs.management_bridge, self.uplink}
            if len(reserved) != 3:
                raise FieldError(
                    ("openvswitch",), "bridge, management_bridge and uplink must differ"
                )
            if clash := names & {ovs.bridge, ovs.management_bridge}:
                raise FieldError(("bridges",), f"duplicate bridge {sorted(clash)[0]!r}")
        return self

    def vlans(self) -> list[int]:
        """Every tagged VLAN this host carries, management first."""
        mgmt = [self.management.vlan] if self.management and self.management.vlan else []
        return mgmt + [b.vlan for b in self.bridges]


class Firewall(Strict):
    policy: Literal["accept", "drop"] = "accept"
    allow_tcp: tuple[PortItem, ...] = tuple(PortRange.parse(p) for p in SEED_ALLOW_TCP)
    sources: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()


class Libvirt(Strict):
    listen_tcp: bool = True
    listen_tls: bool = False
    tcp_port: Port = 16509
    auth_tcp: Literal["none", "sasl"] = "none"
    mdns_adv: bool = False
    vnc_listen: ipaddress.IPv4Address | ipaddress.IPv6Address = ipaddress.IPv4Address("0.0.0.0")


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


class Security(Strict):
    selinux: Literal["permissive", "unmanaged"] = "permissive"
    apparmor_libvirt: Literal["disabled", "unmanaged"] = "disabled"


class Spec(Strict):
    """The effective spec of one host (roles merged, then the host overlay)."""

    hypervisor: Literal["kvm", "lxc"] = "kvm"
    cpu: Cpu = Cpu()
    network: Network | None = None
    firewall: Firewall | None = None
    libvirt: Libvirt = Libvirt()
    agent: AgentSettings = AgentSettings()
    security: Security = Security()

    @model_validator(mode="after")
    def _direct_needs_lxc(self) -> Spec:
        if self.agent.direct is not None and self.hypervisor != "lxc":
            raise FieldError(
                ("agent", "direct"), "direct networking (DirectVifDriver) is for hypervisor 'lxc'"
            )
        return self
