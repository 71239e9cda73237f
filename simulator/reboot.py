"""A simulated host's reboot, with no agent of ours: only the distro brings the network back.

``reboot(sim, host)`` models what a boot leaves and what Debian's boot does:

1. shutdown: our agent stops (SIGTERM); the VMs (the checks' guests) are gone;
2. the kernel forgets: OVS's daemons stop, every link that is not a NIC (bridges, VLANs,
   bonds, OVS's internal ports, guest ports) is deleted, the NICs lose every address and
   route and go down;
3. the kernel forgets the namespace's nftables ruleset (every table: ours, and any other)
   and the sysctls our ``host`` resource sets (``net.ipv4.ip_local_reserved_ports``,
   ``net.bridge.bridge-nf-call-*``) return to the values of a fresh network namespace
   (read from one made for the purpose);
4. boot, in Debian's order:

   a. ``systemd-sysctl`` (sysinit): ``sysctl -p`` of every ``*.conf`` in the host root's
      /etc/sysctl.d, in name order, inside the host's network namespace (only the host's
      own files: the machine's /usr/lib/sysctl.d sets global, non-namespaced keys);
   b. our enabled units (sysinit, ``Before=network-pre.target``): every
      ``cloudstack-bootstrap*`` unit linked from the host root's
      /etc/systemd/system/*.wants/, whose ``ExecStart=`` is parsed from the unit file
      and run as systemd would, in the host's network namespace, with each argument
      that names a file under the host root rewritten to that file (the executable is
      the machine's, e.g. /usr/sbin/nft);
   c. ``openvswitch-switch`` starts the daemons again, on the same database file
      (Debian keeps /etc/openvswitch/conf.db across a reboot) or, ``fresh_ovsdb=True``,
      on an empty one (so only the written configuration can rebuild the rows);
   d. Debian's ``networking`` service runs ``ifup -a``, the real ifupdown, inside the
      host's network namespace and a private mount namespace where the host's own files
      are the machine's: ``<root>/etc/network/interfaces`` and ``interfaces.d`` over
      /etc/network's, the host namespace's own sysfs on /sys (the hooks look for
      /sys/class/net/PORT), a tmpfs on /run (ifupdown's state, nothing leaks to the
      machine) with the host's OVS run directory on /run/openvswitch (the openvswitch
      hook in if-pre-up.d calls ``ovs-vsctl`` there). The hooks in /etc/network/if-*.d
      are the machine's: bridge-utils', openvswitch-switch's and ifenslave's, as the
      packages install them on the host.

Nothing of the kernel's state is kept across the "reboot" any more. Not modelled: other
units (Debian's ``nftables.service`` with /etc/nftables.conf is not enabled on a
simulated host), /etc/modules-load.d (br_netfilter is built into this kernel), and
/etc/sysctl.conf, /run/sysctl.d and /usr/lib/sysctl.d (nothing of ours is there).
"""

from __future__ import annotations

import contextlib
import os
import shlex
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from simulator.ovs import HOST_CONFIG, OvsDaemons

if TYPE_CHECKING:
    from simulator.fleet import Sim
    from simulator.hosts import SimHost

__all__ = ["RebootError", "RebootResult", "reboot"]

STOP_DEADLINE = 10.0
#: the sysctls our ``host`` resource sets (per network namespace), reset at shutdown
RESET_SYSCTLS = (
    "net.ipv4.ip_local_reserved_ports",
    "net.bridge.bridge-nf-call-arptables",
    "net.bridge.bridge-nf-call-iptables",
    "net.bridge.bridge-nf-call-ip6tables",
)
OUR_UNITS = "cloudstack-bootstrap"
PATH_ENV = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}


class RebootError(RuntimeError):
    """The host could not be taken down or booted (what failed, with ifup's output)."""


@dataclass(frozen=True, slots=True)
class RebootResult:
    host: str
    removed_links: tuple[str, ...]
    ifup_output: str
    fresh_ovsdb: bool
    sysctl_files: tuple[str, ...] = ()  # host paths ``sysctl -p`` loaded, in order
    units: tuple[str, ...] = ()  # our units whose ExecStart= ran, in order


def _stop_pids(pids: list[int]) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_DEADLINE
    for pid in pids:
        while Path(f"/proc/{pid}").exists() and _state(pid) != "Z":
            if time.monotonic() > deadline:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                break
            time.sleep(0.05)


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][0]
    except (OSError, IndexError):
        return "Z"


