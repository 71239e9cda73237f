"""The data-centre fabric: a top-of-rack switch namespace and the links to it.

The switch is an Open vSwitch bridge on the netdev datapath in its own namespace: host
ports are trunks (allowed VLANs, optional native VLAN), the broker's port is an access port
of the management VLAN. That is how a real ToR port is configured, and it needs neither the
openvswitch kernel module nor bridge VLAN filtering. ``kind: linux`` is the fallback: a
plain Linux bridge passes tagged frames through (no per-port VLAN policy), and the broker
then sits on a VLAN sub-interface (which needs 8021q).
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import ipaddress
import socket
import struct
import threading
from dataclasses import dataclass, field
from pathlib import Path

from simulator.namespaces import Namespace, veth_pair
from simulator.nets import NicPort, Switch, SwitchBond
from simulator.ovs import OvsDaemons

__all__ = ["BINDINGS_TABLE", "LEARN_BINDING", "SWITCH_BRIDGE", "Fabric", "in_netns", "no_offload"]

SWITCH_BRIDGE = "tor"
BINDINGS_TABLE = 10  # the switch's learnt ARP bindings (see Fabric._snoop_arp)


def _learn_binding(address: str, mac: str) -> str:
    """A ``learn`` action: "on this VLAN, ``address`` is at ``mac``" (two of the packet's
    fields), as a flow in BINDINGS_TABLE that turns a later ARP *request* for that address
    on that VLAN into a unicast to that MAC."""
    return (
        f"learn(table={BINDINGS_TABLE},idle_timeout=300,priority=100,dl_type=0x0806,arp_op=1,"
        f"NXM_OF_VLAN_TCI[0..11],NXM_OF_ARP_TPA[]={address},load:{mac}->NXM_OF_ETH_DST[])"
    )


# from an ARP packet tagged on a trunk: its sender's address and MAC
LEARN_BINDING = _learn_binding("NXM_OF_ARP_SPA[]", "NXM_NX_ARP_SHA[]")
# gleaned from a connection's first packet: its IPv4 source and Ethernet source
GLEAN_BINDING = _learn_binding("NXM_OF_IP_SRC[]", "NXM_OF_ETH_SRC[]")

_DEFER_LOCK = threading.Lock()


def in_netns(ns: Namespace) -> contextlib.AbstractContextManager[None]:
    """This *thread* inside ``ns`` for the block (see :meth:`Namespace.inside`)."""
    return ns.inside()


SIOCETHTOOL, ETHTOOL_SRXCSUM, ETHTOOL_STXCSUM = 0x8946, 0x15, 0x17


def no_offload(ns: Namespace, ifname: str) -> None:
    """Turn checksum offload off on a veth end (``ethtool -K IFNAME tx off rx off``).

    OVS's netdev datapath reads and writes veths through packet sockets; with offload on,
    TCP segments leave with partial checksums that the far end drops. Two ethtool ioctls
    (the kernel turns off what depends on them, TSO): enumerating every feature as
    pyroute2's ``Ethtool`` does cost 1.7 ms a veth end.
    """
    with in_netns(ns), socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for cmd in (ETHTOOL_STXCSUM, ETHTOOL_SRXCSUM):
            value = ctypes.create_string_buffer(struct.pack("II", cmd, 0))  # ethtool_value
            ifreq = struct.pack("16sP16x", ifname.encode(), ctypes.addressof(value))
            fcntl.ioctl(s, SIOCETHTOOL, ifreq)


def _trunk_settings(nic: NicPort) -> list[str]:
    settings = ["trunks=" + ",".join(str(v) for v in nic.trunk_vlans)]
    if nic.native_vlan is not None:
        return [*settings, "vlan_mode=native-untagged", f"tag={nic.native_vlan}"]
    return [*settings, "vlan_mode=trunk"]


@dataclass(slots=True)
class Fabric:
    """The switch namespace and its ports; ``add_*`` wire a namespace to it."""

    ns: Namespace
    root: Path
    spec: Switch
    ovs: OvsDaemons | None = None
    ports: list[str] = field(default_factory=list)
    deferred: list[list[str]] | None = None  # OVS ports waiting for ``commit``

    @classmethod
    def build(cls, ns: Namespace, root: Path, spec: Switch) -> Fabric:
        fabric = cls(ns=ns, root=root, spec=spec)
        if spec.kind == "ovs":
            fabric.ovs = OvsDaemons(root, ns).start()
            fabric.ovs.vsctl(
                "add-br",
                SWITCH_BRIDGE,
                "--",
                "set",
                "bridge",
                SWITCH_BRIDGE,
                "datapath_type=netdev",
                "fail_mode=standalone",
                # as a datacenter switch does: IPv6/IPv4 multicast (every new interface's
                # DAD, MLD reports, router solicitations) goes only to the ports that
                # joined its group, not to every host (at 100 hosts that flood was most of
                # the hosts' vswitchd CPU in a rollout); broadcast (ARP) still floods
                "mcast_snooping_enable=true",
                "other_config:mcast-snooping-disable-flood-unregistered=true",
            )
            fabric._snoop_arp()
        else:
            with ns.iproute() as ipr:
                ipr.link("add", ifname=SWITCH_BRIDGE, kind="bridge", br_stp_state=0)
                (idx,) = ipr.link_lookup(ifname=SWITCH_BRIDGE)
                ipr.link("set", index=idx, state="up")
        return fabric

    def _snoop_arp(self) -> None:
        """ARP snooping, as an EVPN fabric's ARP suppression learns its bindings: every ARP
        tagged on a host's trunk teaches the switch where its sender is (VLAN, IP -> MAC);
        a later request on that VLAN for a known IP goes to its owner alone, as a unicast
        (the owner answers it, as it would the broadcast), instead of to every host of the
        VLAN. Forwarding stays the switch's own (``NORMAL``: VLANs, trunks, MAC learning);
        only the destination MAC of a request changes. Unknown IPs and untagged (native
        VLAN) ARP from a trunk flood as before; an access port's requests are looked up too
        (:meth:`_look_up_arp`). At 100 hosts the reach check's ARP requests,
        each flooded to 99 hosts, were 180,000 frames through the hosts' userspace
        datapaths; the reach check hands the switch every binding first (a packet-out of
        each address's gratuitous ARP reply, into ``LEARN_BINDING`` alone)."""
        assert self.ovs is not None
        flow = f"priority=90,arp,vlan_tci=0x1000/0x1000,actions={LEARN_BINDING},"
        flow += f"resubmit(,{BINDINGS_TABLE}),NORMAL"
        self.ovs.ofctl("add-flow", SWITCH_BRIDGE, flow)

    def arp_binding_count(self) -> int:
        """How many bindings the switch holds (0 without OVS): one line, however many."""
        if self.ovs is None:
            return 0
        out = self.ovs.ofctl("dump-aggregate", SWITCH_BRIDGE, f"table={BINDINGS_TABLE}")
        return int(out.split("flow_count=")[1].split()[0])

    def defer(self) -> None:
        """Queue OVS ports from now on; ``commit`` adds them in one transaction (one
        reconfiguration of the switch instead of one per port: 100 hosts' worth of
        ``add-port`` each waiting for ovs-vswitchd grew with the square of the ports)."""
        self.deferred = []

    def commit(self) -> None:
        pending, self.deferred = self.deferred or [], None
        if pending and self.ovs is not None:
            self.ovs.vsctl(*[a for cmd in pending for a in ("--", *cmd)][1:])

    def _attach(self, port: str, *ovs_settings: str) -> None:
        no_offload(self.ns, port)
        if self.ovs is not None:
            cmd = ["add-port", SWITCH_BRIDGE, port, "--", "set", "port", port, *ovs_settings]
            if self.deferred is not None:
                with _DEFER_LOCK:
                    self.deferred.append(cmd)
            else:
                self.ovs.vsctl(*cmd)
        else:
            with self.ns.iproute() as ipr:
                (br,) = ipr.link_lookup(ifname=SWITCH_BRIDGE)
                (idx,) = ipr.link_lookup(ifname=port)
                ipr.link("set", index=idx, master=br)
        self.ports.append(port)

    def add_trunk(
        self, peer: Namespace, peer_if: str, port: str, nic: NicPort, *, attach: bool = True
    ) -> None:
        """A host NIC: a trunk carrying the port's VLANs (its native one untagged)."""
        veth_pair(peer, peer_if, self.ns, port)
        no_offload(peer, peer_if)
        if attach:
            self._attach(port, *_trunk_settings(nic))

    def add_lag(self, name: str, ports: list[str], nic: NicPort, bond: SwitchBond) -> None:
        """The switch side of a host bond: ``ports`` aggregated into one trunk port."""
        if self.ovs is None:
            raise ValueError("a LAG needs the Open vSwitch switch (kind: ovs)")
        for port in ports:
            no_offload(self.ns, port)
        cmd = [
            "add-bond",
            SWITCH_BRIDGE,
            name,
            *ports,
            f"lacp={bond.lacp}",
            f"bond_mode={bond.mode}",
            "other_config:lacp-time=fast",
            # a host not (yet) bonded still gets through, as switches' "LACP fallback" lets
            # PXE and single-NIC installs work on a LAG port
            "other_config:lacp-fallback-ab=true",
            f"other_config:bond-primary={ports[0]}",  # the NIC a host installs on
            "--",
            "set",
            "port",
            name,
            *_trunk_settings(nic),
        ]
        if self.deferred is not None:
            with _DEFER_LOCK:
                self.deferred.append(cmd)
        else:
            self.ovs.vsctl(*cmd)
        self.ports += ports

    def add_access(
        self,
        peer: Namespace,
        peer_if: str,
        port: str,
        vlan: int,
        addresses: list[ipaddress.IPv4Interface],
    ) -> str:
        """An access port of ``vlan`` (the broker's); returns the interface the addresses sit on."""
        veth_pair(peer, peer_if, self.ns, port)
        no_offload(peer, peer_if)
        iface = peer_if
        if self.ovs is not None:
            self._attach(port, f"tag={vlan}", "vlan_mode=access")
        else:
            self._attach(port)
            iface = f"{peer_if}.{vlan}"
            with peer.iproute() as ipr:
                (parent,) = ipr.link_lookup(ifname=peer_if)
                ipr.link("add", ifname=iface, kind="vlan", link=parent, vlan_id=vlan)
                (idx,) = ipr.link_lookup(ifname=iface)
                ipr.link("set", index=idx, state="up")
        with peer.iproute() as ipr:
            (idx,) = ipr.link_lookup(ifname=iface)
            for a in addresses:
                ipr.addr("add", index=idx, address=str(a.ip), prefixlen=a.network.prefixlen)
            mac = str(ipr.get_links(idx)[0].get_attr("IFLA_ADDRESS"))
        if self.ovs is not None:
            self._answer_arp(vlan, mac, addresses)
            self._glean_bindings(vlan, addresses)
            self._look_up_arp(port, vlan)
        return iface

    def _answer_arp(self, vlan: int, mac: str, addresses: list[ipaddress.IPv4Interface]) -> None:
        """ARP suppression for an access port's addresses (the broker's, the routers'), as
        datacenter fabrics do it (EVPN's ARP suppression; Neutron's OVS ARP responder is the
        same OpenFlow): a request for one of them that comes tagged ``vlan`` from a host's
        trunk is answered by the switch with the known binding, instead of flooding every
        host on the VLAN. Flooded, each of N hosts learnt each asker's MAC and revalidated
        every flow it held: in a 100-host rollout (every host asking for its gateway and
        broker), most of the hosts' vswitchd CPU. The answer is what the owner would say;
        a host on the wrong VLAN gets none, as before. Untagged (native VLAN) requests for
        them flood as before."""
        assert self.ovs is not None
        flows = [
            f"priority=100,arp,arp_op=1,dl_vlan={vlan},arp_tpa={a.ip},actions="
            + ",".join(
                (
                    LEARN_BINDING,  # the asker's binding, as every tagged ARP teaches
                    "move:NXM_OF_ETH_SRC[]->NXM_OF_ETH_DST[]",
                    f"mod_dl_src:{mac}",
                    "load:0x2->NXM_OF_ARP_OP[]",
                    "move:NXM_NX_ARP_SHA[]->NXM_NX_ARP_THA[]",
                    "move:NXM_OF_ARP_SPA[]->NXM_OF_ARP_TPA[]",
                    f"load:0x{mac.replace(':', '')}->NXM_NX_ARP_SHA[]",
                    f"load:0x{int(a.ip):08x}->NXM_OF_ARP_SPA[]",
                    "in_port",
                )
            )
            for a in addresses
        ]
        self.ovs.ofctl("add-flows", SWITCH_BRIDGE, "-", stdin="\n".join(flows) + "\n")

    def _glean_bindings(self, vlan: int, addresses: list[ipaddress.IPv4Interface]) -> None:
        """A host's binding gleaned from the first packet of its connection to an access
        port's address (a TCP SYN tagged ``vlan`` from a trunk: its IPv4 source and MAC),
        as a fabric that learns bindings from the data plane does, not from ARP alone.
        Without it the broker's request for a host floods whenever the host connected from
        an address it never sent an ARP from: one that moved to mgmt0 while the host's
        entry for the broker was already there (resolved by its old connection, from the
        old address) — a quarter of the hosts at 200, each request then a new datapath
        flow in every host's vswitchd (it keys ARP floods on their addresses)."""
        assert self.ovs is not None
        flows = [
            f"priority=80,tcp,dl_vlan={vlan},nw_dst={a.ip},tcp_flags=+syn-ack,"
            f"actions={GLEAN_BINDING},NORMAL"
            for a in addresses
        ]
        self.ovs.ofctl("add-flows", SWITCH_BRIDGE, "-", stdin="\n".join(flows) + "\n")

    def _look_up_arp(self, port: str, vlan: int) -> None:
        """The other way round: a request from the access port (the broker or a gateway
        asking for a host) is looked up in ``vlan``'s learnt bindings, as a host's tagged
        request is, and goes to the owner alone when the binding is known; otherwise it
        floods as before. The frame arrives untagged (the port's VLAN is implicit), so it
        carries ``vlan`` for the lookup alone and leaves untagged into ``NORMAL``. Flooded,
        each of the broker's requests reached every host of the VLAN: in a rollout it asks
        for each host that came up on the management VLAN (~100 of its requests crossed
        every host's userspace datapath at 100 hosts, ~190 at 200: N² frames)."""
        assert self.ovs is not None
        flow = f"priority=95,in_port={port},arp,arp_op=1,actions=mod_vlan_vid:{vlan},"
        flow += f"resubmit(,{BINDINGS_TABLE}),strip_vlan,NORMAL"
        self.ovs.ofctl("add-flow", SWITCH_BRIDGE, flow)

    def set_port(self, port: str, *, up: bool) -> None:
        """Cut (or restore) one switch-side link, as a pulled cable does."""
        with self.ns.iproute() as ipr:
            (idx,) = ipr.link_lookup(ifname=port)
            ipr.link("set", index=idx, state="up" if up else "down")

    def stop(self) -> None:
        if self.ovs is not None:
            self.ovs.stop()
