"""Pure: the network layout of a spec as the distro's own configuration files.

Three dialects, each from the same typed layout the links are built from
(``native_state.layout`` for Linux bridges/VLANs/bonds, ``openvswitch_state.desired_bridge``
for the OVS trunk and its fake bridges), so what boots is what we built:

- ifupdown (Debian): one ``interfaces(5)`` file; bridges through bridge-utils'
  ``bridge_*`` options, VLAN interfaces as ``eth0.100`` with ``vlan-raw-device``, bonds through
  ifenslave's ``bond-*`` options, and Open vSwitch through the stanzas Debian's
  openvswitch-switch README.Debian describes (``ovs_type OVSBridge/OVSPort/OVSIntPort/OVSBond``),
  every row marked ``external-ids:cloudstack-bootstrap=managed`` as our apply marks it.
- netplan (Ubuntu): one YAML file (networkd renderer; ``openvswitch:`` for the OVS backend,
  where a VLAN on an OVS bridge is a fake bridge).
- NetworkManager keyfiles (EL 9): one ``.nmconnection`` per connection.

Every function returns ``{host path: bytes}``; nothing here reads the host.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable
from typing import TypeVar

import yaml

from bootstrap.errors import InvalidDocument
from bootstrap.model.spec import Network
from bootstrap.resources.native_state import CENTISECONDS, Layout, layout
from bootstrap.resources.native_state import MARK as LINK_MARK
from bootstrap.resources.openvswitch import MARK
from bootstrap.resources.openvswitch_state import OvsBridge, desired_bridge

__all__ = [
    "HEADER",
    "IFUPDOWN_FILE",
    "NETPLAN_FILE",
    "NM_DIR",
    "NM_PREFIX",
    "interface_names",
    "render_ifupdown",
    "render_netplan",
    "render_nm",
]

HEADER = "# Written by cloudstack-bootstrap (csboot): do not edit, the next apply rewrites it."
IFUPDOWN_FILE = "/etc/network/interfaces.d/cloudstack-bootstrap"
NETPLAN_FILE = "/etc/netplan/60-cloudstack-bootstrap.yaml"
NM_DIR = "/etc/NetworkManager/system-connections"
NM_PREFIX = "cloudstack-"
_UUID_NS = uuid.UUID("6f1c2f64-3a53-4c55-9a5e-4f6b1a0c5b11")
_MARK_KEY, _MARK_VALUE = next(iter(MARK.items()))


T = TypeVar("T")


def _for_backend(
    network: Network,
    ovs: Callable[[Network, OvsBridge], T],
    native: Callable[[Network, Layout], T],
) -> T:
    """The backend's renderer, handed what it renders: the Open vSwitch bridge as the OVS
    resource makes it, or the native links' layout."""
    if network.backend == "openvswitch":
        return ovs(network, desired_bridge(network))
    return native(network, layout(network))


def interface_names(network: Network) -> frozenset[str]:
    """Every interface our layout defines: NICs, bond members, bonds, VLANs, bridges."""
    names = set(network.nics()) | {b.name for b in network.bonds}
    if network.backend == "openvswitch":
        names |= desired_bridge(network).names()
    else:
        names |= layout(network).names
    return frozenset(names)


def _mgmt(network: Network) -> tuple[str, str, str | None] | None:
    """(bridge, address/prefix, gateway) of the management address, if the spec has one."""
    mgmt = network.management
    bridge = network.device("management") if mgmt is not None else None
    if mgmt is None or bridge is None:
        return None
    return bridge.name, str(mgmt.address), str(mgmt.gateway) if mgmt.gateway else None


# -- ifupdown ------------------------------------------------------------------------------


def _stanza(name: str, method: str, options: Iterable[str], *, auto: str | None) -> list[str]:
    head = [auto] if auto else []
    return [*head, f"iface {name} inet {method}", *(f"    {o}" for o in options), ""]


def _address_options(network: Network, ifname: str) -> tuple[str, list[str]]:
    m = _mgmt(network)
    if m is None or m[0] != ifname:
        return "manual", []
    opts = [f"address {m[1]}"] + ([f"gateway {m[2]}"] if m[2] else [])
    return "static", opts


