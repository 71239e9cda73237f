"""Preflight: each seed requirement passes and fails on hand-made facts."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from bootstrap.engine.check import Check
from bootstrap.host.preflight import Facts, Nic, evaluate, gather_facts, parse_version
from bootstrap.host.root import HostRoot

GOOD = Facts(
    fqdn="kvm1.lab.example.org",
    machine="x86_64",
    cpu_flags=frozenset({"lm", "vmx", "sse2"}),
    kvm_device=True,
    memory_bytes=16 * 1024**3,
    nics=(Nic("eth0", physical=True),),
    libvirt=(9, 0, 0),
    qemu=(7, 2, 5),
    ovs=(3, 1, 0),
    guests=(),
    time_synced=True,
)
NAMES = [
    "fqdn",
    "cpu-64bit",
    "hardware-virtualisation",
    "memory",
    "nic",
    "libvirt",
    "qemu",
    "openvswitch",
    "no-running-guests",
    "time-sync",
]


def check(facts: Facts, name: str) -> Check:
    return next(c for c in evaluate(facts) if c.name == name)


def test_a_good_host_passes_everything() -> None:
    checks = evaluate(GOOD)
    assert [c.name for c in checks] == NAMES
    assert all(c.ok for c in checks), [c for c in checks if not c.ok]


@pytest.mark.parametrize(
    ("name", "change", "ok"),
    [
        ("fqdn", {"fqdn": "kvm1"}, False),
        ("fqdn", {"fqdn": "localhost.localdomain"}, False),
        ("fqdn", {"fqdn": "kvm1.lab.example.org."}, True),
        ("cpu-64bit", {"machine": "i686", "cpu_flags": frozenset({"vmx"})}, False),
        ("cpu-64bit", {"machine": "aarch64", "cpu_flags": frozenset()}, True),
        ("hardware-virtualisation", {"cpu_flags": frozenset({"lm"}), "kvm_device": False}, False),
        ("hardware-virtualisation", {"cpu_flags": frozenset({"svm"}), "kvm_device": False}, True),
        ("hardware-virtualisation", {"cpu_flags": frozenset(), "kvm_device": True}, True),
        ("memory", {"memory_bytes": 2 * 1024**3}, False),
        ("memory", {"memory_bytes": 3 * 1024**3}, False),
        ("memory", {"memory_bytes": int(3.8 * 1024**3)}, True),  # a 4 GiB box's MemTotal
        ("memory", {"memory_bytes": 4 * 1024**3}, True),
        ("nic", {"nics": ()}, False),
        ("nic", {"nics": (Nic("veth0", physical=False),)}, True),
        ("libvirt", {"libvirt": None}, False),
        ("libvirt", {"libvirt": (0, 9, 3)}, False),
        ("libvirt", {"libvirt": (0, 9, 4)}, True),
        ("libvirt", {"libvirt": (0, 9, 10), "openvswitch": True}, False),
        ("libvirt", {"libvirt": (0, 9, 11), "openvswitch": True}, True),
        ("libvirt", {"libvirt": (0, 9, 13), "hypervisor": "lxc"}, False),
        ("libvirt", {"libvirt": (1, 0, 0), "hypervisor": "lxc"}, True),
        ("qemu", {"qemu": (0, 15, 1)}, False),
        ("qemu", {"qemu": None}, False),
        ("qemu", {"qemu": (1, 0)}, True),
        ("openvswitch", {"ovs": (1, 7, 0)}, False),
        ("openvswitch", {"ovs": (1, 7, 1)}, True),
        ("openvswitch", {"ovs": None}, True),
        ("openvswitch", {"ovs": None, "openvswitch": True}, False),
        ("no-running-guests", {"guests": ("qemu-system-x86 (pid 42)",)}, False),
        ("time-sync", {"time_synced": False}, False),
        ("time-sync", {"time_synced": None}, False),
    ],
)
def test_each_requirement(name: str, change: dict[str, object], ok: bool) -> None:
    result = check(dataclasses.replace(GOOD, **change), name)  # type: ignore[arg-type]
    assert result.ok is ok, result
    assert result.detail


def test_details_say_why() -> None:
    assert check(dataclasses.replace(GOOD, ovs=None), "openvswitch").detail == "not installed"
    assert (
        "0.9.11"
        in check(dataclasses.replace(GOOD, libvirt=(0, 9, 5), openvswitch=True), "libvirt").detail
    )
    nic = check(dataclasses.replace(GOOD, nics=(Nic("veth0", False), Nic("eth1", True))), "nic")
    assert nic.detail == "eth1"
    guests = check(
        dataclasses.replace(GOOD, guests=("libvirt guest i-2-3-VM",)), "no-running-guests"
    )
    assert "i-2-3-VM" in guests.detail


def test_parse_version_banners() -> None:
    assert parse_version("libvirtd (libvirt) 9.0.0\n") == (9, 0, 0)
    assert parse_version("QEMU emulator version 7.2.5 (Debian 1:7.2+dfsg-7)") == (7, 2, 5)
    assert parse_version("ovs-vswitchd (Open vSwitch) 3.1.0\nDPDK 22.11") == (3, 1, 0)
    assert parse_version("QEMU emulator version 1.0, Copyright") == (1, 0)
    assert parse_version("no version here") is None


def test_gather_facts_on_this_machine(tmp_path: Path) -> None:
    pid_dir = tmp_path / "var/run/libvirt/qemu"
    pid_dir.mkdir(parents=True)
    (pid_dir / "i-2-3-VM.pid").write_text("1\n")
    facts = gather_facts(HostRoot(tmp_path))
    assert facts.memory_bytes > 0
    assert facts.machine
    assert "libvirt guest i-2-3-VM" in facts.guests
    assert len(evaluate(facts)) == len(NAMES)