def _stop_agent(host: SimHost) -> None:
    if host.agent is not None and host.agent.poll() is None:
        host.agent.terminate()
        try:
            host.agent.wait(STOP_DEADLINE)
        except subprocess.TimeoutExpired:
            host.agent.kill()
            host.agent.wait()
    host.agent = None
    # an agent started by another process (``csboot-sim reboot`` on a running fleet)
    _stop_pids([p for p in host.ns.pids() if _is_agent(p)])


def _is_agent(pid: int) -> bool:
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return any(Path(a.decode(errors="replace")).name == "csboot" for a in argv[:2]) and (
        b"agent" in argv
    )


def _stop_ovs(host: SimHost) -> None:
    ovs = host.ovs
    if ovs is None:
        return
    if ovs.running:
        ovs.stop()
        return
    pids = []  # daemons a different process started: by their pidfiles
    for daemon in ("ovs-vswitchd", "ovsdb-server"):
        with contextlib.suppress(OSError, ValueError):
            pids.append(int((ovs.rundir / f"{daemon}.pid").read_text().strip()))
    _stop_pids([p for p in pids if p in host.ns.pids()])


def _forget(host: SimHost) -> tuple[str, ...]:
    """Delete every non-NIC link; NICs: no address, no route, down."""
    nics = set(host.layout.nics)
    removed = []
    with host.ns.iproute() as ipr:
        for link in ipr.get_links():
            name = link.get_attr("IFLA_IFNAME")
            if name == "lo" or name in nics:
                continue
            with contextlib.suppress(Exception):
                ipr.link("del", index=link["index"])
                removed.append(name)
        for nic in nics:
            (idx,) = ipr.link_lookup(ifname=nic)
            ipr.flush_addr(index=idx)
            ipr.link("set", index=idx, state="down")
        ipr.flush_routes()
    return tuple(sorted(removed))


def _proc_key(key: str) -> str:
    return "/proc/sys/" + key.replace(".", "/")


def fresh_sysctls() -> dict[str, str]:
    """The values of ``RESET_SYSCTLS`` in a network namespace made just now."""
    script = "; ".join(
        f"cat {shlex.quote(_proc_key(k))} 2>/dev/null || echo" for k in RESET_SYSCTLS
    )
    done = subprocess.run(
        ["unshare", "--net", "sh", "-c", script],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
        env=PATH_ENV,
    )
    values = done.stdout.split("\n")
    return {k: v.strip() for k, v in zip(RESET_SYSCTLS, values, strict=False)}


def _forget_netfilter(host: SimHost) -> None:
    """Every nftables table gone, our sysctls as a fresh namespace has them."""
    host.ns.run(["nft", "flush", "ruleset"], capture_output=True, timeout=30, env=PATH_ENV)
    lines = []
    for key, value in fresh_sysctls().items():
        if Path(_proc_key(key)).exists():  # br_netfilter's keys (built in here)
            lines.append(f"printf '%s\\n' {shlex.quote(value)} > {shlex.quote(_proc_key(key))}")
    host.ns.run(["sh", "-ec", "\n".join(lines)], capture_output=True, timeout=30, env=PATH_ENV)


def boot_sysctl(host: SimHost) -> tuple[str, ...]:
    """systemd-sysctl's work for the host's own /etc/sysctl.d: ``sysctl -p`` of each file."""
    conf_dir = host.root / "etc/sysctl.d"
    files = sorted(conf_dir.glob("*.conf")) if conf_dir.is_dir() else []
    for path in files:
        _boot_step(host, ["sysctl", "-q", "-p", str(path)], f"sysctl -p {path}", timeout=30)
    return tuple(f"/etc/sysctl.d/{p.name}" for p in files)


def _boot_step(host: SimHost, argv: list[str], what: str, *, timeout: float) -> None:
    """One boot-time command in the host's namespace; a failure stops the boot, with its output."""
    done = subprocess.run(
        host.ns.argv(argv),
        capture_output=True,
        text=True,
        timeout=timeout,
        env=PATH_ENV,
        check=False,
    )
    if done.returncode != 0:
        out = (done.stdout + done.stderr)[-2000:]
        raise RebootError(f"{host.name}: {what} exited {done.returncode}: {out}")


