"""A reboot without our agent: the distro's own tools (Debian's ifupdown) bring the layout
back from the files ``network.persist`` wrote, and every check passes again (root only)."""

from __future__ import annotations

import asyncio
import json
import socket
from pathlib import Path
from typing import Any

import pytest
import yaml

from bootstrap.converge import plan_host
from bootstrap.host.root import HostRoot
from bootstrap.model.ports import merge_spans
from bootstrap.resources.fwboot import RULES_FILE, UNIT, UNIT_FILE
from bootstrap.resources.persist import DISABLED
from bootstrap.resources.persist_render import IFUPDOWN_FILE
from bootstrap.resources.sysctl import CONF, parse_ports
from simulator.checks import CheckResult
from simulator.fleet import Sim
from simulator.hosts import SimHost
from simulator.pytest_plugin import SimFactory
from simulator.reboot import reboot
from tests.sim.marks import FLEET

pytestmark = [*FLEET, pytest.mark.qemu]
REPO = Path(__file__).resolve().parents[2]


def _debian_installed(tmp_path: Path, net: str) -> Path:
    """``net`` with Debian's installer files on every host (``install.distro: ifupdown``)."""
    data: dict[str, Any] = yaml.safe_load((REPO / "nets" / net).read_text())
    data["install"] = {**data.get("install", {}), "distro": "ifupdown"}
    path = tmp_path / net
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def _agent_would_change(host: SimHost) -> list[str]:
    """What our agent would change if it started now: the layout ifupdown built must be
    ours exactly (links, OVS rows, marks, MTUs, address); only the default route, which
    ifupdown adds without our protocol mark, is adopted."""
    with host.ns.inside():
        plan = asyncio.run(plan_host(host.layout.spec, HostRoot(host.root)))
    return [str(c) for c in plan.changes if c.resource != "route/default" or c.action != "adopt"]


