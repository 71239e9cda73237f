"""One simulated hypervisor: a namespace, NICs cabled to the switch, a file root, OVS, the agent.

A host starts as the installer left it (the first contact): its NICs, an address (from the
provisioning VLAN, or the management address on the bare uplink or on ``eth0.<vlan>``) and
a default route. Everything else (bridges, VLANs, the firewall, the files) is the agent's
job, done by the real engine on the first rollout; the simulator never builds the target
layout itself. The one exception is the brownfield host (``seed-ovs``): built beforehand
with the seed's own ``ovs-vsctl`` commands, as an operator did years ago, for the agent to
adopt.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import logging
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from simulator.fabric import Fabric, no_offload
from simulator.namespaces import Namespace, veth_pair
from simulator.nets import HostLayout
from simulator.ovs import HOST_CONFIG, OvsDaemons
from simulator.zygote import Forked, Zygote

if TYPE_CHECKING:
    from pyroute2 import IPRoute

__all__ = ["SEED_OVS_VSCTL", "Guest", "SimHost", "agent_toml", "build_seed_ovs"]

log_ = logging.getLogger(__name__)  # ``log`` is the agent's log file below

PREFIX = "cloudstack/bootstrap/v1"
RESERVED_PORTS = "49152-49216"
SEED_OVS_VSCTL = (  # hypervisor-installation.rst, "Configure OpenVswitch", verbatim
    ("add-br", "cloudbr"),
    ("add-port", "cloudbr", "eth0"),
    ("set", "port", "cloudbr", "trunks=100,200,300"),
    ("add-br", "mgmt0", "cloudbr", "100"),
    ("add-br", "cloudbr0", "cloudbr", "200"),
    ("add-br", "cloudbr1", "cloudbr", "300"),
)


def agent_toml(
    *, host: str, roles: tuple[str, ...], broker: str, root: Path, password_file: Path
) -> str:
    """The agent's configuration (contract section 6) for one simulated host."""
    role_list = ", ".join(json.dumps(r) for r in roles)
    return (
        f'broker = "{broker}"\n'
        f'host = "{host}"\n'
        f"roles = [{role_list}]\n"
        f'prefix = "{PREFIX}"\n'
        f'root = "{root}"\n'
        "rollback_window = 60\n"  # a busy 2-core machine answers probes late
        "allow_plaintext_auth = true\n"  # the broker is on the simulator's own wire
        # a host comes up before its path to the broker settles: retry soon, not after 1 s
        "\n[reconnect]\ninitial = 0.2\nmax = 5.0\n"
        "\n[auth]\n"
        f'username = "{host}"\n'
        f'password_file = "{password_file}"\n'
    )


def build_seed_ovs(ovs: OvsDaemons) -> None:
    """The seed's OVS layout by hand, its commands verbatim (netdev datapath: the kernel
    here has no openvswitch module)."""
    for argv in SEED_OVS_VSCTL:
        ovs.vsctl(*argv)
        if argv == ("add-br", "cloudbr"):
            ovs.vsctl("set", "bridge", "cloudbr", "datapath_type=netdev")


@dataclass(frozen=True, slots=True)
class Guest:
    """A stand-in VM: a namespace on one of the host's bridges with a test address."""

    ns: Namespace
    vlan: int
    bridge: str
    address: ipaddress.IPv4Interface  # in the VLAN's own subnet
    probe: ipaddress.IPv4Interface  # in one subnet shared by every VLAN: L2 must isolate
    link: tuple[int, str] | None = None  # eth0's index and MAC, when read as it was made