def exec_start(unit_text: str) -> list[list[str]]:
    """The ``ExecStart=`` command lines of a unit file's [Service] section, split as
    systemd does for the plain forms (no prefixes such as ``-`` or ``@``: refused)."""
    out: list[list[str]] = []
    section = ""
    for raw in unit_text.splitlines():
        line = raw.strip()
        if line.startswith("[") and line.endswith("]"):
            section = line
            continue
        key, sep, value = line.partition("=")
        if section != "[Service]" or not sep or key.strip() != "ExecStart":
            continue
        value = value.strip()
        if not value:  # ``ExecStart=`` resets the list
            out.clear()
            continue
        if value[0] in "-@:+!|":
            raise RebootError(f"ExecStart prefix not modelled: {value!r}")
        out.append(shlex.split(value))
    return out


def our_units(root: Path) -> list[tuple[str, Path]]:
    """Our enabled units under the host root: (unit name, its file under the root)."""
    found: dict[str, Path] = {}
    system = root / "etc/systemd/system"
    for link in sorted(system.glob(f"*.wants/{OUR_UNITS}*")):
        if not link.is_symlink():
            path = link
        elif (target := link.readlink()).is_absolute():  # a host path: under the root
            path = root / str(target).lstrip("/")
        else:
            path = link.parent / target
        if path.is_file():
            found.setdefault(link.name, path)
    return sorted(found.items())


def _host_arg(root: Path, arg: str) -> str:
    return (
        str(root / arg.lstrip("/"))
        if arg.startswith("/") and (root / arg.lstrip("/")).exists()
        else arg
    )


def boot_units(host: SimHost) -> tuple[str, ...]:
    """Run what systemd would run for our enabled units, in the host's namespace."""
    ran = []
    for name, path in our_units(host.root):
        for line in exec_start(path.read_text(errors="replace")):
            # the executable is the machine's; files it is given are the host's
            argv = [line[0], *(_host_arg(host.root, a) for a in line[1:])]
            _boot_step(host, argv, f"{name}: {shlex.join(argv)}", timeout=60)
        ran.append(name)
    return tuple(ran)


def ifup_script(root: Path) -> str:
    """The shell run in the private mount namespace: the host's files on the distro paths."""
    etc = root / "etc/network"
    run_ovs = root / "var/run/openvswitch"
    q = shlex.quote
    return "\n".join(
        [
            "set -e",
            f"mount --bind {q(str(etc / 'interfaces'))} /etc/network/interfaces",
            f"mount --bind {q(str(etc / 'interfaces.d'))} /etc/network/interfaces.d",
            # sysfs as the host's network namespace sees it: the hooks test
            # /sys/class/net/<port> (nsenter keeps the machine's /sys otherwise)
            "mount -t sysfs csboot-sim-sys /sys",
            "mount -t tmpfs -o mode=0755 csboot-sim-run /run",
            "mkdir -p /run/network /run/openvswitch",
            f"mount --bind {q(str(run_ovs))} /run/openvswitch" if run_ovs.is_dir() else "true",
            "exec ifup -a -v",
        ]
    )


def boot_ifupdown(host: SimHost, *, timeout: float = 60.0) -> str:
    """Debian's ``ifup -a`` over the host's own /etc/network; its output."""
    if not (host.root / "etc/network/interfaces").is_file():
        raise RebootError(f"{host.name}: no /etc/network/interfaces under {host.root}")
    (host.root / "etc/network/interfaces.d").mkdir(parents=True, exist_ok=True)
    argv = host.ns.argv(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c", ifup_script(host.root)]
    )
    done = subprocess.run(
        argv, capture_output=True, text=True, timeout=timeout, env=PATH_ENV, check=False
    )
    output = (done.stdout + done.stderr).strip()
    if done.returncode != 0:
        raise RebootError(f"{host.name}: ifup -a exited {done.returncode}: {output[-2000:]}")
    return output


def reboot(sim: Sim, host: SimHost, *, fresh_ovsdb: bool = False) -> RebootResult:
    """Take ``host`` down as a reboot would, then boot it with the distro's tools only."""
    del sim  # the fleet stays as it is: the switch, the broker and the other hosts
    _stop_agent(host)
    for guest in host.guests.values():
        guest.ns.remove()
    host.guests.clear()
    _stop_ovs(host)
    removed = _forget(host)
    _forget_netfilter(host)
    sysctl_files = boot_sysctl(host)
    units = boot_units(host)
    if host.ovs is not None:
        if fresh_ovsdb:
            host.ovs.db_file.unlink(missing_ok=True)
        host.ovs = OvsDaemons(host.root, host.ns, other_config=HOST_CONFIG).start()
    output = boot_ifupdown(host)
    return RebootResult(host.name, removed, output, fresh_ovsdb, sysctl_files, units)
