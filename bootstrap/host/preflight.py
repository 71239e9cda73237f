"""Preflight: the seed's host requirements, checked before anything is changed.

``gather_facts`` is the imperative shell (it reads /proc and /sys, asks netlink through
pyroute2, runs ``--version`` of libvirtd, QEMU and ovs-vswitchd, and the kernel's
``adjtimex``); ``evaluate`` is pure, so every requirement is tested with hand-made facts.
Kernel facts are the machine's own; libvirt's pid files are read under the file root.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import platform
import re
import shutil
import socket
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from bootstrap.engine.check import Check
from bootstrap.host.root import HostRoot
from bootstrap.model.spec import Spec

__all__ = ["Facts", "Nic", "evaluate", "gather_facts", "parse_version"]

Version = tuple[int, ...]
GIB = 1024**3
MIN_MEMORY = 4 * GIB
#: MemTotal leaves out what firmware and the kernel reserve, so a 4 GiB machine shows
#: about 3.8 GiB; accept that much rather than failing the hardware the seed asks for.
MEMORY_TOLERANCE = 0.9
LIBVIRT_MIN: Version = (0, 9, 4)
LIBVIRT_MIN_OVS: Version = (0, 9, 11)
LIBVIRT_MIN_LXC: Version = (1, 0, 0)
QEMU_MIN: Version = (1, 0)
OVS_MIN: Version = (1, 7, 1)
SIXTY_FOUR_BIT = {"x86_64", "amd64", "aarch64", "arm64", "ppc64le", "ppc64", "s390x", "riscv64"}
GUEST_COMMS = ("qemu", "kvm", "libvirt_lxc")
PID_DIRS = ("/var/run/libvirt/qemu", "/run/libvirt/qemu", "/var/run/libvirt/lxc")


@dataclass(frozen=True, slots=True)
class Nic:
    name: str
    physical: bool


@dataclass(frozen=True, slots=True)
class Facts:
    """What the host is; ``hypervisor``/``openvswitch`` come from the spec when known."""

    fqdn: str
    machine: str
    cpu_flags: frozenset[str]
    kvm_device: bool
    memory_bytes: int
    nics: tuple[Nic, ...]
    libvirt: Version | None
    qemu: Version | None
    ovs: Version | None
    guests: tuple[str, ...]
    time_synced: bool | None  # None: the kernel could not be asked
    hypervisor: Literal["kvm", "lxc"] = "kvm"
    openvswitch: bool = False


def _v(version: Version) -> str:
    return ".".join(map(str, version))


def parse_version(text: str) -> Version | None:
    """The first ``N.N[.N]`` in a ``--version`` banner."""
    m = re.search(r"(\d+)\.(\d+)(?:\.(\d+))?", text)
    return tuple(int(g) for g in m.groups() if g is not None) if m else None


def evaluate(facts: Facts) -> list[Check]:
    """Pure: one check per seed requirement, in the order the seed lists them."""
    return [
        _fqdn(facts),
        _cpu(facts),
        _virtualisation(facts),
        _memory(facts),
        _nic(facts),
        _libvirt(facts),
        _version("qemu", facts.qemu, QEMU_MIN, required=True),
        _version("openvswitch", facts.ovs, OVS_MIN, required=facts.openvswitch),
        _guests(facts),
        _time(facts),
    ]


def _fqdn(facts: Facts) -> Check:
    name = facts.fqdn.strip(".")
    ok = "." in name and not name.startswith("localhost")
    hint = "" if ok else " (not fully qualified: fix /etc/hosts, see the seed)"
    return Check("fqdn", ok, f"{facts.fqdn or '(none)'}{hint}")


def _cpu(facts: Facts) -> Check:
    ok = facts.machine in SIXTY_FOUR_BIT or "lm" in facts.cpu_flags
    return Check("cpu-64bit", ok, facts.machine + ("" if ok else " is not 64-bit"))


def _virtualisation(facts: Facts) -> Check:
    found = sorted(facts.cpu_flags & {"vmx", "svm"})
    if found:
        return Check("hardware-virtualisation", True, f"cpu flag {found[0]}")
    if facts.kvm_device:
        return Check("hardware-virtualisation", True, "/dev/kvm present")
    return Check("hardware-virtualisation", False, "no vmx/svm cpu flag and no /dev/kvm")


def _memory(facts: Facts) -> Check:
    ok = facts.memory_bytes >= MIN_MEMORY * MEMORY_TOLERANCE
    detail = f"{facts.memory_bytes / GIB:.1f} GiB (needs {MIN_MEMORY // GIB} GiB)"
    return Check("memory", ok, detail)


def _nic(facts: Facts) -> Check:
    if not facts.nics:
        return Check("nic", False, "no network interface besides loopback")
    physical = [n.name for n in facts.nics if n.physical]
    if physical:
        return Check("nic", True, ", ".join(physical))
    names = ", ".join(n.name for n in facts.nics)
    return Check("nic", True, f"{names} (virtual only: a physical NIC is preferred)")


def _libvirt(facts: Facts) -> Check:
    need, why = LIBVIRT_MIN, ""
    if facts.openvswitch and need < LIBVIRT_MIN_OVS:
        need, why = LIBVIRT_MIN_OVS, " with openvswitch"
    if facts.hypervisor == "lxc":
        need, why = LIBVIRT_MIN_LXC, " for lxc"
    check = _version("libvirt", facts.libvirt, need, required=True)
    return Check(check.name, check.ok, check.detail + why)


def _version(name: str, found: Version | None, need: Version, *, required: bool) -> Check:
    if found is None:
        return Check(name, not required, "not installed")
    ok = found >= need
    return Check(name, ok, f"{_v(found)} ({'>=' if ok else '<'} {_v(need)})")


def _guests(facts: Facts) -> Check:
    if facts.guests:
        return Check("no-running-guests", False, "running: " + ", ".join(facts.guests))
    return Check("no-running-guests", True, "none")


def _time(facts: Facts) -> Check:
    if facts.time_synced is None:
        return Check("time-sync", False, "the kernel clock state could not be read")
    if facts.time_synced:
        return Check("time-sync", True, "kernel clock synchronised")
    return Check("time-sync", False, "kernel clock not synchronised (STA_UNSYNC): run NTP")


# ---- the imperative shell -------------------------------------------------------------


def gather_facts(host: HostRoot, spec: Spec | None = None) -> Facts:
    """Read the machine. ``spec`` only tells which minimums apply (lxc, openvswitch)."""
    flags = _cpu_flags()
    return Facts(
        fqdn=_fqdn_of_this_host(),
        machine=platform.machine(),
        cpu_flags=flags,
        kvm_device=Path("/dev/kvm").exists(),
        memory_bytes=_memory_bytes(),
        nics=_nics(),
        libvirt=_tool_version("libvirtd", "virtqemud"),
        qemu=_tool_version(
            f"qemu-system-{platform.machine()}", "qemu-kvm", "/usr/libexec/qemu-kvm", "kvm"
        ),
        ovs=_tool_version("ovs-vswitchd"),
        guests=_guests_running(host),
        time_synced=clock_synchronised(),
        hypervisor=spec.hypervisor if spec else "kvm",
        openvswitch=bool(spec and spec.network and spec.network.backend == "openvswitch"),
    )


def _fqdn_of_this_host() -> str:
    """What ``hostname --fqdn`` prints: the canonical name of the host name."""
    name = socket.gethostname()
    with contextlib.suppress(OSError):
        for *_, canonical, _addr in socket.getaddrinfo(name, None, flags=socket.AI_CANONNAME):
            if canonical:
                return canonical
    return name


def _cpu_flags() -> frozenset[str]:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() in {"flags", "Features"}:
                return frozenset(value.split())
    return frozenset()


def _memory_bytes() -> int:
    with contextlib.suppress(OSError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    return 0


def _nics() -> tuple[Nic, ...]:
    from bootstrap.netlink import IPRoute

    arphrd_loopback = 772
    out = []
    with IPRoute() as ipr:
        for link in ipr.get_links():
            name = link.get_attr("IFLA_IFNAME")
            if link["ifi_type"] == arphrd_loopback:
                continue
            out.append(Nic(name, Path(f"/sys/class/net/{name}/device").exists()))
    return tuple(out)


def _tool_version(*candidates: str) -> Version | None:
    for candidate in candidates:
        exe = shutil.which(candidate) or shutil.which(candidate, path="/usr/sbin:/sbin")
        if exe is None:
            continue
        try:
            done = subprocess.run(
                [exe, "--version"], capture_output=True, text=True, timeout=10, check=False
            )
        except (OSError, subprocess.TimeoutExpired):
            continue
        if version := parse_version(done.stdout or done.stderr):
            return version
    return None


def _guests_running(host: HostRoot) -> tuple[str, ...]:
    """QEMU / LXC guest processes on this machine, and libvirt pid files under the root."""
    found: list[str] = []
    for comm in Path("/proc").glob("[0-9]*/comm"):
        with contextlib.suppress(OSError):
            name = comm.read_text().strip()
            if name.startswith(GUEST_COMMS):
                found.append(f"{name} (pid {comm.parent.name})")
    for pid_dir in PID_DIRS:
        found += [f"libvirt guest {p.stem}" for p in sorted(host.path(pid_dir).glob("*.pid"))]
    return tuple(dict.fromkeys(found))


class _Timex(ctypes.Structure):
    """``struct timex`` of <sys/timex.h> (Linux, any word size)."""

    _fields_ = [
        ("modes", ctypes.c_uint),
        ("offset", ctypes.c_long),
        ("freq", ctypes.c_long),
        ("maxerror", ctypes.c_long),
        ("esterror", ctypes.c_long),
        ("status", ctypes.c_int),
        ("constant", ctypes.c_long),
        ("precision", ctypes.c_long),
        ("tolerance", ctypes.c_long),
        ("time_sec", ctypes.c_long),
        ("time_usec", ctypes.c_long),
        ("tick", ctypes.c_long),
        ("ppsfreq", ctypes.c_long),
        ("jitter", ctypes.c_long),
        ("shift", ctypes.c_int),
        ("stabil", ctypes.c_long),
        ("jitcnt", ctypes.c_long),
        ("calcnt", ctypes.c_long),
        ("errcnt", ctypes.c_long),
        ("stbcnt", ctypes.c_long),
        ("tai", ctypes.c_int),
        ("_reserved", ctypes.c_int * 11),
    ]


STA_UNSYNC = 0x0040
TIME_ERROR = 5


def clock_synchronised() -> bool | None:
    """The kernel's own view (what NTP daemons set): read-only ``adjtimex`` (modes 0)."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    except OSError:
        return None
    timex = _Timex()
    state = libc.adjtimex(ctypes.byref(timex))
    if state == -1:
        return None
    return not timex.status & STA_UNSYNC and state != TIME_ERROR
