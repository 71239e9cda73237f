"""Persistence into the distro's own network configuration: rendering, detection, disabling
the installer's definitions, and the byte-for-byte rollback (pure, or on a temp root)."""

from __future__ import annotations

import asyncio
import configparser
import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from bootstrap.engine.plan import make_plan
from bootstrap.errors import InvalidDocument, ResourceError
from bootstrap.host.root import HostRoot
from bootstrap.model.spec import Network, Spec
from bootstrap.resources.persist import (
    ADDED,
    DISABLED,
    detect,
    disable_ifupdown,
    ifupdown_names,
    persist_resources,
    undo_ifupdown,
)
from bootstrap.resources.persist_render import (
    HEADER,
    IFUPDOWN_FILE,
    NETPLAN_FILE,
    NM_DIR,
    interface_names,
    render_ifupdown,
    render_netplan,
    render_nm,
)
from simulator.nets import load_net

REPO = Path(__file__).resolve().parents[2]
NETS = sorted(p for p in (REPO / "nets").glob("*.yaml"))


def _networks() -> list[tuple[str, Network]]:
    out = []
    for path in NETS:
        layout = load_net(path).layout()
        seen: set[str] = set()
        for host in layout.hosts:
            net = host.spec.network
            assert net is not None
            key = net.model_dump_json(exclude={"management"})
            if key in seen:
                continue
            seen.add(key)
            out.append((f"{path.stem}-{host.name}", net))
    for path in sorted((REPO / "examples").glob("role-*.yaml")):
        doc = yaml.safe_load(path.read_text())
        spec = doc.get("spec", {})
        network = Spec.model_validate(spec).network if "network" in spec else None
        if network is not None:
            out.append((path.stem, network))
    return out


NETWORKS = _networks()
IDS = [n for n, _ in NETWORKS]

OVS = next(net for name, net in NETWORKS if name.startswith("ovs-"))
BASIC = next(net for name, net in NETWORKS if name.startswith("basic-"))


def _stanzas(text: str) -> dict[str, list[str]]:
    """iface NAME -> its option lines (what ifquery would read)."""
    out: dict[str, list[str]] = {}
    cur: list[str] | None = None
    for line in text.splitlines():
        words = line.split()
        if not words or words[0].startswith("#"):
            continue
        if words[0] == "iface":
            cur = out.setdefault(words[1], [])
        elif words[0] in ("auto", "source") or words[0].startswith("allow-"):
            cur = None
        elif cur is not None:
            cur.append(line.strip())
    return out


# -- rendering ----------------------------------------------------------------------------


@pytest.mark.parametrize("net", [n for _, n in NETWORKS], ids=IDS)
def test_ifupdown_defines_every_interface_once(net: Network) -> None:
    ((path, data),) = render_ifupdown(net).items()
    assert path == IFUPDOWN_FILE and data.startswith(HEADER.encode())
    text = data.decode()
    stanzas = _stanzas(text)
    assert set(stanzas) == interface_names(net)
    assert len(ifupdown_names(text)) == text.count("\niface ")
    mgmt = net.device("management")
    if net.management is not None and mgmt is not None:
        assert f"address {net.management.address}" in stanzas[mgmt.name]
    if net.backend == "openvswitch":
        opts = stanzas[net.openvswitch.bridge]
        assert "ovs_type OVSBridge" in opts
        for b in net.all_bridges():
            assert f"ovs_options tag={b.vlan or 0} fake_bridge=true" in stanzas[b.name]
    else:
        for b in net.all_bridges():
            assert f"bridge_ports {net.port_name(b)}" in stanzas[b.name]
            assert f"bridge_stp {'on' if b.stp else 'off'}" in stanzas[b.name]
            if b.vlan is not None:
                assert f"vlan-raw-device {net.uplink_of(b)}" in stanzas[net.port_name(b)]
        for bond in net.bonds:
            assert f"bond-slaves {' '.join(sorted(bond.members))}" in stanzas[bond.name]
            assert f"bond-mode {bond.mode}" in stanzas[bond.name]