@dataclass(slots=True)
class SimHost:
    layout: HostLayout
    ns: Namespace
    root: Path
    ovs: OvsDaemons | None = None
    agent: subprocess.Popen[bytes] | Forked | None = None
    zygote: Zygote | None = None  # the run's warm interpreter, when the agent is forked
    guests: dict[int, Guest] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.layout.name

    @staticmethod
    def cable(layout: HostLayout, ns: Namespace, fabric: Fabric) -> None:
        """The host's NICs cabled to their switch ports (which ``fabric`` may defer)."""
        # libvirt's migration ports sit inside Linux's ephemeral range (32768-60999): keep
        # outgoing connections (the agent's MQTT session) off them, as a real host must,
        # or a migration listener (or the ports check's stand-in) cannot bind.
        ns.sysctl("net.ipv4.ip_local_reserved_ports", RESERVED_PORTS)
        lag = fabric.spec.bond
        for nic, port in layout.nics.items():
            bonded = lag is not None and nic in lag.nics
            fabric.add_trunk(ns, nic, layout.port_of(nic), port, attach=not bonded)
        if lag is not None:
            ports = [layout.port_of(n) for n in lag.nics]
            fabric.add_lag(f"h{layout.index:03d}b", ports, layout.nics[lag.nics[0]], lag)

    @classmethod
    def build(
        cls,
        layout: HostLayout,
        ns: Namespace,
        root: Path,
        fabric: Fabric,
        *,
        mgmt_vlan: int,
        cable: bool = True,
    ) -> SimHost:
        """The install-time host: uplink, management address, route, and OVS if it uses it.
        ``cable=False``: :meth:`cable` was already called."""
        root.mkdir(parents=True, exist_ok=True)
        host = cls(layout=layout, ns=ns, root=root)
        if cable:
            cls.cable(layout, ns, fabric)
        if layout.backend == "openvswitch":
            host.ovs = OvsDaemons(root, ns, other_config=HOST_CONFIG).start()
        if layout.install_distro == "ifupdown":
            host.write_installer_interfaces(mgmt_vlan)
        iface = layout.uplink
        if layout.install_mode == "seed-ovs":
            iface = host._build_seed_ovs(mgmt_vlan)
        with ns.iproute() as ipr:
            (up,) = ipr.link_lookup(ifname=layout.uplink)
            if layout.install_tagged:
                iface = f"{layout.uplink}.{mgmt_vlan}"
                ipr.link("add", ifname=iface, kind="vlan", link=up, vlan_id=mgmt_vlan)
            for name in [*layout.nics, iface]:
                (idx,) = ipr.link_lookup(ifname=name)
                ipr.link("set", index=idx, state="up")
            addr = layout.install_address
            ipr.addr("add", index=idx, address=str(addr.ip), prefixlen=addr.network.prefixlen)
            if layout.install_gateway is not None:
                # metric 100, as DHCP (NetworkManager, dhclient) leaves it on an installed host
                ipr.route("add", dst="0.0.0.0/0", gateway=str(layout.install_gateway), priority=100)
        return host

    def write_installer_interfaces(self, mgmt_vlan: int) -> None:
        """Debian's /etc/network/interfaces as debian-installer leaves it (static install)."""
        lay = self.layout
        iface = f"{lay.uplink}.{mgmt_vlan}" if lay.install_tagged else lay.uplink
        gateway = f"\tgateway {lay.install_gateway}\n" if lay.install_gateway else ""
        etc = self.root / "etc/network"
        (etc / "interfaces.d").mkdir(parents=True, exist_ok=True)
        (etc / "interfaces").write_text(
            "# This file describes the network interfaces available on your system\n"
            "# and how to activate them. For more information, see interfaces(5).\n\n"
            "source /etc/network/interfaces.d/*\n\n"
            "# The loopback network interface\nauto lo\niface lo inet loopback\n\n"
            "# The primary network interface\n"
            f"allow-hotplug {iface}\niface {iface} inet static\n"
            f"\taddress {lay.install_address}\n{gateway}"
        )

    def _build_seed_ovs(self, mgmt_vlan: int) -> str:
        assert self.ovs is not None
        if mgmt_vlan != 100:
            raise ValueError("seed-ovs builds the seed's VLANs: the management VLAN must be 100")
        build_seed_ovs(self.ovs)
        return "mgmt0"

    # -- the agent ------------------------------------------------------------------------

    def start_agent(self, broker: str, password: str) -> None:
        etc = self.root / "etc/cloudstack-bootstrap"
        etc.mkdir(parents=True, exist_ok=True)
        pw = etc / "mqtt.pass"
        pw.write_text(password + "\n")
        pw.chmod(0o600)
        conf = etc / "agent.toml"
        conf.write_text(
            agent_toml(
                host=self.name,
                roles=self.layout.roles,
                broker=broker,
                root=self.root,
                password_file=pw,
            )
        )
        log = self.root / "var/log/csboot-agent.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        csboot = str(Path(sys.executable).with_name("csboot"))
        argv = [csboot, "agent", "-c", str(conf)]
        if self.zygote is not None:
            try:
                self.agent = self.zygote.spawn(self.ns.path, argv, self.env(), log)
                return
            except (OSError, RuntimeError) as exc:  # the zygote died: start it the plain way
                log_.warning("%s: agent not forked (%s); starting it with nsenter", self.name, exc)
                self.zygote = None
        with log.open("ab") as out:
            self.agent = self.ns.popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=self.env(),
            )

    def env(self) -> dict[str, str]:
        """OVS hosts: keep every OVS tool on this host's own directories."""
        return dict(self.ovs.env) if self.ovs is not None else dict(os.environ)

    def stop(self) -> None:
        if self.agent is not None and self.agent.poll() is None:
            self.agent.terminate()
            try:
                self.agent.wait(5)
            except subprocess.TimeoutExpired:
                self.agent.kill()
                self.agent.wait()
        for g in self.guests.values():
            g.ns.remove()
        self.guests.clear()
        if self.ovs is not None:
            self.ovs.stop()

    # -- guests ---------------------------------------------------------------------------

    def attach_guest(
        self,
        guest_ns: Namespace,
        vlan: int,
        bridge: str,
        address: ipaddress.IPv4Interface,
        probe: ipaddress.IPv4Interface,
        *,
        ovs_port: bool = True,
        ipr: IPRoute | None = None,
    ) -> str | None:
        """A guest on ``bridge``; None when attached, else why it could not be.
        ``ovs_port=False``: the caller adds the OVS port (``add_guest_ports``); ``ipr``: a
        netlink socket open in the host's namespace, for several guests."""
        port = f"g{vlan}"
        with contextlib.ExitStack() as stack:
            if ipr is None:
                ipr = stack.enter_context(self.ns.iproute())
            if not ipr.link_lookup(ifname=bridge):
                return f"no bridge {bridge}"
            veth_pair(self.ns, port, guest_ns, "eth0", ipr=ipr)
            if self.ovs is None:
                (br,) = ipr.link_lookup(ifname=bridge)
                (idx,) = ipr.link_lookup(ifname=port)
                ipr.link("set", index=idx, master=br)
        if self.ovs is not None:
            no_offload(self.ns, port)
            no_offload(guest_ns, "eth0")
            if ovs_port:
                try:
                    self.ovs.vsctl("add-port", bridge, port)
                except Exception as exc:
                    return f"cannot add {port} to {bridge}: {exc}"
        with guest_ns.iproute() as gipr:
            (eth0,) = gipr.get_links(ifname="eth0")
            idx = int(eth0["index"])
            for a in (address, probe):
                gipr.addr("add", index=idx, address=str(a.ip), prefixlen=a.network.prefixlen)
        link = (idx, str(eth0.get_attr("IFLA_ADDRESS")))
        self.guests[vlan] = Guest(guest_ns, vlan, bridge, address, probe, link)
        return None

    def add_guest_ports(self, vlans: list[int]) -> dict[int, str]:
        """The OVS ports of guests attached with ``ovs_port=False``, in one transaction
        (one at a time if it fails, to tell which); the VLANs that failed and why."""
        if self.ovs is None or not vlans:
            return {}
        cmds = [("add-port", self.guests[v].bridge, f"g{v}") for v in vlans]
        try:
            self.ovs.vsctl(*[a for cmd in cmds for a in ("--", *cmd)][1:])
            return {}
        except Exception:
            failed = {}
            for v, cmd in zip(vlans, cmds, strict=True):
                try:
                    self.ovs.vsctl("--may-exist", *cmd)
                except Exception as exc:
                    failed[v] = f"cannot add {cmd[2]} to {cmd[1]}: {exc}"
            return failed
