"""Hosts running a firewall manager (ufw, firewalld) in a namespace, never on the machine.

A manager insists on fixed paths (``/etc/ufw``, ``/lib/ufw``, ``/etc/firewalld``...), so
every command of the host runs through ``enter.sh``: a private mount namespace
(``unshare --mount``) binds the test's copies over those paths and a tmpfs over ``/run``
(ufw's lock file), then ``nsenter`` puts the command in the host's network namespace. The
copies live in the host's file root (``ROOT/etc/ufw``...), which is also the ``--root``
``csboot`` is given, so what the tool reads under its root is what the manager uses.

firewalld talks D-Bus: each host gets its own ``dbus-daemon`` (a system bus with its socket
in the test's temp dir); ``DBUS_SYSTEM_BUS_ADDRESS`` points firewalld, firewall-cmd and the
tool at it.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from simulator.namespaces import Namespace

HOST, PEER = "10.78.0.1", "10.78.0.2"
REPO = Path(__file__).resolve().parents[2]
BUS_CONF = """<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>system</type>
  <listen>unix:path={socket}</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow user="root"/>
    <allow own="*"/>
    <allow send_destination="*"/>
    <allow receive_sender="*"/>
  </policy>
</busconfig>
"""


def wait_for(what: str, predicate: Callable[[], bool], deadline: float = 20.0) -> None:
    end = time.monotonic() + deadline
    while not predicate():
        if time.monotonic() > end:
            raise TimeoutError(f"{what}: not within {deadline} s")
        time.sleep(0.05)


class ManagedHost:
    """One host namespace, its file root and the fixed paths bound from that root."""

    def __init__(self, ns: Namespace, root: Path, binds: Sequence[str]) -> None:
        self.ns = ns
        self.root = root
        self.env: dict[str, str] = {**os.environ, "PYTHONPATH": str(REPO), "LANG": "C"}
        self.script = root.parent / f"enter-{ns.name}.sh"
        lines = ["#!/bin/sh", "set -e"]
        for path in binds:
            lines.append(f"mount --bind '{root}{path}' '{path}'")
        lines.append(
            f"exec nsenter --net='{ns.path}' -- sh -c 'mount -t tmpfs tmpfs /run && exec \"$@\"'"
            ' sh "$@"'
        )
        self.script.write_text("\n".join(lines) + "\n")
        self.script.chmod(0o755)

    def argv(self, argv: Sequence[str]) -> list[str]:
        return ["unshare", "--mount", "--propagation", "private", "--", str(self.script), *argv]

    def run(self, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            self.argv(argv), capture_output=True, text=True, env=self.env, timeout=120, check=False
        )
        if check and result.returncode != 0:
            raise AssertionError(f"{argv}: rc {result.returncode}\n{result.stdout}{result.stderr}")
        return result

    def csboot(self, *args: str) -> subprocess.CompletedProcess[str]:
        return self.run(sys.executable, "-m", "bootstrap.cli", *args, check=False)

    def popen_python(self, code: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            self.argv([sys.executable, "-c", code]),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=self.env,
        )

    def python(self, code: str) -> str:
        return self.run(sys.executable, "-c", code).stdout

    def nft_ruleset(self) -> str:
        """Every table of the host, without counters (traffic moves them by itself)."""
        return self.ns.run(
            ["nft", "--stateless", "list", "ruleset"], capture_output=True, text=True
        ).stdout

    def tree(self) -> dict[str, str]:
        """Every file under the root, by content hash: 'byte for byte' in one value."""
        out = {}
        for path in sorted(self.root.rglob("*")):
            if path.is_file() and not path.is_symlink():
                out[str(path.relative_to(self.root))] = hashlib.sha256(
                    path.read_bytes()
                ).hexdigest()
        return out


def lab(make_ns: Callable[[str], Namespace]) -> tuple[Namespace, Namespace]:
    """``host`` and ``peer`` joined by a veth, 10.78.0.0/24."""
    from simulator.namespaces import veth_pair

    host, peer = make_ns("host"), make_ns("peer")
    veth_pair(host, "eth0", peer, "p1")
    for ns, dev, addr in ((host, "eth0", HOST), (peer, "p1", PEER)):
        with ns.iproute() as ipr:
            (idx,) = ipr.link_lookup(ifname=dev)
            ipr.addr("add", index=idx, address=addr, prefixlen=24)
    return host, peer


def write_doc(path: Path, spec: Mapping[str, Any], version: int = 1) -> Path:
    doc = {
        "apiVersion": "cloudstack-bootstrap/v1",
        "kind": "Role",
        "name": "kvm",
        "version": version,
        "spec": dict(spec),
    }
    path.write_text(yaml.safe_dump(doc))
    return path


@contextlib.contextmanager
def listening(ns: Namespace, ports: Sequence[int]) -> Iterator[None]:
    socks = []
    try:
        with ns.inside():
            for port in ports:
                sock = socket.socket(socket.AF_INET)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                sock.bind(("0.0.0.0", port))
                sock.listen(64)
                socks.append(sock)
        yield
    finally:
        for sock in socks:
            sock.close()


def knock(ns: Namespace, port: int, *, dst: str = HOST, timeout: float = 1.0) -> str:
    """``open``, ``refused`` (RST), ``rejected`` (ICMP) or ``silent`` (dropped)."""
    with ns.inside():
        sock = socket.socket(socket.AF_INET)
    sock.settimeout(timeout)
    try:
        sock.connect((dst, port))
        return "open"
    except ConnectionRefusedError:
        return "refused"
    except TimeoutError:
        return "silent"
    except OSError:  # EHOSTUNREACH / EACCES: an ICMP reject
        return "rejected"
    finally:
        sock.close()


class Firewalld:
    """A private system bus and firewalld in ``host`` (stopped and removed by ``stop``)."""

    def __init__(self, host: ManagedHost) -> None:
        self.host = host
        self.bus_socket = host.root.parent / f"bus-{host.ns.name}.sock"
        conf = host.root.parent / f"bus-{host.ns.name}.conf"
        conf.write_text(BUS_CONF.format(socket=self.bus_socket))
        self.bus = subprocess.Popen(
            ["dbus-daemon", f"--config-file={conf}", "--nofork", "--nopidfile"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        host.env["DBUS_SYSTEM_BUS_ADDRESS"] = f"unix:path={self.bus_socket}"
        wait_for("the private system bus", self.bus_socket.exists)
        self.log = (host.root.parent / f"firewalld-{host.ns.name}.log").open("w")
        self.daemon = subprocess.Popen(
            host.argv(["firewalld", "--nofork", "--nopid", "--log-target", "console"]),
            env=host.env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        wait_for("firewalld", self.running, deadline=30)

    def cmd(self, *args: str, check: bool = True) -> str:
        result = subprocess.run(
            ["firewall-cmd", *args],
            check=False,
            capture_output=True,
            text=True,
            env=self.host.env,
            timeout=60,
        )
        if check and result.returncode != 0:
            raise AssertionError(f"firewall-cmd {args}: {result.stdout}{result.stderr}")
        return result.stdout

    def running(self) -> bool:
        if self.daemon.poll() is not None:
            raise AssertionError(f"firewalld exited: {self.daemon.returncode}")
        return self.cmd("--state", check=False).strip() == "running"

    def stop(self) -> None:
        for proc in (self.daemon, self.bus):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        self.log.close()


def copy_tree(src: str, dst: Path) -> None:
    shutil.copytree(src, dst, symlinks=True)


GUEST1, GUEST2 = "10.79.0.11", "10.79.0.12"


def bridged_guests(
    make_ns: Callable[[str], Namespace], host: Namespace
) -> tuple[Namespace, Namespace]:
    """Two guests on a Linux bridge ``cloudbr0`` of ``host``, with bridged frames sent
    through the host's iptables/nftables (``bridge-nf-call-*tables = 1``, as for
    CloudStack's security groups)."""
    from simulator.namespaces import veth_pair

    g1, g2 = make_ns("g1"), make_ns("g2")
    veth_pair(host, "vnet1", g1, "eth0")
    veth_pair(host, "vnet2", g2, "eth0")
    with host.iproute() as ipr:
        ipr.link("add", ifname="cloudbr0", kind="bridge")
        (br,) = ipr.link_lookup(ifname="cloudbr0")
        for port in ("vnet1", "vnet2"):
            (idx,) = ipr.link_lookup(ifname=port)
            ipr.link("set", index=idx, master=br, state="up")
        ipr.link("set", index=br, state="up")
    for guest, addr in ((g1, GUEST1), (g2, GUEST2)):
        with guest.iproute() as ipr:
            (idx,) = ipr.link_lookup(ifname="eth0")
            ipr.addr("add", index=idx, address=addr, prefixlen=24)
            ipr.link("set", index=idx, state="up")
    for table in ("arptables", "iptables", "ip6tables"):
        host.sysctl(f"net.bridge.bridge-nf-call-{table}", "1")
    return g1, g2


def revert_cycle(resource: str) -> str:
    """Python run in the host: observe, apply ``resource``'s target, print, revert, print
    whether the host is back at the snapshot."""
    return (
        "import asyncio\n"
        "from bootstrap.resources.ufw import UfwResource, desired_rules\n"
        "from bootstrap.resources.firewalld import FirewalldResource\n"
        f"r = {resource}\n"
        "async def main():\n"
        "    snap = await r.observe()\n"
        "    await r.apply(snap, r.target(snap))\n"
        "    print(await r.observe(), flush=True)\n"
        "    input()\n"  # the test knocks while the target is applied
        "    await r.revert(snap)\n"
        "    print(await r.observe() == snap, flush=True)\n"
        "asyncio.run(main())\n"
    )
