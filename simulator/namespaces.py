"""Named network namespaces that we create, enter, run processes in, and remove.

Every namespace carries a run prefix (``csb<run>-``), so concurrent runs never collide and
a cleanup removes exactly what its own run made (never anything else, unlike Mininet's).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import fcntl
import os
import secrets
import signal
import socket
import struct
import subprocess
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from pyroute2 import IPRoute, config, netns

if os.environ.get("CSBOOT_FULLKERNEL") == "1":
    # Inside the emulated (TCG) VM a fork of this interpreter takes many seconds; pyroute2's
    # namespace helpers must be given that long to answer (its default is 2 s).
    config.default_communicate_timeout = 60

NETNS_DIR = Path("/var/run/netns")
PREFIX = "csb"
CLONE_NEWNET = 0x40000000
SIOCGIFFLAGS, SIOCSIFFLAGS, IFF_UP = 0x8913, 0x8914, 0x1
_libc = ctypes.CDLL(None, use_errno=True)


def new_run_id() -> str:
    """A short id that names one run's namespaces: ``csb`` + 5 hex digits."""
    return f"{PREFIX}{secrets.token_hex(3)[:5]}"


class Namespace:
    """One named network namespace. ``with Namespace.create(name) as ns:`` removes it after."""

    def __init__(self, name: str) -> None:
        if len(name) > 64 or "/" in name:
            raise ValueError(f"bad namespace name {name!r}")
        self.name = name

    @classmethod
    def create(cls, name: str) -> Namespace:
        """Make the namespace from this thread (``unshare`` + bind mount, as ``ip netns
        add`` does), not from a forked child: hosts come up in parallel threads."""
        own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
        try:
            if _libc.unshare(CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), f"unshare for {name}")
            try:
                netns.attach(name, "thread-self")
                link_up("lo")  # as every host expects
            finally:
                if _libc.setns(own, CLONE_NEWNET) != 0:
                    raise OSError(ctypes.get_errno(), "setns back")
        finally:
            os.close(own)
        return cls(name)

    @property
    def path(self) -> Path:
        return NETNS_DIR / self.name

    def exists(self) -> bool:
        return self.path.exists()

    def iproute(self) -> IPRoute:
        """A netlink socket inside the namespace (made by this thread inside it: no fork)."""
        with self.inside():
            return IPRoute()

    @contextlib.contextmanager
    def inside(self) -> Iterator[None]:
        """This *thread* inside the namespace for the block; thread-safe (each thread saves
        and restores its own namespace). Sockets made in the block stay in the namespace."""
        own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
        target = os.open(self.path, os.O_RDONLY)
        try:
            if _libc.setns(target, CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), f"setns {self.name}")
            try:
                yield
            finally:
                if _libc.setns(own, CLONE_NEWNET) != 0:
                    raise OSError(ctypes.get_errno(), "setns back")
        finally:
            os.close(own)
            os.close(target)

    def argv(self, argv: Sequence[str]) -> list[str]:
        """``argv`` wrapped to run inside the namespace.

        nsenter execs the command in place (same pid), and unlike a ``preexec_fn`` it is
        safe while other threads run (hosts come up in parallel).
        """
        return ["nsenter", f"--net={self.path}", "--", *argv]

    def popen(self, argv: Sequence[str], **kwargs: Any) -> subprocess.Popen[Any]:
        """Start a process inside the namespace."""
        return subprocess.Popen(self.argv(argv), **kwargs)

    def run(
        self, argv: Sequence[str], *, check: bool = True, **kwargs: Any
    ) -> subprocess.CompletedProcess[Any]:
        return subprocess.run(self.argv(argv), check=check, **kwargs)

    async def exec(self, *argv: str, **kwargs: Any) -> asyncio.subprocess.Process:
        return await asyncio.create_subprocess_exec(*self.argv(argv), **kwargs)

    @contextlib.contextmanager
    def entered(self) -> Iterator[None]:
        """Run this thread inside the namespace for the block (sockets made here stay in it)."""
        netns.pushns(self.name)
        try:
            yield
        finally:
            netns.popns()

    def sysctl(self, key: str, value: str) -> None:
        """``sysctl -w key=value`` in this namespace, without a process: /proc/sys/net is
        the namespace of the thread that opens it."""
        with self.inside():
            Path("/proc/sys", *key.split(".")).write_text(value)

    def pids(self) -> list[int]:
        """Processes whose network namespace is this one (by the namespace file's inode)."""
        return _pids_in([self]).get(self.name, [])

    def remove(self, *, grace: float = 2.0) -> None:
        """Stop every process still in the namespace, then remove it."""
        remove_all([self], grace=grace)

    def __enter__(self) -> Namespace:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.remove()

    def __repr__(self) -> str:
        return f"Namespace({self.name!r})"


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1].startswith("Z")
    except (OSError, IndexError):
        return True