@pytest.mark.parametrize("net", [n for _, n in NETWORKS], ids=IDS)
def test_netplan_names_every_interface(net: Network) -> None:
    ((path, data),) = render_netplan(net).items()
    assert path == NETPLAN_FILE
    doc = yaml.safe_load(data)["network"]
    defined = {k for s in ("ethernets", "bonds", "vlans", "bridges") for k in doc.get(s, {})}
    assert defined == interface_names(net)
    assert "&" not in data.decode()  # no YAML anchors: plain, diffable text
    if net.backend == "openvswitch":
        assert "openvswitch" in doc["bridges"][net.openvswitch.bridge]


@pytest.mark.skipif(shutil.which("netplan") is None, reason="netplan.io is not installed")
@pytest.mark.parametrize("net", [n for _, n in NETWORKS], ids=IDS)
def test_netplan_generate_accepts_and_translates(net: Network, tmp_path: Path) -> None:
    for path, data in render_netplan(net).items():
        f = tmp_path / path.lstrip("/")
        f.parent.mkdir(parents=True)
        f.write_bytes(data)
        f.chmod(0o600)
    done = subprocess.run(
        ["netplan", "generate", "--root-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    made = "\n".join(p.read_text() for p in (tmp_path / "run").rglob("*") if p.is_file())
    for name in interface_names(net):
        assert name in made, name
    if net.backend == "openvswitch":
        for b in net.all_bridges():  # a VLAN on an OVS bridge: ovs-vsctl's fake bridge
            assert f"add-br {b.name} {net.openvswitch.bridge} {b.vlan}" in made


@pytest.mark.parametrize("net", [n for _, n in NETWORKS], ids=IDS)
def test_nm_keyfiles(net: Network) -> None:
    files = render_nm(net)
    names: set[str] = set()
    for path, data in files.items():
        assert path.startswith(f"{NM_DIR}/cloudstack-") and path.endswith(".nmconnection")
        parser = configparser.ConfigParser(interpolation=None)
        parser.read_string(data.decode())
        names.add(parser["connection"]["interface-name"])
        assert parser["connection"]["type"]
    assert names == interface_names(net)


def _keyfile(text: str) -> dict[str, dict[str, str]]:
    parser = configparser.ConfigParser(interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string(text)
    return {s: dict(parser[s]) for s in parser.sections()}


@pytest.mark.skipif(shutil.which("nmcli") is None, reason="network-manager is not installed")
@pytest.mark.parametrize("net", [OVS, BASIC], ids=["ovs", "basic"])
def test_nm_keyfiles_survive_nmcli_offline(net: Network) -> None:
    """nmcli --offline reads a keyfile, normalises it and writes it back: every key we
    wrote must come back with the same value (an unknown key or bad value is dropped)."""
    for path, data in render_nm(net).items():
        done = subprocess.run(
            ["nmcli", "--offline", "connection", "modify", "connection.autoconnect", "yes"],
            input=data,
            capture_output=True,
            check=False,
            timeout=30,
        )
        assert done.returncode == 0, (path, done.stderr)
        back = _keyfile(done.stdout.decode())
        for section, keys in _keyfile(data.decode()).items():
            for key, value in keys.items():
                assert back.get(section, {}).get(key) == value, (path, section, key)


# -- detection ----------------------------------------------------------------------------


def _touch(root: Path, path: str, data: str = "") -> Path:
    f = root / path.lstrip("/")
    f.parent.mkdir(parents=True, exist_ok=True)
    f.write_text(data)
    return f


def test_detection_order(tmp_path: Path) -> None:
    host = HostRoot(tmp_path)
    assert detect(host) == "none"
    _touch(tmp_path, "/etc/network/interfaces", "auto lo\niface lo inet loopback\n")
    assert detect(host) == "ifupdown"
    (tmp_path / "etc/NetworkManager").mkdir(parents=True)
    assert detect(host) == "networkmanager"
    _touch(tmp_path, "/etc/netplan/50-cloud-init.yaml", "network: {version: 2}\n")
    assert detect(host) == "networkmanager"  # YAML without the netplan binary: not netplan
    _touch(tmp_path, "/usr/sbin/netplan")
    assert detect(host) == "netplan"


def test_nothing_to_persist_into_is_a_warning_not_a_guess(tmp_path: Path) -> None:
    plan = asyncio.run(make_plan(persist_resources(OVS, HostRoot(tmp_path))))
    assert not plan and len(plan.warnings) == 1
    assert "spec.network.persist" in plan.warnings[0]
    assert list(tmp_path.iterdir()) == []


# -- ifupdown: disabling the installer's stanzas --------------------------------------------

DEBIAN = """\
# This file describes the network interfaces available on your system
source /etc/network/interfaces.d/*

# The loopback network interface
auto lo
iface lo inet loopback

# The primary network interface
allow-hotplug eth0
iface eth0 inet dhcp
# a comment inside the stanza
    hostname kvm1
iface eth0 inet6 auto

auto eth9 eth0
iface eth9 inet dhcp
"""


def test_disable_comments_only_our_interfaces_and_undo_restores() -> None:
    out = disable_ifupdown(DEBIAN, frozenset({"eth0", "cloudbr"}))
    assert ifupdown_names(out) == {"lo", "eth9"}
    assert f"{DISABLED}iface eth0 inet dhcp\n" in out
    assert f"{DISABLED}    hostname kvm1\n" in out
    assert "# a comment inside the stanza\n" in out  # comments stay as they are
    assert f"{DISABLED}auto eth9 eth0\n{ADDED}\nauto eth9\n" in out
    assert "auto lo\niface lo inet loopback\n" in out
    assert undo_ifupdown(out) == DEBIAN
    assert disable_ifupdown(out, frozenset({"eth0", "cloudbr"})) == out  # idempotent
    assert disable_ifupdown(out, frozenset()) == DEBIAN  # nothing of ours: all back


def test_source_line_added_only_when_nothing_reads_our_file() -> None:
    assert disable_ifupdown(DEBIAN, frozenset(), source=IFUPDOWN_FILE) == DEBIAN
    bare = "auto lo\niface lo inet loopback"
    out = disable_ifupdown(bare, frozenset(), source=IFUPDOWN_FILE)
    assert out == f"{bare}\n{ADDED}\nsource {IFUPDOWN_FILE}\n"
    assert undo_ifupdown(out) == bare + "\n"
    relative = "source-directory interfaces.d\n"
    assert disable_ifupdown(relative, frozenset(), source=IFUPDOWN_FILE) == relative


def _snapshot(root: Path) -> dict[str, tuple[bytes, int]]:
    return {
        str(p.relative_to(root)): (p.read_bytes(), p.stat().st_mode & 0o7777)
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


async def _apply_then_revert(resources: list[Any]) -> Any:
    plan = await make_plan(resources)
    for step in plan.pending:
        await step.resource.apply(step.current, step.target)
        assert await step.resource.verify(step.target) == []
    again = await make_plan(resources)
    assert not again, [str(c) for c in again.changes]  # converged
    for step in reversed(plan.pending):
        await step.resource.revert(step.current)
    return plan


def test_ifupdown_apply_and_byte_for_byte_rollback(tmp_path: Path) -> None:
    host = HostRoot(tmp_path)
    _touch(tmp_path, "/etc/network/interfaces", DEBIAN)
    _touch(tmp_path, "/etc/network/interfaces.d/50-installer", "auto eth0\niface eth0 inet dhcp\n")
    before = _snapshot(tmp_path)
    resources = persist_resources(OVS, host)

    async def run() -> None:
        plan = await make_plan(resources)
        names = {c.resource for c in plan.changes}
        assert names == {
            f"file{IFUPDOWN_FILE}",
            "file/etc/network/interfaces",
            "file/etc/network/interfaces.d/50-installer",
        }
        for step in plan.pending:
            await step.resource.apply(step.current, step.target)
        ours = (tmp_path / IFUPDOWN_FILE.lstrip("/")).read_text()
        assert _stanzas(ours).keys() == interface_names(OVS)
        installer = (tmp_path / "etc/network/interfaces").read_text()
        assert "eth0" not in ifupdown_names(installer) and "lo" in ifupdown_names(installer)
        assert not await make_plan(persist_resources(OVS, host))
        for step in reversed(plan.pending):
            await step.resource.revert(step.current)

    asyncio.run(run())
    assert _snapshot(tmp_path) == before  # including the absence of our file


def test_a_foreign_file_at_our_path_is_an_error_naming_it(tmp_path: Path) -> None:
    _touch(tmp_path, "/etc/network/interfaces", "auto lo\n")
    _touch(tmp_path, IFUPDOWN_FILE, "iface cloudbr inet manual\n")
    with pytest.raises(ResourceError) as err:
        asyncio.run(make_plan(persist_resources(OVS, HostRoot(tmp_path))))
    assert IFUPDOWN_FILE in str(err.value)


def test_switching_mode_removes_our_files_and_restores_stanzas(tmp_path: Path) -> None:
    host = HostRoot(tmp_path)
    _touch(tmp_path, "/etc/network/interfaces", DEBIAN)

    async def run() -> None:
        for net in (OVS, OVS.model_copy(update={"persist": "none"})):
            plan = await make_plan(persist_resources(net, host))
            for step in plan.pending:
                await step.resource.apply(step.current, step.target)

    asyncio.run(run())
    assert not (tmp_path / IFUPDOWN_FILE.lstrip("/")).exists()
    assert (tmp_path / "etc/network/interfaces").read_text() == DEBIAN


# -- netplan and NetworkManager: renamed away, and back ---------------------------------------

CLOUD_INIT = "network:\n  version: 2\n  ethernets:\n    eth0:\n      dhcp4: true\n"


def test_netplan_installer_file_renamed_and_restored(tmp_path: Path) -> None:
    host = HostRoot(tmp_path)
    _touch(tmp_path, "/usr/sbin/netplan")
    f = _touch(tmp_path, "/etc/netplan/50-cloud-init.yaml", CLOUD_INIT)
    f.chmod(0o600)
    _touch(tmp_path, "/etc/netplan/70-other.yaml", "network:\n  ethernets:\n    eth7: {}\n")
    before = _snapshot(tmp_path)
    plan = asyncio.run(_apply_then_revert(persist_resources(OVS, host)))
    assert {c.resource for c in plan.changes} == {
        f"file{NETPLAN_FILE}",
        "file/etc/netplan/50-cloud-init.yaml",
    }
    assert _snapshot(tmp_path) == before


def test_netplan_file_with_our_and_other_interfaces_is_refused(tmp_path: Path) -> None:
    _touch(tmp_path, "/usr/sbin/netplan")
    _touch(
        tmp_path,
        "/etc/netplan/50-cloud-init.yaml",
        CLOUD_INIT + "    eth7:\n      dhcp4: true\n",
    )
    with pytest.raises(InvalidDocument) as err:
        asyncio.run(make_plan(persist_resources(OVS, HostRoot(tmp_path))))
    assert err.value.field == "spec.network.persist" and "eth7" in err.value.reason


def test_nm_profile_hidden_away_and_restored(tmp_path: Path) -> None:
    host = HostRoot(tmp_path)
    profile = "[connection]\nid=Wired\ntype=ethernet\ninterface-name=eth0\n[ipv4]\nmethod=auto\n"
    f = _touch(tmp_path, f"{NM_DIR}/Wired connection 1.nmconnection", profile)
    f.chmod(0o600)
    _touch(tmp_path, f"{NM_DIR}/other.nmconnection", profile.replace("eth0", "eth5"))
    before = _snapshot(tmp_path)

    async def check_applied() -> None:
        plan = await make_plan(persist_resources(OVS, host))
        for step in plan.pending:
            await step.resource.apply(step.current, step.target)
        hidden = tmp_path / NM_DIR.lstrip("/") / ".Wired connection 1.nmconnection.csboot-disabled"
        assert hidden.read_text() == profile and hidden.stat().st_mode & 0o777 == 0o600
        assert (tmp_path / NM_DIR.lstrip("/") / "other.nmconnection").exists()
        ours = list((tmp_path / NM_DIR.lstrip("/")).glob("cloudstack-*.nmconnection"))
        assert ours and all(p.stat().st_mode & 0o777 == 0o600 for p in ours)
        for step in reversed(plan.pending):
            await step.resource.revert(step.current)

    asyncio.run(check_applied())
    assert _snapshot(tmp_path) == before


def test_nm_told_to_leave_our_devices_alone_when_ifupdown_persists(tmp_path: Path) -> None:
    host = HostRoot(tmp_path)
    _touch(tmp_path, "/etc/network/interfaces", DEBIAN)
    (tmp_path / "etc/NetworkManager").mkdir(parents=True)
    net = OVS.model_copy(update={"persist": "ifupdown"})
    plan = asyncio.run(_apply_then_revert(persist_resources(net, host)))
    (conf,) = [s for s in plan.steps if s.resource.name.endswith("cloudstack-bootstrap.conf")]
    text = conf.target.data.decode()
    for name in interface_names(OVS):
        assert f"interface-name:{name}" in text


def test_every_dialect_the_host_has_is_disabled_whichever_persists(tmp_path: Path) -> None:
    """Debian with NetworkManager: NM persists, and the installer's ifupdown stanza for
    eth0 (which networking.service would still bring up with DHCP) is disabled too."""
    host = HostRoot(tmp_path)
    _touch(tmp_path, "/etc/network/interfaces", DEBIAN)
    (tmp_path / "etc/NetworkManager").mkdir(parents=True)
    before = _snapshot(tmp_path)

    async def run() -> None:
        plan = await make_plan(persist_resources(OVS, host))
        for step in plan.pending:
            await step.resource.apply(step.current, step.target)
        text = (tmp_path / "etc/network/interfaces").read_text()
        assert "eth0" not in ifupdown_names(text)
        assert IFUPDOWN_FILE not in text  # no source line: ifupdown does not persist here
        assert not (tmp_path / IFUPDOWN_FILE.lstrip("/")).exists()
        for step in reversed(plan.pending):
            await step.resource.revert(step.current)

    asyncio.run(run())
    assert _snapshot(tmp_path) == before


def test_snapshots_survive_the_journal(tmp_path: Path) -> None:
    """Every persist resource's state round-trips through JSON (the crash journal)."""
    _touch(tmp_path, "/usr/sbin/netplan")
    _touch(tmp_path, "/etc/netplan/50-cloud-init.yaml", CLOUD_INIT)
    _touch(tmp_path, "/etc/network/interfaces", DEBIAN)
    resources = persist_resources(OVS, HostRoot(tmp_path))
    plan = asyncio.run(make_plan(resources))
    assert plan.pending
    for step in plan.steps:
        r = step.resource
        assert r.load(json.loads(json.dumps(r.dump(step.current)))) == step.current


def test_what_a_dialect_cannot_say_is_a_plan_warning(tmp_path: Path) -> None:
    _touch(tmp_path, "/usr/sbin/netplan")
    _touch(tmp_path, "/etc/netplan/01-empty.yaml", "network: {version: 2}\n")
    assert OVS.openvswitch.datapath == "netdev"
    plan = asyncio.run(make_plan(persist_resources(OVS, HostRoot(tmp_path))))
    assert any("datapath_type" in w for w in plan.warnings)
    nm = OVS.model_copy(update={"persist": "networkmanager"})
    plan = asyncio.run(make_plan(persist_resources(nm, HostRoot(tmp_path))))
    assert any("fake bridges" in w and "mgmt0" in w for w in plan.warnings)
    assert not asyncio.run(make_plan(persist_resources(BASIC, HostRoot(tmp_path)))).warnings