def _alias() -> str:
    """Our mark on a link we create (IFLA_IFALIAS), so our agent finds its links as its own
    after a boot without it, as it marks them itself."""
    return f"post-up ip link set dev $IFACE alias {LINK_MARK}"


def _mtu(network: Network, mtu: int | None) -> list[str]:
    return [f"mtu {mtu}"] if mtu is not None and mtu != 1500 else []


def _ifupdown_native(network: Network, lay: Layout) -> list[str]:
    out: list[str] = []
    bonded = {m for b in lay.bonds for m in b.members}
    for u in lay.uplinks:
        if u.ifname in bonded:  # ifenslave enslaves them from the bond's stanza
            master = next(b.ifname for b in lay.bonds if u.ifname in b.members)
            out += _stanza(u.ifname, "manual", [f"bond-master {master}"], auto=None)
            continue
        out += _stanza(u.ifname, "manual", _mtu(network, u.mtu), auto=f"auto {u.ifname}")
    for b in lay.bonds:
        opts = [
            f"bond-slaves {' '.join(b.members)}",
            f"bond-mode {b.mode}",
            f"bond-miimon {b.miimon}",
        ]
        if b.mode == "802.3ad":
            opts.append(f"bond-lacp-rate {b.lacp_rate}")
        if b.xmit_hash_policy != "layer2":
            opts.append(f"bond-xmit-hash-policy {b.xmit_hash_policy}")
        opts += [*_mtu(network, b.mtu), _alias()]
        out += _stanza(b.ifname, "manual", opts, auto=f"auto {b.ifname}")
    for v in lay.vlans:
        opts = [f"vlan-raw-device {v.parent}", *_mtu(network, v.mtu), _alias()]
        out += _stanza(v.ifname, "manual", opts, auto=f"auto {v.ifname}")
    for br in lay.bridges:
        method, addr = _address_options(network, br.ifname)
        opts = [
            f"bridge_ports {' '.join(br.ports)}",
            f"bridge_stp {'on' if br.stp else 'off'}",
            f"bridge_fd {br.forward_delay_cs // CENTISECONDS}",
            "bridge_maxwait 0",
            *_mtu(network, br.mtu),
            _alias(),
            *addr,
        ]
        out += _stanza(br.ifname, method, opts, auto=f"auto {br.ifname}")
    return out


def _ovs_marks(*rows: tuple[str, str], mtu: int | None = None) -> str:
    """``ovs_extra``: our mark on each (table, name) row (``${IFACE}`` is the stanza's own),
    and ``mtu_request`` on each interface, as our apply writes them."""
    cmds = []
    for table, name in rows:
        cmd = f"set {table} {name} external-ids:{_MARK_KEY}={_MARK_VALUE}"
        if table == "interface" and mtu is not None:
            cmd += f" mtu_request={mtu}"
        cmds.append(cmd)
    return " -- ".join(cmds)


