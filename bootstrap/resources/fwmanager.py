"""The host's firewall manager (firewalld, ufw) and which backend opens our ports.

An accept in our own nftables table only ends *our* chain: a firewalld or ufw chain on the
same hook still rejects, so where a manager is active the ports must be opened through it
(or the apply refuses). ``detect`` reads the host (imperative); ``choose`` is pure.

Detection, in the namespace and file root the tool runs in:

- firewalld: a system bus is reachable (``DBUS_SYSTEM_BUS_ADDRESS``, else
  ``/run/dbus/system_bus_socket``) and ``firewall-cmd --state`` says ``running`` (the
  daemon owns ``org.fedoraproject.FirewallD1`` there). No bus socket: not running, with no
  process started.
- ufw: ``/etc/ufw/ufw.conf`` (under the root) says ``ENABLED=yes``, which is what ufw's
  own boot script reads: a host that would be firewalled by ufw after a reboot counts.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from bootstrap.errors import InvalidDocument, ResourceError
from bootstrap.host.root import HostRoot
from bootstrap.model.ports import Span, merge_spans
from bootstrap.model.spec import Firewall, Spec

if TYPE_CHECKING:  # ``csboot check`` detects managers without loading the engine
    from bootstrap.engine.resource import Resource

__all__ = [
    "Backend",
    "Detected",
    "Manager",
    "choose",
    "detect",
    "forward_bridges",
    "manager_ports",
    "manager_resources",
    "resolve",
    "spans_text",
]

Manager = Literal["firewalld", "ufw"]
Backend = Literal["nftables", "firewalld", "ufw"]

FIELD = "spec.firewall.backend"
DEFAULT_SYSTEM_BUS = "/run/dbus/system_bus_socket"
#: what a manager does to a port nobody opened, in the error an operator reads
_WORDS: dict[Manager, str] = {
    "firewalld": "firewalld is running and rejects what its zone does not allow",
    "ufw": "ufw is active and its default policy denies incoming connections",
}


@dataclass(frozen=True, slots=True)
class Detected:
    """The firewall managers active on the host."""

    firewalld: bool = False
    ufw: bool = False

    @property
    def active(self) -> tuple[Manager, ...]:
        out: list[Manager] = []
        if self.firewalld:
            out.append("firewalld")
        if self.ufw:
            out.append("ufw")
        return tuple(out)


# ---------------------------------------------------------------- pure


def choose(backend: str, detected: Detected) -> Backend:
    """The backend that opens our ports; an ``InvalidDocument`` naming the manager when
    the spec's choice cannot work on this host (raised before anything is applied)."""
    active = detected.active
    if len(active) > 1:
        raise InvalidDocument(
            "both firewalld and ufw are active; each rejects what the other accepts: "
            "stop one of them",
            field=FIELD,
        )
    manager = active[0] if active else None
    if backend == "auto":
        return manager or "nftables"
    if backend == "nftables":
        if manager is not None:
            raise InvalidDocument(
                f"{_WORDS[manager]}: an accept in our nftables table cannot override it; "
                f"use backend: {manager} (or auto) or stop {manager}",
                field=FIELD,
            )
        return "nftables"
    if backend not in ("firewalld", "ufw"):
        raise InvalidDocument(f"unknown backend {backend!r}", field=FIELD)
    if manager != backend:
        state = "running" if backend == "firewalld" else "active"
        raise InvalidDocument(
            f"{backend} is not {state} on this host"
            + (f" ({manager} is)" if manager else "")
            + "; use backend: auto, or start it",
            field=FIELD,
        )
    return backend


def manager_ports(spec: Spec) -> tuple[Span, ...]:
    """What a manager opens: the spec's ``allow_tcp`` and the port libvirtd listens on."""
    firewall = spec.firewall or Firewall()
    spans = [(p.first, p.last) for p in firewall.allow_tcp]
    if (port := spec.libvirt.port) is not None:
        spans.append((port, port))
    return merge_spans(spans)


def spans_text(spans: Iterable[Span]) -> str:
    return ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in spans)


# ---------------------------------------------------------------- the host


def _ufw_enabled(host: HostRoot) -> bool:
    try:
        text = host.path("/etc/ufw/ufw.conf").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return False
    for line in text.splitlines():
        key, _, value = line.strip().partition("=")
        if key.strip() == "ENABLED":
            return value.strip().strip("'\"").lower() == "yes"
    return False