def _our_table(host: SimHost) -> list[Any] | None:
    """``nft -j list table inet cloudstack_bootstrap`` in the host's namespace, without
    handles and metainfo; None when there is no such table."""
    done = host.ns.run(
        ["nft", "-j", "list", "table", "inet", "cloudstack_bootstrap"],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        assert "No such file" in done.stderr, done.stderr
        return None
    objs = [o for o in json.loads(done.stdout)["nftables"] if "metainfo" not in o]
    for obj in objs:
        for body in obj.values():
            body.pop("handle", None)
    return objs


def _sysctl(host: SimHost, key: str) -> str:
    path = "/proc/sys/" + key.replace(".", "/")
    return str(host.ns.run(["cat", path], capture_output=True, text=True).stdout).strip()


def _reserves_migration_ports(host: SimHost) -> bool:
    spans = merge_spans(parse_ports(_sysctl(host, "net.ipv4.ip_local_reserved_ports")))
    return any(a <= 49152 and b >= 49216 for a, b in spans)


def _all_pass(fleet: Sim, *, skipped: frozenset[str] = frozenset()) -> dict[str, CheckResult]:
    results = {r.name: r for r in fleet.check()}
    assert set(results) == {"reach", "isolation", "ports", "migration", "cloudstack"}
    for result in results.values():
        assert (result.skipped is not None) == (result.name in skipped), result.name
        assert result.ok, (result.name, [r for r in result.rows if not r.ok])
    return results


def test_ovs_hosts_come_back_with_ifupdown_alone(sim: SimFactory, tmp_path: Path) -> None:
    fleet = sim(_debian_installed(tmp_path, "ovs.yaml"))
    assert [(r.host, r.state, r.detail) for r in fleet.rollout_rows if not r.ok] == []
    kvm1, kvm2 = fleet.hosts["kvm1"], fleet.hosts["kvm2"]
    # auto found ifupdown; the installer's stanza for eth0 is disabled, not deleted
    ours = (kvm1.root / IFUPDOWN_FILE.lstrip("/")).read_text()
    assert "ovs_type OVSBridge" in ours and "address 192.168.42.11/24" in ours
    installer = (kvm1.root / "etc/network/interfaces").read_text()
    assert f"{DISABLED}iface eth0 inet static\n" in installer
    assert f"{DISABLED}\taddress 192.168.10.11/24\n" in installer
    tables = {h.name: _our_table(h) for h in (kvm1, kvm2)}
    assert all(t and any("rule" in o for o in t) for t in tables.values())
    assert all(_reserves_migration_ports(h) for h in (kvm1, kvm2))
    # kvm1 boots on an empty OVSDB (only the files can rebuild it), kvm2 on its own
    first = reboot(fleet, kvm1, fresh_ovsdb=True)
    second = reboot(fleet, kvm2)
    # the kernel forgot; the boot's systemd-sysctl and our unit brought both back
    assert first.sysctl_files == (CONF,) and first.units == (UNIT,)
    assert {h.name: _our_table(h) for h in (kvm1, kvm2)} == tables
    assert all(_reserves_migration_ports(h) for h in (kvm1, kvm2))
    assert {"mgmt0", "cloudbr0", "cloudbr1", "cloudbr"} <= set(first.removed_links)
    assert kvm1.agent is None and kvm2.agent is None
    assert kvm1.ovs is not None
    assert kvm1.ovs.vsctl("br-to-parent", "cloudbr0").strip() == "cloudbr"
    assert kvm1.ovs.vsctl("br-to-vlan", "mgmt0").strip() == "100"
    marks = kvm1.ovs.vsctl("get", "port", "mgmt0", "external_ids")
    assert "cloudstack-bootstrap" in marks  # our agent, when it starts, finds its own rows
    with kvm1.ns.iproute() as ipr:
        (mgmt0,) = ipr.link_lookup(ifname="mgmt0")
        v4 = ipr.get_addr(index=mgmt0, family=socket.AF_INET)
        addrs = [a.get_attr("IFA_ADDRESS") for a in v4]
        (eth0,) = ipr.link_lookup(ifname="eth0")
        # the installer's address did not come back (only the kernel's IPv6 link-local)
        assert ipr.get_addr(index=eth0, family=socket.AF_INET) == ()
    assert addrs == ["192.168.42.11"]
    assert "cloudbr" in second.ifup_output
    assert _agent_would_change(kvm1) == []
    _all_pass(fleet)
    # the control: without our files, the same boot brings nothing back
    kvm3 = fleet.hosts["kvm3"]
    assert _our_table(kvm3) is not None
    (kvm3.root / IFUPDOWN_FILE.lstrip("/")).unlink()
    (kvm3.root / RULES_FILE.lstrip("/")).unlink()
    (kvm3.root / UNIT_FILE.lstrip("/")).unlink()
    (kvm3.root / f"etc/systemd/system/sysinit.target.wants/{UNIT}").unlink()
    (kvm3.root / CONF.lstrip("/")).unlink()
    third = reboot(fleet, kvm3)
    assert third.units == () and third.sysctl_files == ()
    assert _our_table(kvm3) is None
    assert not _reserves_migration_ports(kvm3)
    with kvm3.ns.iproute() as ipr:
        assert not ipr.link_lookup(ifname="mgmt0") or not ipr.get_addr(
            label="mgmt0", family=socket.AF_INET
        )


def test_native_untagged_bridges_come_back_with_ifupdown_alone(
    sim: SimFactory, tmp_path: Path
) -> None:
    """The current guide's layout (cloudbr0 on the bare eth0 holding the installer's own
    management address, cloudbr1 on eth1): Linux bridges through bridge-utils' hook."""
    fleet = sim(_debian_installed(tmp_path, "guide-bare-nic.yaml"))
    assert [(r.host, r.state, r.detail) for r in fleet.rollout_rows if not r.ok] == []
    kvm1 = fleet.hosts["kvm1"]
    installer = (kvm1.root / "etc/network/interfaces").read_text()
    assert f"{DISABLED}iface eth0 inet static\n" in installer
    tables = {name: _our_table(h) for name, h in fleet.hosts.items()}
    assert all(t is not None for t in tables.values())
    for host in fleet.hosts.values():
        result = reboot(fleet, host)
        assert {"cloudbr0", "cloudbr1"} <= set(result.removed_links)
        assert result.units == (UNIT,)
        assert _reserves_migration_ports(host)
    assert {name: _our_table(h) for name, h in fleet.hosts.items()} == tables
    with kvm1.ns.iproute() as ipr:
        (br,) = ipr.link_lookup(ifname="cloudbr0")
        (eth0,) = ipr.link_lookup(ifname="eth0")
        assert ipr.get_links(eth0)[0].get_attr("IFLA_MASTER") == br
        v4 = ipr.get_addr(index=br, family=socket.AF_INET)
        assert [a.get_attr("IFA_ADDRESS") for a in v4] == ["192.168.42.11"]
    assert _agent_would_change(kvm1) == []
    _all_pass(fleet, skipped=frozenset({"isolation"}))  # one guest VLAN: nothing to isolate


def test_cli_reboot_of_an_unknown_run_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    from simulator.cli import main

    assert main(["reboot", "kvm1", "--run", "csbnone00", "--json"]) == 2
    assert "csbnone00" in capsys.readouterr().out