def _ifupdown_ovs(network: Network, br: OvsBridge) -> list[str]:
    assert br.uplink is not None
    up = br.uplink
    fakes = list(br.fake_bridges)
    ports = [up.name, *(f.name for f in fakes)]
    extra = _ovs_marks(
        ("bridge", "${IFACE}"), ("port", "${IFACE}"), ("interface", "${IFACE}"), mtu=br.mtu
    )
    extra += f" -- set bridge ${{IFACE}} datapath_type={br.datapath}"
    out = _stanza(
        br.name,
        "manual",
        [
            "ovs_type OVSBridge",
            f"ovs_ports {' '.join(ports)}",
            f"ovs_extra {extra}",
            *_mtu(network, br.mtu),
        ],
        auto=f"auto {br.name}\nallow-ovs {br.name}",
    )
    trunks = ",".join(str(t) for t in up.trunks)
    if up.members:
        opts = [
            f"ovs_bridge {br.name}",
            "ovs_type OVSBond",
            f"ovs_bonds {' '.join(up.members)}",
        ]
        settings = [f"trunks={trunks}"]
        if up.bond_mode:
            settings.append(f"bond_mode={up.bond_mode}")
        if up.lacp:
            settings.append(f"lacp={up.lacp}")
        if up.lacp_time:
            settings.append(f"other_config:lacp-time={up.lacp_time}")
        if up.miimon is not None:
            settings += [
                "other_config:bond-detect-mode=miimon",
                f"other_config:bond-miimon-interval={up.miimon}",
            ]
        opts.append(f"ovs_options {' '.join(settings)}")
        marks = [("port", "${IFACE}"), *(("interface", m) for m in up.members)]
        opts.append(f"ovs_extra {_ovs_marks(*marks, mtu=up.mtu)}")
        out += _stanza(up.name, "manual", opts, auto=f"allow-{br.name} {up.name}")
        for m in up.members:
            out += _stanza(m, "manual", _mtu(network, up.mtu), auto=None)
    else:
        opts = [
            f"ovs_bridge {br.name}",
            "ovs_type OVSPort",
            f"ovs_options trunks={trunks}",
            f"ovs_extra {_ovs_marks(('port', '${IFACE}'), ('interface', '${IFACE}'), mtu=up.mtu)}",
            *_mtu(network, up.mtu),
        ]
        out += _stanza(up.name, "manual", opts, auto=f"allow-{br.name} {up.name}")
    for f in fakes:
        method, addr = _address_options(network, f.name)
        opts = [
            f"ovs_bridge {br.name}",
            "ovs_type OVSIntPort",
            f"ovs_options tag={f.vlan} fake_bridge=true",
            f"ovs_extra {_ovs_marks(('port', '${IFACE}'), ('interface', '${IFACE}'), mtu=f.mtu)}",
            *_mtu(network, f.mtu),
            *addr,
        ]
        out += _stanza(f.name, method, opts, auto=f"allow-{br.name} {f.name}")
    return out


def render_ifupdown(network: Network) -> dict[str, bytes]:
    body = _for_backend(network, _ifupdown_ovs, _ifupdown_native)
    text = "\n".join([HEADER, "", *body])
    return {IFUPDOWN_FILE: text.encode()}


# -- netplan -------------------------------------------------------------------------------


def _addresses(network: Network, ifname: str) -> dict[str, object]:
    m = _mgmt(network)
    if m is None or m[0] != ifname:
        return {"dhcp4": False, "dhcp6": False, "accept-ra": False, "link-local": []}
    out: dict[str, object] = {
        "dhcp4": False,
        "dhcp6": False,
        "accept-ra": False,
        "addresses": [m[1]],
    }
    if m[2]:
        out["routes"] = [{"to": "default", "via": m[2]}]
    return out


def _with_mtu(network: Network, data: dict[str, object], mtu: int | None) -> dict[str, object]:
    if mtu is not None and mtu != 1500:
        data["mtu"] = mtu
    return data


def _netplan_native(network: Network, lay: Layout) -> dict[str, object]:
    ethernets = {
        u.ifname: _with_mtu(network, _addresses(network, u.ifname), u.mtu) for u in lay.uplinks
    }
    bonds = {}
    for b in lay.bonds:
        params: dict[str, object] = {"mode": b.mode, "mii-monitor-interval": b.miimon}
        if b.mode == "802.3ad":
            params["lacp-rate"] = b.lacp_rate
        if b.xmit_hash_policy != "layer2":
            params["transmit-hash-policy"] = b.xmit_hash_policy
        bonds[b.ifname] = _with_mtu(
            network,
            {"interfaces": list(b.members), "parameters": params, **_addresses(network, b.ifname)},
            b.mtu,
        )
    vlans = {
        v.ifname: _with_mtu(
            network, {"id": v.vlan_id, "link": v.parent, **_addresses(network, v.ifname)}, v.mtu
        )
        for v in lay.vlans
    }
    bridges = {
        br.ifname: _with_mtu(
            network,
            {
                "interfaces": list(br.ports),
                "parameters": {
                    "stp": br.stp,
                    "forward-delay": br.forward_delay_cs // CENTISECONDS,
                },
                **_addresses(network, br.ifname),
            },
            br.mtu,
        )
        for br in lay.bridges
    }
    out: dict[str, object] = {"version": 2, "renderer": "networkd", "ethernets": ethernets}
    for key, section in (("bonds", bonds), ("vlans", vlans), ("bridges", bridges)):
        if section:
            out[key] = section
    return out


