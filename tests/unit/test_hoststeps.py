"""Issue 14 without root: the spec's new sections, libvirt's two modes and the modular
daemons as files, chrony's sources, the hand-off's ownership."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from bootstrap.converge import converge, plan_host
from bootstrap.errors import InvalidDocument
from bootstrap.host.listeners import parse_tracking
from bootstrap.host.root import HostRoot
from bootstrap.model import validate_spec
from bootstrap.resources.timesync import edit_sources
from tests.setupagent import SOCKETS, setup_agent_secure

KEY = "-----BEGIN PGP PUBLIC KEY BLOCK-----\n\nmDMEZ...\n-----END PGP PUBLIC KEY BLOCK-----\n"


def field_of(spec: dict[str, Any]) -> str:
    with pytest.raises(InvalidDocument) as err:
        validate_spec(spec)
    return err.value.field


# --- the model -------------------------------------------------------------------------


def test_mode_fills_in_the_booleans_and_the_booleans_imply_the_mode() -> None:
    tls = validate_spec({"libvirt": {"mode": "tls"}}).libvirt
    assert (tls.listen_tls, tls.listen_tcp, tls.port) == (True, False, 16514)
    old = validate_spec({"libvirt": {"listen_tcp": False, "listen_tls": True}}).libvirt
    assert old.mode == "tls"
    assert validate_spec({}).libvirt.mode == "tcp"
    both = validate_spec({"libvirt": {"listen_tcp": True, "listen_tls": True}}).libvirt
    assert both.mode is None and both.port == 16509  # an older document keeps its meaning


def test_a_mode_contradicted_by_a_boolean_names_the_boolean() -> None:
    assert field_of({"libvirt": {"mode": "tls", "listen_tcp": True}}) == "spec.libvirt.listen_tcp"
    assert field_of({"libvirt": {"mode": "tcp", "listen_tls": True}}) == "spec.libvirt.listen_tls"
    assert field_of({"libvirt": {"mode": "udp"}}) == "spec.libvirt.mode"


@pytest.mark.parametrize(
    ("packages", "field"),
    [
        ({"repository": {"url": "https://download.cloudstack.org/ubuntu"}}, "repository.key"),
        ({"repository": {"url": "ftp://x", "key": KEY}}, "repository.url"),
        ({"repository": {"url": "https://x", "key": "not a key"}}, "repository.key"),
        ({"repository": {"url": "https://x", "key": KEY, "trusted": True}}, "repository.trusted"),
        ({"install": ["cloudstack-agent", "cloudstack-agent"]}, "install[1]"),
        ({"install": ["Bad Name"]}, "install[0]"),
        ({"enable": ["cloudstack-agent"]}, "enable[0]"),
        ({"manager": "yum"}, "manager"),
    ],
)
def test_packages_errors_name_their_field(packages: dict[str, Any], field: str) -> None:
    assert field_of({"packages": packages}) == f"spec.packages.{field}"


def test_time_needs_servers() -> None:
    assert field_of({"time": {"servers": []}}) == "spec.time.servers"
    assert field_of({"time": {"servers": ["-oops"]}}) == "spec.time.servers[0]"
    spec = validate_spec({"time": {"servers": ["ntp1.lab"]}, "packages": {}})
    assert spec.packages is not None and spec.packages.install == ("cloudstack-agent", "chrony")


# --- libvirt's modes as files ----------------------------------------------------------


def socket_root(root: Path) -> HostRoot:
    (root / "etc/libvirt").mkdir(parents=True)
    (root / "etc/default").mkdir(parents=True)
    (root / "etc/default/libvirtd").write_text('LIBVIRTD_ARGS=""\n')
    units = root / "lib/systemd/system"
    units.mkdir(parents=True)
    for unit in (*SOCKETS, "libvirtd.service"):
        (units / unit).write_text("[Unit]\n")
    return HostRoot(root)


def changes(spec: dict[str, Any], host: HostRoot) -> dict[str, str]:
    plan = asyncio.run(plan_host(validate_spec(spec), host))
    return {c.resource: c.detail for c in plan.changes}


def test_tls_mode_is_what_setup_agent_s_leaves(tmp_path: Path) -> None:
    host = socket_root(tmp_path)
    plan = changes({"libvirt": {"mode": "tls"}}, host)
    for unit in SOCKETS:
        assert plan[f"link/etc/systemd/system/{unit}"] == "-> /dev/null"
    assert plan["file/etc/default/libvirtd"] == 'LIBVIRTD_ARGS: "" -> "--listen"'
    conf = plan["file/etc/libvirt/libvirtd.conf"]
    assert "listen_tls: (unset) -> 1" in conf and "listen_tcp: (unset) -> 0" in conf
    assert 'tls_port: (unset) -> "16514"' in conf
    assert plan["file/etc/libvirt/libvirt.conf"] == 'remote_mode: (unset) -> "legacy"'


def test_tcp_mode_keeps_socket_activation(tmp_path: Path) -> None:
    host = socket_root(tmp_path)
    plan = changes({"libvirt": {"mode": "tcp"}}, host)
    assert not any(r.startswith("link/etc/systemd/system/libvirtd") for r in plan)
    wants = "link/etc/systemd/system/sockets.target.wants/libvirtd-tcp.socket"
    assert plan[wants] == "-> /lib/systemd/system/libvirtd-tcp.socket"
    assert "file/etc/default/libvirtd" not in plan  # no --listen with socket activation


def test_modular_daemons_give_way_to_libvirtd(tmp_path: Path) -> None:
    host = socket_root(tmp_path)
    units = tmp_path / "lib/systemd/system"
    wants = tmp_path / "etc/systemd/system/sockets.target.wants"
    wants.mkdir(parents=True)
    for unit in ("virtqemud.socket", "virtqemud-ro.socket", "virtproxyd.socket"):
        (units / unit).write_text("[Unit]\n")
    (wants / "virtqemud.socket").symlink_to("/lib/systemd/system/virtqemud.socket")
    plan = changes({"libvirt": {"mode": "tls"}}, host)
    for unit in ("virtqemud.socket", "virtqemud-ro.socket", "virtproxyd.socket"):
        assert plan[f"link/etc/systemd/system/{unit}"] == "-> /dev/null"
    enable = "link/etc/systemd/system/multi-user.target.wants/libvirtd.service"
    assert plan[enable] == "-> /lib/systemd/system/libvirtd.service"
    (wants / "virtqemud.socket").unlink()  # libvirtd is the default: nothing modular touched
    again = changes({"libvirt": {"mode": "tls"}}, host)
    assert not any("virtqemud" in r or "virtproxyd" in r or "libvirtd.service" in r for r in again)


# --- time ------------------------------------------------------------------------------

DEBIAN_CHRONY = """# Welcome to the chrony configuration file.
confdir /etc/chrony/conf.d

