"""Kernel settings CloudStack's KVM agent relies on: live in /proc/sys, persisted in files.

- ``net.ipv4.ip_local_reserved_ports``: libvirt's migration ports (49152-49215 by default,
  the seed opens 49152-49216) lie inside Linux's ephemeral range (32768-60999), so an
  outgoing connection can take one and a migration then fails to listen. We *add* our
  ranges to what the host already reserves, never drop the host's.
- ``host.security_groups``: CloudStack's KVM security groups (``security_group.py``)
  filter bridged guest traffic with iptables/ebtables, which sees bridged frames only with
  ``br_netfilter`` and ``net.bridge.bridge-nf-call-{arp,ip,ip6}tables = 1``. The module is
  loaded (``modprobe``) where ``/proc/sys/net/bridge`` is missing and listed in
  ``/etc/modules-load.d/cloudstack-bootstrap.conf`` so it is there at boot, before
  ``systemd-sysctl`` reads our file.

Persisted in ``/etc/sysctl.d/60-cloudstack-bootstrap.conf``, a file that is wholly ours.
These sysctls are per network namespace: the live values are those of the namespace the
tool runs in (each simulated host's own). A revert writes back the values observed before
(and the files byte for byte); a loaded module stays loaded (its sysctls are reverted).
"""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from bootstrap.engine.resource import Action, Change, Resource
from bootstrap.errors import ResourceError
from bootstrap.files import atomic_write, read_bytes
from bootstrap.host.root import HostRoot
from bootstrap.model.ports import Span, merge_spans
from bootstrap.model.spec import HostSettings
from bootstrap.resources.filestate import FileState

__all__ = [
    "BRIDGE_KEYS",
    "CONF",
    "MODULES",
    "RESERVED",
    "SysctlResource",
    "SysctlState",
    "format_ports",
    "parse_ports",
]

RESERVED = "net.ipv4.ip_local_reserved_ports"
BRIDGE_KEYS = (
    "net.bridge.bridge-nf-call-arptables",
    "net.bridge.bridge-nf-call-iptables",
    "net.bridge.bridge-nf-call-ip6tables",
)
CONF = "/etc/sysctl.d/60-cloudstack-bootstrap.conf"
MODULES = "/etc/modules-load.d/cloudstack-bootstrap.conf"
NAME = "sysctl/cloudstack-bootstrap"
HEADER = "# managed by cloudstack-bootstrap: replaced whole on every apply\n"
PROC = Path("/proc/sys")


@dataclass(frozen=True, slots=True)
class SysctlState:
    """Live values of the keys we manage (``None``: the key does not exist, e.g. no
    br_netfilter yet) and our two files."""

    values: tuple[tuple[str, str | None], ...]
    conf: FileState = field(default_factory=FileState)
    modules: FileState = field(default_factory=FileState)

    def value(self, key: str) -> str | None:
        return dict(self.values).get(key)


# ---------------------------------------------------------------- pure


def parse_ports(text: str) -> tuple[Span, ...]:
    """``"1,3-5"`` (the kernel's list) -> spans; malformed items are an error."""
    spans: list[Span] = []
    for item in text.replace(" ", "").split(","):
        if not item:
            continue
        first, _, last = item.partition("-")
        if not first.isdigit() or (last and not last.isdigit()):
            raise ValueError(f"{text!r} is not a port list")
        spans.append((int(first), int(last or first)))
    return merge_spans(spans)


def format_ports(spans: Iterable[Span]) -> str:
    """As the kernel prints it back: sorted, merged, ``a-b`` joined by commas."""
    return ",".join(str(a) if a == b else f"{a}-{b}" for a, b in merge_spans(spans))


def wanted_values(settings: HostSettings, current: SysctlState) -> tuple[tuple[str, str], ...]:
    have = parse_ports(current.value(RESERVED) or "")
    ours = [(p.first, p.last) for p in settings.reserved_ports]
    values = [(RESERVED, format_ports([*have, *ours]))]
    if settings.security_groups:
        values += [(key, "1") for key in BRIDGE_KEYS]
    return tuple(values)