def _netplan_ovs(network: Network, br: OvsBridge) -> dict[str, object]:
    assert br.uplink is not None
    up = br.uplink

    def ovs_ids() -> dict[str, object]:
        return {"external-ids": dict(MARK)}

    ethernets = {n: _with_mtu(network, _addresses(network, n), up.mtu) for n in up.interfaces()}
    out: dict[str, object] = {"version": 2, "renderer": "networkd", "ethernets": ethernets}
    if up.members:
        bond_ovs: dict[str, object] = ovs_ids()
        if up.lacp:
            bond_ovs["lacp"] = up.lacp
        out["bonds"] = {
            up.name: {
                "interfaces": list(up.members),
                "parameters": {"mode": up.bond_mode or "active-backup"},
                "openvswitch": bond_ovs,
                **_addresses(network, up.name),
            }
        }
    out["bridges"] = {
        br.name: _with_mtu(
            network,
            {"interfaces": [up.name], "openvswitch": ovs_ids(), **_addresses(network, br.name)},
            br.mtu,
        )
    }
    vlans: dict[str, object] = {}
    for f in br.fake_bridges:
        if f.vlan == 0:
            raise InvalidDocument(
                f"netplan has no untagged fake bridge ({f.name!r} on {br.name}); "
                "give it a VLAN or persist with ifupdown",
                field="spec.network.persist",
            )
        vlans[f.name] = _with_mtu(
            network,
            {
                "id": f.vlan,
                "link": br.name,
                "openvswitch": ovs_ids(),
                **_addresses(network, f.name),
            },
            f.mtu,
        )
    if vlans:
        out["vlans"] = vlans
    return out


def render_netplan(network: Network) -> dict[str, bytes]:
    doc = _for_backend(network, _netplan_ovs, _netplan_native)
    text = HEADER + "\n" + yaml.safe_dump({"network": doc}, sort_keys=False, indent=2)
    return {NETPLAN_FILE: text.encode()}


# -- NetworkManager keyfiles ---------------------------------------------------------------


def _keyfile(sections: dict[str, dict[str, str]]) -> bytes:
    lines = [HEADER]
    for section, keys in sections.items():
        lines += ["", f"[{section}]", *(f"{k}={v}" for k, v in keys.items())]
    return ("\n".join(lines) + "\n").encode()


def _connection(name: str, kind: str, **extra: str) -> dict[str, str]:
    cid = f"{NM_PREFIX}{name}"
    return {
        "id": cid,
        "uuid": str(uuid.uuid5(_UUID_NS, f"{kind}/{name}")),
        "type": kind,
        "interface-name": name,
        **extra,
    }


def _ip(network: Network, ifname: str) -> dict[str, dict[str, str]]:
    m = _mgmt(network)
    if m is None or m[0] != ifname:
        return {"ipv4": {"method": "disabled"}, "ipv6": {"method": "disabled"}}
    # NetworkManager's own spelling: "address1=ADDRESS/PREFIX,GATEWAY"
    v4 = {"method": "manual", "address1": m[1] + (f",{m[2]}" if m[2] else "")}
    return {"ipv4": v4, "ipv6": {"method": "disabled"}}


def _eth(network: Network, mtu: int | None) -> dict[str, dict[str, str]]:
    return {"ethernet": {"mtu": str(mtu)}} if mtu is not None and mtu != 1500 else {}


