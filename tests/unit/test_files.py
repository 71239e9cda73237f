"""Host-file resources through the real engine, over a throwaway ``--root``."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from bootstrap.engine.plan import make_plan
from bootstrap.engine.services import NoServices
from bootstrap.engine.transaction import apply_plan
from bootstrap.errors import InvalidDocument
from bootstrap.host.root import HostRoot
from bootstrap.model import validate_spec
from bootstrap.resources.files import file_resources
from bootstrap.resources.security import SelinuxEnforce

AGENT = "etc/cloudstack/agent/agent.properties"

# Excerpts of Debian's libvirt 9 files, as the package ships them.
DEBIAN_LIBVIRTD_CONF = """\
# Master libvirt daemon configuration file
#

#################################################################
#
# Network connectivity controls
#

# Flag listening for secure TLS connections on the public TCP/IP port.
#listen_tls = 0

# Listen for unencrypted TCP connections on the public TCP/IP port.
#listen_tcp = 1

# Override the port for accepting secure TLS connections
#tls_port = "16514"

# Override the port for accepting insecure TCP connections
#tcp_port = "16509"

# Change the authentication scheme for TCP sockets.
#auth_tcp = "sasl"
"""
DEBIAN_QEMU_CONF = """\
# Master configuration file for the QEMU driver.
#vnc_listen = "0.0.0.0"
#
#cgroup_device_acl = [
#    "/dev/null", "/dev/full", "/dev/zero",
#]
"""
DEBIAN_DEFAULT = (
    '# Customizations for the libvirtd.service systemd unit\n\nLIBVIRTD_ARGS="--timeout 120"\n'
)

SEED_KVM: dict[str, Any] = {
    "hypervisor": "kvm",
    "cpu": {"mode": "host-model"},
    "network": {
        "backend": "native",
        "uplink": "eth0",
        "management": {"vlan": 100, "address": "192.168.42.11/24", "gateway": "192.168.42.1"},
        "bridges": [
            {"name": "cloudbr0", "vlan": 200, "traffic": ["public"]},
            {"name": "cloudbr1", "vlan": 300, "traffic": ["guest"]},
        ],
    },
}


def _write(root: Path, rel: str, text: str) -> None:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def debian_root(root: Path) -> Path:
    _write(root, "etc/libvirt/libvirtd.conf", DEBIAN_LIBVIRTD_CONF)
    _write(root, "etc/libvirt/qemu.conf", DEBIAN_QEMU_CONF)
    _write(root, "etc/default/libvirtd", DEBIAN_DEFAULT)
    return root


def snapshot(root: Path) -> dict[str, bytes | str]:
    """Every file (bytes) and symlink (target) under ``root``."""
    out: dict[str, bytes | str] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in filenames + [d for d in dirnames if Path(dirpath, d).is_symlink()]:
            path = Path(dirpath, name)
            rel = str(path.relative_to(root))
            out[rel] = os.readlink(path) if path.is_symlink() else path.read_bytes()
    return out


async def converge(spec: dict[str, Any], root: Path) -> list[str]:
    plan = await make_plan(file_resources(validate_spec(spec), HostRoot(root)))
    outcome = await apply_plan(plan, services=NoServices())
    assert outcome.state == "converged", outcome.error
    return [str(c) for c in plan.changes]


async def test_seed_kvm_on_debian_root_converges_and_is_idempotent(tmp_path: Path) -> None:
    root = debian_root(tmp_path)
    spec = validate_spec(SEED_KVM)
    plan = await make_plan(file_resources(spec, HostRoot(root)))
    names = {c.resource: c for c in plan.changes}
    assert names["file/etc/libvirt/libvirtd.conf"].action == "modify"
    assert "listen_tcp: (unset) -> 1" in names["file/etc/libvirt/libvirtd.conf"].detail
    assert names[f"file/{AGENT}"].action == "create"
    assert "hypervisor.type: (unset) -> kvm" in names[f"file/{AGENT}"].detail
    # files the distribution did not ship are never created
    assert "file/etc/sysconfig/libvirtd" not in names
    assert "file/etc/default/libvirt-bin" not in names
    assert plan.restarts == ["cloudstack-agent", "libvirtd"]

    services = NoServices()
    outcome = await apply_plan(plan, services=services)
    assert outcome.state == "converged"
    assert services.restarted == ["cloudstack-agent", "libvirtd"]

    again = await make_plan(file_resources(spec, HostRoot(root)))
    assert again.changes == []
    assert again.restarts == []

    conf = (root / "etc/libvirt/libvirtd.conf").read_text()
    for line in (
        "listen_tls = 0",
        "listen_tcp = 1",
        'tcp_port = "16509"',
        'auth_tcp = "none"',
        "mdns_adv = 0",
    ):
        assert line in conf.splitlines()
    assert "#listen_tcp = 1\nlisten_tcp = 1\n" in conf  # next to its documentation
    assert conf.startswith(DEBIAN_LIBVIRTD_CONF.split("#listen_tls", maxsplit=1)[0])
    assert 'vnc_listen = "0.0.0.0"' in (root / "etc/libvirt/qemu.conf").read_text().splitlines()
    assert (
        (root / "etc/default/libvirtd")
        .read_text()
        .endswith('LIBVIRTD_ARGS="--timeout 120 --listen"\n')
    )
    assert not (root / "etc/sysconfig/libvirtd").exists()
    props = (root / AGENT).read_text().splitlines()
    for line in (
        "hypervisor.type=kvm",
        "guest.cpu.mode=host-model",
        "network.bridge.type=native",
        "public.network.device=cloudbr0",
        "private.network.device=mgmt0",
        "guest.network.device=cloudbr1",
    ):
        assert line in props
    assert not any(p.startswith("guest.cpu.model") for p in props)
    # the replaced version is kept next to the file; a created file has no backup
    backup = root / "etc/libvirt/libvirtd.conf.csboot.bak"
    assert backup.read_text() == DEBIAN_LIBVIRTD_CONF
    assert not (root / f"{AGENT}.csboot.bak").exists()


async def test_hand_edits_and_unknown_keys_survive(tmp_path: Path) -> None:
    original = (
        "# written by hand, keep me\n"
        "host.tags=x\n"
        "hostname=kvm1.lab.example.org\n"
        "\n"
        "zone : 1\n"
        "workers=5\n"
    )
    _write(tmp_path, AGENT, original)
    (tmp_path / AGENT).chmod(0o600)
    await converge({"agent": {"properties": {"host": "10.0.0.5", "workers": "7"}}}, tmp_path)
    lines = (tmp_path / AGENT).read_text().splitlines()
    assert lines[:5] == [
        "# written by hand, keep me",
        "host.tags=x",
        "hostname=kvm1.lab.example.org",
        "",
        "zone : 1",
    ]
    assert "workers=7" in lines  # edited in place
    assert lines.index("workers=7") == 5
    assert "host=10.0.0.5" in lines
    backup = tmp_path / f"{AGENT}.csboot.bak"
    assert backup.read_text() == original
    assert (tmp_path / AGENT).stat().st_mode & 0o777 == 0o600
    assert backup.stat().st_mode & 0o777 == 0o600


async def test_lxc_direct_networking_and_owned_keys_removed_again(tmp_path: Path) -> None:
    lxc = {"hypervisor": "lxc", "agent": {"direct": {"source_mode": "private", "device": "eth0"}}}
    await converge(lxc, tmp_path)
    props = (tmp_path / AGENT).read_text().splitlines()
    for line in (
        "hypervisor.type=lxc",
        "libvirt.vif.driver=com.cloud.hypervisor.kvm.resource.DirectVifDriver",
        "network.direct.source.mode=private",
        "network.direct.device=eth0",
    ):
        assert line in props
    # direct unset: the derived keys we wrote are ours to remove
    changes = await converge({"hypervisor": "lxc"}, tmp_path)
    assert any("libvirt.vif.driver: com.cloud" in c and "(removed)" in c for c in changes)
    text = (tmp_path / AGENT).read_text()
    assert "network.direct" not in text
    assert "libvirt.vif.driver" not in text
    assert "hypervisor.type=lxc" in text


async def test_custom_cpu_model_is_removed_when_no_longer_custom(tmp_path: Path) -> None:
    await converge({"cpu": {"mode": "custom", "model": "SandyBridge"}}, tmp_path)
    assert "guest.cpu.model=SandyBridge" in (tmp_path / AGENT).read_text().splitlines()
    await converge({"cpu": {"mode": "host-passthrough"}}, tmp_path)
    text = (tmp_path / AGENT).read_text()
    assert "guest.cpu.model" not in text
    assert "guest.cpu.mode=host-passthrough" in text.splitlines()


def test_user_property_naming_a_derived_key_is_rejected(tmp_path: Path) -> None:
    spec = validate_spec({"agent": {"properties": {"hypervisor.type": "lxc"}}})
    with pytest.raises(InvalidDocument) as err:
        file_resources(spec, HostRoot(tmp_path))
    assert err.value.field == "spec.agent.properties.hypervisor.type"
    # without a managed network, the network keys are the user's to set
    spec = validate_spec({"agent": {"properties": {"public.network.device": "br0"}}})
    file_resources(spec, HostRoot(tmp_path))


async def test_socket_activated_libvirt(tmp_path: Path) -> None:
    root = debian_root(tmp_path)
    _write(root, "etc/default/libvirtd", 'LIBVIRTD_ARGS="--listen --timeout 120"\n')
    for unit in ("libvirtd.socket", "libvirtd-tcp.socket"):
        _write(root, f"usr/lib/systemd/system/{unit}", "[Socket]\nListenStream=16509\n")
    await converge(SEED_KVM, root)
    assert (root / "etc/default/libvirtd").read_text() == 'LIBVIRTD_ARGS="--timeout 120"\n'
    wants = root / "etc/systemd/system/sockets.target.wants/libvirtd-tcp.socket"
    assert os.readlink(wants) == "/usr/lib/systemd/system/libvirtd-tcp.socket"
    drop_in = root / "etc/systemd/system/libvirtd-tcp.socket.d/cloudstack-bootstrap.conf"
    assert not drop_in.exists()
    # another port: a drop-in replaces the socket's ListenStream
    await converge({**SEED_KVM, "libvirt": {"tcp_port": 16600}}, root)
    assert drop_in.read_text() == "[Socket]\nListenStream=\nListenStream=16600\n"
    # no TCP listening wanted: the socket is disabled and the drop-in goes
    await converge({**SEED_KVM, "libvirt": {"listen_tcp": False}}, root)
    assert not wants.is_symlink()
    assert not drop_in.exists()


async def test_rhel_and_old_ubuntu_listen_switch(tmp_path: Path) -> None:
    _write(
        tmp_path,
        "etc/sysconfig/libvirtd",
        '# Listen for TCP/IP connections\n#LIBVIRTD_ARGS="--listen"\n',
    )
    _write(tmp_path, "etc/default/libvirt-bin", 'start_libvirtd="yes"\nlibvirtd_opts="-d"\n')
    await converge({}, tmp_path)
    assert (tmp_path / "etc/sysconfig/libvirtd").read_text() == (
        '# Listen for TCP/IP connections\n#LIBVIRTD_ARGS="--listen"\nLIBVIRTD_ARGS="--listen"\n'
    )
    assert (tmp_path / "etc/default/libvirt-bin").read_text() == (
        'start_libvirtd="yes"\nlibvirtd_opts="-d -l"\n'
    )


async def test_revert_restores_exact_bytes_and_removes_created_files(tmp_path: Path) -> None:
    root = debian_root(tmp_path)
    _write(root, "usr/lib/systemd/system/libvirtd-tcp.socket", "[Socket]\n")
    _write(root, "etc/default/libvirtd", "# odd\r\nLIBVIRTD_ARGS='-v'  # keep\r\n\xff")
    before = snapshot(root)
    plan = await make_plan(file_resources(validate_spec(SEED_KVM), HostRoot(root)))
    await apply_plan(plan, services=NoServices())
    assert snapshot(root) != before
    for step in reversed(plan.pending):
        # the snapshot goes through the journal's JSON form, as after a crash
        restored = step.resource.load(step.resource.dump(step.current))
        await step.resource.revert(restored)
    after = snapshot(root)
    backups = {k for k in after if k.endswith(".csboot.bak")}
    assert {k: v for k, v in after.items() if k not in backups} == before
    assert not (root / AGENT).exists()
    assert not (root / "etc/systemd/system/sockets.target.wants/libvirtd-tcp.socket").is_symlink()


async def test_restarts_follow_what_changed(tmp_path: Path) -> None:
    root = debian_root(tmp_path)
    await converge(SEED_KVM, root)
    only_agent = await make_plan(
        file_resources(
            validate_spec({**SEED_KVM, "cpu": {"mode": "host-passthrough"}}), HostRoot(root)
        )
    )
    assert [c.resource for c in only_agent.changes] == [f"file/{AGENT}"]
    assert only_agent.restarts == ["cloudstack-agent"]
    only_libvirt = await make_plan(
        file_resources(
            validate_spec({**SEED_KVM, "libvirt": {"vnc_listen": "127.0.0.1"}}), HostRoot(root)
        )
    )
    assert [c.resource for c in only_libvirt.changes] == ["file/etc/libvirt/qemu.conf"]
    assert only_libvirt.restarts == ["libvirtd"]


async def test_security_selinux_and_apparmor(tmp_path: Path) -> None:
    _write(tmp_path, "etc/selinux/config", "# SELinux\nSELINUX=enforcing\nSELINUXTYPE=targeted\n")
    for profile in ("usr.sbin.libvirtd", "usr.lib.libvirt.virt-aa-helper"):
        _write(tmp_path, f"etc/apparmor.d/{profile}", "profile x {}\n")
    changes = await converge({}, tmp_path)
    assert "~ file/etc/selinux/config: SELINUX: enforcing -> permissive" in changes
    assert (tmp_path / "etc/selinux/config").read_text() == (
        "# SELinux\nSELINUX=permissive\nSELINUXTYPE=targeted\n"
    )
    for profile in ("usr.sbin.libvirtd", "usr.lib.libvirt.virt-aa-helper"):
        link = tmp_path / f"etc/apparmor.d/disable/{profile}"
        assert os.readlink(link) == f"/etc/apparmor.d/{profile}"
    # security comes first, then libvirt, then agent.properties
    names = [r.name for r in file_resources(validate_spec({}), HostRoot(tmp_path))]
    assert names[0] == "file/etc/selinux/config"
    assert names[-1] == f"file/{AGENT}"
    assert names.index("link/etc/apparmor.d/disable/usr.sbin.libvirtd") < names.index(
        "file/etc/libvirt/libvirtd.conf"
    )


async def test_selinux_disabled_is_kept_and_unmanaged_means_untouched(tmp_path: Path) -> None:
    _write(tmp_path, "etc/selinux/config", "SELINUX=disabled\n")
    _write(tmp_path, "etc/apparmor.d/usr.sbin.libvirtd", "profile x {}\n")
    await converge({}, tmp_path)
    assert (tmp_path / "etc/selinux/config").read_text() == "SELINUX=disabled\n"
    _write(tmp_path, "etc/selinux/config", "SELINUX=enforcing\n")
    unmanaged = {"security": {"selinux": "unmanaged", "apparmor_libvirt": "unmanaged"}}
    names = [r.name for r in file_resources(validate_spec(unmanaged), HostRoot(tmp_path))]
    assert not any("selinux" in n or "apparmor" in n for n in names)


async def test_nothing_of_a_missing_distribution_file_is_created(tmp_path: Path) -> None:
    await converge({"security": {"selinux": "permissive"}}, tmp_path)
    assert not (tmp_path / "etc/selinux").exists()
    assert not (tmp_path / "etc/default").exists()
    assert not (tmp_path / "etc/sysconfig").exists()
    assert not (tmp_path / "etc/apparmor.d").exists()


def test_selinux_runtime_wants_permissive_only_where_selinux_runs() -> None:
    enforce = SelinuxEnforce()
    assert enforce.target(True) is False
    assert enforce.target(False) is False
    assert enforce.target(None) is None  # no SELinux: nothing to do
    assert [str(c) for c in enforce.diff(True, False)] == [
        "~ selinux/enforce: setenforce 0 (permissive until reboot)"
    ]
    assert enforce.diff(None, None) == []
    assert enforce.load(enforce.dump(True)) is True


def test_atomic_writes_temporary_files_are_new_private_and_gone(tmp_path: Path) -> None:
    from bootstrap.files import _new_temp, atomic_write

    fds = [_new_temp(tmp_path, ".f.") for _ in range(3)]
    try:
        names = {name for _, name in fds}
        assert len(names) == 3  # each a file that did not exist
        assert {os.stat(n).st_mode & 0o777 for n in names} == {0o600}
    finally:
        for fd, name in fds:
            os.close(fd)
            os.unlink(name)
    atomic_write(tmp_path / "f", b"data", mode=0o640)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f"]  # no temporary left behind
    assert (tmp_path / "f").stat().st_mode & 0o777 == 0o640