def system_bus_reachable() -> bool:
    address = os.environ.get("DBUS_SYSTEM_BUS_ADDRESS")
    if address:
        return True  # an explicit address: let firewall-cmd judge it
    return Path(DEFAULT_SYSTEM_BUS).exists()


def manager_tool(
    tool: str, *args: str, resource: str, ok: tuple[int, ...] | None = (0,), timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """One run of a firewall manager's own tool (``firewall-cmd``, ``ufw``), in the C locale so
    its words can be read; a missing tool, no answer, or an exit status outside ``ok`` (None:
    any) is a ResourceError carrying the tool's own words."""
    exe = shutil.which(tool)
    if exe is None:
        raise ResourceError(f"{tool} is not installed", resource=resource)
    env = {**os.environ, "LANG": "C", "LC_ALL": "C"}
    command = " ".join((tool, *args))
    try:
        result = subprocess.run(
            [exe, *args], capture_output=True, text=True, timeout=timeout, env=env, check=False
        )
    except subprocess.TimeoutExpired as exc:
        raise ResourceError(f"{command}: no answer in {timeout:g} s", resource=resource) from exc
    if ok is not None and result.returncode not in ok:
        words = (result.stderr or result.stdout).strip()
        raise ResourceError(f"{command}: {words}", resource=resource)
    return result


def _firewalld_running() -> bool:
    if shutil.which("firewall-cmd") is None or not system_bus_reachable():
        return False
    result = manager_tool("firewall-cmd", "--state", resource="firewalld", ok=None, timeout=30)
    return result.returncode == 0 and result.stdout.strip() == "running"


def detect(host: HostRoot) -> Detected:
    return Detected(firewalld=_firewalld_running(), ufw=_ufw_enabled(host))


def forward_bridges(spec: Spec) -> tuple[str, ...]:
    """Linux bridges whose bridged frames a manager's forward policy would drop: only with
    security groups (``bridge-nf-call-iptables = 1``) and only native bridges (Open
    vSwitch's datapath never passes frames to netfilter)."""
    if spec.host is None or not spec.host.security_groups or spec.network is None:
        return ()
    if spec.network.backend != "native":
        return ()
    return tuple(b.name for b in spec.network.all_bridges())


def manager_resources(
    spec: Spec, host: HostRoot, *, recovering: bool = False
) -> list[Resource[Any]]:
    """The firewall resources for the backend this host needs (none without ``firewall``).

    With a manager, our own nftables table is removed if an earlier apply made it (it is
    ours; beside a manager it could only add a second, contradicting policy), and so are
    its boot file and unit (``fwboot``): a manager persists its own rules.
    """
    from bootstrap.resources.firewall import FirewallResource
    from bootstrap.resources.firewalld import FirewalldResource
    from bootstrap.resources.fwboot import boot_resources
    from bootstrap.resources.ufw import UfwResource, desired_rules

    if spec.firewall is None:
        return boot_resources(None, host)
    backend = None if recovering else resolve(spec, host)
    if backend == "nftables":
        return [FirewallResource(spec.firewall), *boot_resources(spec.firewall, host)]
    sources = tuple(str(s) for s in spec.firewall.sources)
    ports = manager_ports(spec)
    mgmt = spec.network.device("management") if spec.network else None
    ufw = UfwResource(desired_rules(ports, sources, forward_bridges(spec)))
    firewalld = FirewalldResource(
        ports, sources, interface=mgmt.name if mgmt else None, bridges=forward_bridges(spec)
    )
    unboot = boot_resources(None, host)
    if backend == "ufw":
        return [FirewallResource(spec.firewall, remove=True), *unboot, ufw]
    if backend == "firewalld":
        return [FirewallResource(spec.firewall, remove=True), *unboot, firewalld]
    # recovering: the journal picks (the boot files revert from its snapshots whatever
    # their target here)
    return [FirewallResource(spec.firewall), *boot_resources(spec.firewall, host), ufw, firewalld]


def resolve(spec: Spec, host: HostRoot) -> Backend | None:
    """The backend for this spec on this host (None: no ``firewall`` section)."""
    if spec.firewall is None:
        return None
    return choose(spec.firewall.backend, detect(host))