def _nm_native(network: Network, lay: Layout) -> dict[str, dict[str, dict[str, str]]]:
    conns: dict[str, dict[str, dict[str, str]]] = {}
    port_of = {p: br.ifname for br in lay.bridges for p in br.ports}
    bond_of = {m: b.ifname for b in lay.bonds for m in b.members}

    def master(name: str) -> dict[str, str]:
        if name in bond_of:
            return {"master": bond_of[name], "slave-type": "bond"}
        if name in port_of:
            return {"master": port_of[name], "slave-type": "bridge"}
        return {}

    def ip_unless_port(name: str) -> dict[str, dict[str, str]]:
        return {} if master(name) else _ip(network, name)

    for u in lay.uplinks:
        conns[u.ifname] = {
            "connection": _connection(u.ifname, "ethernet", **master(u.ifname)),
            **_eth(network, u.mtu),
            **ip_unless_port(u.ifname),
        }
    for b in lay.bonds:
        opts = {"mode": b.mode, "miimon": str(b.miimon)}
        if b.mode == "802.3ad":
            opts["lacp_rate"] = b.lacp_rate
        if b.xmit_hash_policy != "layer2":
            opts["xmit_hash_policy"] = b.xmit_hash_policy
        conns[b.ifname] = {
            "connection": _connection(b.ifname, "bond", **master(b.ifname)),
            "bond": opts,
            **_eth(network, b.mtu),
            **ip_unless_port(b.ifname),
        }
    for v in lay.vlans:
        conns[v.ifname] = {
            "connection": _connection(v.ifname, "vlan", **master(v.ifname)),
            "vlan": {"parent": v.parent, "id": str(v.vlan_id)},
            **_eth(network, v.mtu),
            **ip_unless_port(v.ifname),
        }
    for br in lay.bridges:
        conns[br.ifname] = {
            "connection": _connection(br.ifname, "bridge"),
            "bridge": {
                "stp": "true" if br.stp else "false",
                "forward-delay": str(br.forward_delay_cs // CENTISECONDS),
            },
            **_eth(network, br.mtu),
            **_ip(network, br.ifname),
        }
    return conns


def _nm_ovs(network: Network, br: OvsBridge) -> dict[str, dict[str, dict[str, str]]]:
    """ovs-bridge -> ovs-port -> ovs-interface / ethernet, as NetworkManager models OVS.

    NetworkManager makes a tagged internal port, not an ovs-vsctl *fake bridge*
    (``fake_bridge=true`` is no NetworkManager setting); the device CloudStack uses exists
    with the same name, VLAN and address."""
    assert br.uplink is not None
    up = br.uplink
    ids = {"data." + _MARK_KEY: _MARK_VALUE}
    conns: dict[str, dict[str, dict[str, str]]] = {
        f"{br.name}-bridge": {
            "connection": {**_connection(br.name, "ovs-bridge"), "id": f"{NM_PREFIX}{br.name}"},
            "ovs-bridge": {"datapath-type": br.datapath},
            "ovs-external-ids": ids,
        }
    }

    def port(name: str, settings: dict[str, str]) -> None:
        conns[f"{name}-port"] = {
            "connection": {
                **_connection(name, "ovs-port", master=br.name, **{"slave-type": "ovs-bridge"}),
                "id": f"{NM_PREFIX}{name}-port",
            },
            "ovs-port": settings,
            "ovs-external-ids": ids,
        }

    def internal(name: str, mtu: int | None) -> None:
        conns[f"{name}-if"] = {
            "connection": {
                **_connection(name, "ovs-interface", master=name, **{"slave-type": "ovs-port"}),
                "id": f"{NM_PREFIX}{name}-if",
            },
            "ovs-interface": {"type": "internal"},
            **_eth(network, mtu),
            **_ip(network, name),
        }

    port(br.name, {})
    internal(br.name, br.mtu)
    trunk = {"trunks": ",".join(str(t) for t in up.trunks)} if up.trunks else {}
    if up.members:
        settings = dict(trunk)
        if up.bond_mode:
            settings["bond-mode"] = up.bond_mode
        if up.lacp:
            settings["lacp"] = up.lacp
        port(up.name, settings)
    else:
        port(up.name, trunk)
    for nic in up.interfaces():
        conns[nic] = {
            "connection": _connection(
                nic, "ethernet", master=up.name, **{"slave-type": "ovs-port"}
            ),
            **_eth(network, up.mtu),
        }
    for f in br.fake_bridges:
        port(f.name, {"tag": str(f.vlan), "vlan-mode": "access"} if f.vlan else {})
        internal(f.name, f.mtu)
    return conns


def render_nm(network: Network) -> dict[str, bytes]:
    conns = _for_backend(network, _nm_ovs, _nm_native)
    return {
        f"{NM_DIR}/{NM_PREFIX}{name}.nmconnection": _keyfile(sections)
        for name, sections in conns.items()
    }