def _pids_in(spaces: Sequence[Namespace]) -> dict[str, list[int]]:
    """Per namespace, the processes inside it: one pass over /proc for all of them."""
    wanted: dict[tuple[int, int], str] = {}
    for ns in spaces:
        with contextlib.suppress(FileNotFoundError):
            st = ns.path.stat()
            wanted[(st.st_dev, st.st_ino)] = ns.name
    found: dict[str, list[int]] = {}
    if not wanted:
        return found
    me = os.getpid()
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) == me:
            continue
        try:
            st = Path(entry.path, "ns", "net").stat()
        except OSError:
            continue
        name = wanted.get((st.st_dev, st.st_ino))
        if name is not None:
            found.setdefault(name, []).append(int(entry.name))
    return found


def remove_all(spaces: Sequence[Namespace], *, grace: float = 3.0) -> list[str]:
    """Stop every process inside any of ``spaces`` at once (SIGTERM, then SIGKILL after
    ``grace``), then remove the namespaces; returns the names removed."""
    spaces = [ns for ns in spaces if ns.exists()]
    pids = [p for found in _pids_in(spaces).values() for p in found]
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + grace
        while pids:
            pids = [p for p in pids if Path(f"/proc/{p}").exists() and not _zombie(p)]
            if not pids or time.monotonic() > deadline:
                break
            time.sleep(0.02)
        if not pids:
            break
    for ns in spaces:
        netns.remove(ns.name)
    return [ns.name for ns in spaces]


def ours(run_id: str) -> list[Namespace]:
    """The namespaces of one run (``run_id-*``), whatever state the run ended in."""
    return [Namespace(n) for n in netns.listnetns() if n.startswith(f"{run_id}-")]


def remove_run(run_id: str) -> list[str]:
    """Remove exactly one run's namespaces (every process in them at once); their names."""
    return remove_all(ours(run_id))


def link_up(ifname: str) -> None:
    """``ip link set IFNAME up`` in this thread's namespace, by ``SIOCSIFFLAGS``: making a
    pyroute2 netlink socket costs ~2 ms of CPU, more than the rest of a guest's plumbing;
    this ioctl, 20 µs."""
    name = ifname.encode()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        got = fcntl.ioctl(s, SIOCGIFFLAGS, struct.pack("16sH22x", name, 0))
        (flags,) = struct.unpack_from("H", got, 16)
        fcntl.ioctl(s, SIOCSIFFLAGS, struct.pack("16sH22x", name, flags | IFF_UP))


def veth_pair(
    a: Namespace,
    a_name: str,
    b: Namespace,
    b_name: str,
    *,
    mtu: int = 1500,
    ipr: IPRoute | None = None,
) -> None:
    """A veth from ``a`` (named ``a_name``) to ``b`` (``b_name``), both up; ``ipr``, a
    netlink socket already open in ``a``, to make several pairs with one.

    Made from inside ``a``, its peer placed in ``b`` by the same request: each end is born
    in its namespace with its name and MTU, never moved (moving a link waits on the
    kernel: made here under a temporary name, then moved twice and renamed, a pair took
    26 ms; 3 ms, and ~1 ms with the ends brought up by ioctl)."""
    peer = {"ifname": b_name, "net_ns_fd": b.name, "mtu": mtu}
    with contextlib.ExitStack() as stack:
        if ipr is None:
            ipr = stack.enter_context(a.iproute())
        ipr.link("add", ifname=a_name, kind="veth", mtu=mtu, peer=peer)
    with a.inside():
        link_up(a_name)
    with b.inside():
        link_up(b_name)