# Use Debian vendor zone.
pool 2.debian.pool.ntp.org iburst

sourcedir /run/chrony-dhcp
driftfile /var/lib/chrony/chrony.drift
"""


def test_chrony_sources_replace_the_pool_and_keep_the_rest() -> None:
    edited = edit_sources(DEBIAN_CHRONY, ["server ntp1.lab iburst", "server 10.0.0.1 iburst"])
    assert edited == DEBIAN_CHRONY.replace(
        "pool 2.debian.pool.ntp.org iburst\n", "server ntp1.lab iburst\nserver 10.0.0.1 iburst\n"
    )
    assert edit_sources(edited, ["server ntp1.lab iburst", "server 10.0.0.1 iburst"]) == edited
    assert edit_sources("driftfile x", ["server a"]) == "driftfile x\nserver a\n"


def test_time_converges_once(tmp_path: Path) -> None:
    (tmp_path / "etc/chrony").mkdir(parents=True)
    (tmp_path / "etc/chrony/chrony.conf").write_text(DEBIAN_CHRONY)
    (tmp_path / "lib/systemd/system").mkdir(parents=True)
    (tmp_path / "lib/systemd/system/chrony.service").write_text(
        "[Service]\nExecStart=/usr/sbin/chronyd\n[Install]\nWantedBy=multi-user.target\n"
    )
    host = HostRoot(tmp_path)
    spec = validate_spec({"time": {"servers": ["ntp1.lab"]}})
    _plan, outcome = asyncio.run(converge(spec, host))
    assert outcome.ok, outcome.error
    assert "server ntp1.lab iburst\n" in (tmp_path / "etc/chrony/chrony.conf").read_text()
    link = tmp_path / "etc/systemd/system/multi-user.target.wants/chrony.service"
    assert str(link.readlink()) == "/lib/systemd/system/chrony.service"
    assert {c.resource for c in outcome.changes} >= {"service/chrony.service", "service/chrony"}
    assert not asyncio.run(plan_host(spec, host))


def test_tracking_is_read_as_chronyc_prints_it() -> None:
    synced = "Reference ID    : C0A80101 (192.168.1.1)\nLeap status     : Normal\n"
    assert parse_tracking(synced) == (True, "leap status Normal, reference C0A80101 (192.168.1.1)")
    assert not parse_tracking(
        "Reference ID    : 00000000 ()\nLeap status     : Not synchronised\n"
    )[0]


# --- the hand-off ----------------------------------------------------------------------

ROLE = {
    "apiVersion": "cloudstack-bootstrap/v1",
    "kind": "Role",
    "name": "kvm",
    "version": 1,
    "spec": {
        "libvirt": {"mode": "tls"},
        "agent": {"properties": {"host": "192.168.42.10", "zone": "1", "workers": "5"}},
    },
}


def csboot(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bootstrap.cli", *args], capture_output=True, text=True, check=False
    )


def test_plan_lists_what_is_still_ours_after_the_hand_off(tmp_path: Path) -> None:
    root = tmp_path / "root"
    socket_root(root)
    (root / "etc/cloudstack/agent").mkdir(parents=True)
    (root / "etc/cloudstack/agent/agent.properties").write_text("")
    doc = tmp_path / "role.yaml"
    doc.write_text(yaml.safe_dump(ROLE))
    assert csboot("apply", "-f", str(doc), "--root", str(root)).returncode == 0
    before = csboot("plan", "-f", str(doc), "--root", str(root))
    assert before.returncode == 0 and "handed off" not in before.stdout

    setup_agent_secure(root)
    after = csboot("plan", "-f", str(doc), "--root", str(root))
    assert after.returncode == 0, after.stdout  # nothing to change: CloudStack's now
    assert "handed off to CloudStack (agent.properties has a guid)" in after.stdout
    ours = after.stdout.split("still ours:\n")[1]
    assert "file/etc/libvirt/libvirtd.conf: mdns_adv" in ours
    assert "file/etc/cloudstack/agent/agent.properties: " in ours and "workers" in ours
    assert "host" not in ours.split("agent.properties: ")[1].split("\n")[0].split(", ")
    assert "file/etc/default/libvirtd" not in ours and "libvirtd.socket" not in ours


def test_the_spec_can_declare_the_hand_off(tmp_path: Path) -> None:
    host = socket_root(tmp_path)
    (tmp_path / "etc/cloudstack/agent").mkdir(parents=True)
    (tmp_path / "etc/cloudstack/agent/agent.properties").write_text("host=10.1.1.5\n")
    spec = dict(ROLE["spec"])  # type: ignore[arg-type]
    plan = changes({**spec, "agent": {**spec["agent"], "handed_off": True}}, host)
    assert "host:" not in plan.get("file/etc/cloudstack/agent/agent.properties", "")
    assert not any(r.startswith("link/") or r == "file/etc/default/libvirtd" for r in plan)
    assert changes(spec, host)["file/etc/cloudstack/agent/agent.properties"].startswith(
        "host: 10.1.1.5 -> 192.168.42.10"
    )