def render_conf(values: Iterable[tuple[str, str]]) -> bytes:
    return (HEADER + "".join(f"{k} = {v}\n" for k, v in values)).encode()


def render_modules(settings: HostSettings) -> bytes | None:
    if not settings.security_groups:
        return None
    return (
        HEADER + "# CloudStack's KVM security groups: iptables sees bridged frames\nbr_netfilter\n"
    ).encode()


def describe(current: SysctlState, target: SysctlState) -> list[Change]:
    out: list[Change] = []
    for key, want in target.values:
        have = current.value(key)
        if want is not None and have != want:
            out.append(Change(NAME, "modify", f"{key}: {have or 'unset'} -> {want} (live)"))
    for path, now, new in (
        (CONF, current.conf, target.conf),
        (MODULES, current.modules, target.modules),
    ):
        if now.data == new.data:
            continue
        action: Action = (
            "delete" if new.data is None else "create" if now.data is None else "modify"
        )
        size = f"{len(new.data)} bytes" if new.data is not None else "ours"
        out.append(Change(NAME, action, f"file {path} ({size})"))
    return out


# ---------------------------------------------------------------- the host


def proc_path(key: str) -> Path:
    return PROC / key.replace(".", "/")


def read_value(key: str) -> str | None:
    try:
        return " ".join(proc_path(key).read_text(encoding="ascii").split())
    except FileNotFoundError:
        return None


def write_value(key: str, value: str) -> None:
    try:
        with proc_path(key).open("w", encoding="ascii") as handle:
            handle.write(value + "\n")
    except OSError as exc:
        raise ResourceError(f"cannot set {key} = {value}: {exc.strerror}", resource=NAME) from exc


def load_br_netfilter() -> None:
    """``modprobe br_netfilter`` where its sysctls are missing (built in: nothing to do)."""
    if proc_path(BRIDGE_KEYS[0]).parent.is_dir():
        return
    try:
        subprocess.run(["modprobe", "br_netfilter"], capture_output=True, timeout=60, check=True)
    except (OSError, subprocess.SubprocessError) as exc:
        raise ResourceError(f"cannot load br_netfilter: {exc}", resource=NAME) from exc
    if not proc_path(BRIDGE_KEYS[0]).parent.is_dir():
        raise ResourceError(
            "br_netfilter loaded but /proc/sys/net/bridge is missing", resource=NAME
        )


class SysctlResource(Resource[SysctlState]):
    state_type: ClassVar[Any] = SysctlState

    def __init__(self, settings: HostSettings, host: HostRoot) -> None:
        self._settings = settings
        self._host = host

    @property
    def name(self) -> str:
        return NAME

    def _keys(self) -> tuple[str, ...]:
        return (RESERVED, *(BRIDGE_KEYS if self._settings.security_groups else ()))

    async def observe(self) -> SysctlState:
        return SysctlState(
            values=tuple((k, read_value(k)) for k in self._keys()),
            conf=FileState(read_bytes(self._host.path(CONF))),
            modules=FileState(read_bytes(self._host.path(MODULES))),
        )

    def target(self, current: SysctlState) -> SysctlState:
        values = wanted_values(self._settings, current)
        return SysctlState(
            values=values,
            conf=FileState(render_conf(values)),
            modules=FileState(render_modules(self._settings)),
        )

    def diff(self, current: SysctlState, target: SysctlState) -> list[Change]:
        return describe(current, target)

    async def apply(self, current: SysctlState, target: SysctlState) -> None:
        for path, state in ((CONF, target.conf), (MODULES, target.modules)):
            real = self._host.path(path)
            if read_bytes(real) == state.data:
                continue
            if state.data is None:
                with contextlib.suppress(FileNotFoundError):
                    real.unlink()
            else:
                atomic_write(real, state.data)
        if any(k in BRIDGE_KEYS and v is not None for k, v in target.values):
            load_br_netfilter()
        for key, value in target.values:
            if value is not None and read_value(key) != value:
                write_value(key, value)
