"""``spec.network.persist``: the layout also written into the distro's own network configuration.

The links we build live in the kernel and OVSDB; after a boot without our agent the distro's
network manager would bring back the installer's configuration instead. So, inside the same
transaction as the links, the layout is rendered (``persist_render``) into:

- ``ifupdown``: ``/etc/network/interfaces.d/cloudstack-bootstrap`` (and a ``source`` line for
  it in ``/etc/network/interfaces`` when nothing there sources it);
- ``netplan``: ``/etc/netplan/60-cloudstack-bootstrap.yaml`` (mode 0600);
- ``networkmanager``: ``/etc/NetworkManager/system-connections/cloudstack-*.nmconnection``
  (mode 0600).

``auto`` takes what the host root has: netplan YAML and the netplan binary, else
NetworkManager's directory, else ``/etc/network/interfaces``; with none of them nothing is
written and the plan says so (never a guess).

Ownership, as for agent.properties: our files carry :data:`HEADER`; a file at one of our
paths without it is someone else's, and the plan stops with an error naming it. The
installer's definitions of the interfaces our layout uses are disabled, never deleted:
ifupdown stanzas are commented out with :data:`DISABLED` (a line we add is preceded by
:data:`ADDED`), a netplan file is renamed ``*.csboot-disabled``, a NetworkManager profile is
renamed to a hidden ``.NAME.csboot-disabled`` (NetworkManager loads extensionless files in
/etc, but never hidden ones). This holds in every dialect the host has, whichever one
persists (a Debian host with NetworkManager still runs ifupdown's stanzas at boot).
Definitions of other interfaces are never touched; a netplan
file that defines ours *and* others is an error naming the file. Every edit is computed
from the file as it is, after undoing our own marks, so it converges and reverts (the
transaction restores each file's snapshot byte for byte, including its absence).

With NetworkManager installed and ifupdown or netplan persisting,
``/etc/NetworkManager/conf.d/cloudstack-bootstrap.conf`` makes NetworkManager leave our
devices alone (``unmanaged-devices``).
"""

from __future__ import annotations

import configparser
import fnmatch
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Literal

import yaml
from pydantic import Base64Bytes

from bootstrap.engine.resource import Change, Resource
from bootstrap.errors import InvalidDocument, ResourceError
from bootstrap.files import atomic_write, read_bytes
from bootstrap.host.root import HostRoot
from bootstrap.model.spec import Network
from bootstrap.resources.filestate import FileResource, FileState
from bootstrap.resources.persist_render import (
    HEADER,
    IFUPDOWN_FILE,
    NETPLAN_FILE,
    NM_DIR,
    NM_PREFIX,
    interface_names,
    render_ifupdown,
    render_netplan,
    render_nm,
)

__all__ = [
    "ADDED",
    "DISABLED",
    "DISABLED_SUFFIX",
    "NM_UNMANAGED",
    "detect",
    "disable_ifupdown",
    "persist_resources",
    "undo_ifupdown",
]

Mode = Literal["ifupdown", "netplan", "networkmanager", "none"]
DISABLED = "#csboot-disabled# "
ADDED = "#csboot-added# the next line is cloudstack-bootstrap's"
DISABLED_SUFFIX = ".csboot-disabled"
INTERFACES = "/etc/network/interfaces"
INTERFACES_D = "/etc/network/interfaces.d"
NETPLAN_DIR = "/etc/netplan"
NM_UNMANAGED = "/etc/NetworkManager/conf.d/cloudstack-bootstrap.conf"
MAX_FOREIGN = 1 << 20  # bytes of an installer's file we are willing to parse
_STANZAS = {"iface", "mapping", "auto", "source", "source-directory", "rename"}
_NETPLAN_SECTIONS = ("ethernets", "bonds", "bridges", "vlans", "wifis", "tunnels", "vrfs")


def detect(host: HostRoot) -> Mode:
    """What the host root has, in the order the module docstring gives."""
    netplan_bin = any(host.path(p).exists() for p in ("/usr/sbin/netplan", "/usr/bin/netplan"))
    if netplan_bin and any(host.path(NETPLAN_DIR).glob("*.yaml")):
        return "netplan"
    if host.path("/etc/NetworkManager").is_dir():
        return "networkmanager"
    if host.path(INTERFACES).exists():
        return "ifupdown"
    return "none"


# -- ifupdown: comment out, pure ----------------------------------------------------------


def _eol(line: str) -> str:
    return line[len(line.rstrip("\r\n")) :] or "\n"


def undo_ifupdown(text: str) -> str:
    """Pure: ``text`` without our marks (disabled lines back, added lines gone)."""
    out: list[str] = []
    skip = False
    for line in text.splitlines(keepends=True):
        if skip:
            skip = False
            continue
        if line.rstrip("\r\n") == ADDED:
            skip = True
        elif line.startswith(DISABLED):
            out.append(line[len(DISABLED) :])
        else:
            out.append(line)
    return "".join(out)


def _sources(text: str, target: str) -> bool:
    """Whether a ``source``/``source-directory`` line of /etc/network/interfaces reads
    ``target`` (relative patterns are relative to /etc/network)."""
    for line in text.splitlines():
        words = line.split()
        if len(words) < 2 or words[0] not in ("source", "source-directory"):
            continue
        pattern = str(PurePosixPath("/etc/network") / words[1])
        if words[0] == "source" and fnmatch.fnmatchcase(target, pattern):
            return True
        if words[0] == "source-directory" and str(PurePosixPath(target).parent) == pattern:
            return True
    return False


def disable_ifupdown(text: str, names: frozenset[str], *, source: str | None = None) -> str:
    """Pure: the stanzas (``iface``, ``auto``, ``allow-*``) of ``names`` commented out.

    An ``auto``/``allow-`` line that also lists other interfaces is kept for those: it is
    commented out and followed by an :data:`ADDED` copy without ours. ``source``: make sure
    this file is read (a ``source`` line is appended only if nothing reads it yet).
    """
    lines = undo_ifupdown(text).splitlines(keepends=True)
    out: list[str] = []
    disabled = False
    for line in lines:
        words = line.split()
        if not words or words[0].startswith("#"):
            out.append(line)
            continue
        head = words[0]
        if head in _STANZAS or head.startswith("allow-"):
            disabled = False
            if head == "iface" and len(words) > 1 and words[1] in names:
                disabled = True
                out.append(DISABLED + line)
            elif (head == "auto" or head.startswith("allow-")) and set(words[1:]) & names:
                out.append(DISABLED + line)
                rest = [w for w in words[1:] if w not in names]
                if rest:
                    eol = _eol(line)
                    out += [ADDED + eol, " ".join([head, *rest]) + eol]
            else:
                out.append(line)
        else:
            out.append(DISABLED + line if disabled else line)
    result = "".join(out)
    if source is not None and not _sources(result, source):
        if result and not result.endswith("\n"):
            result += "\n"
        result += f"{ADDED}\nsource {source}\n"
    return result


def ifupdown_names(text: str) -> set[str]:
    """Pure: the interfaces an interfaces(5) text defines (``iface NAME``)."""
    out = set()
    for line in text.splitlines():
        words = line.split()
        if len(words) > 1 and words[0] == "iface":
            out.add(words[1])
    return out


# -- netplan / NetworkManager: which file defines what, pure -------------------------------


def netplan_names(data: bytes, path: str) -> set[str]:
    """The interfaces a netplan file defines; an unreadable file is an error naming it."""
    if len(data) > MAX_FOREIGN:
        raise ResourceError(f"{path}: larger than {MAX_FOREIGN} bytes", resource=f"file{path}")
    try:
        doc = yaml.safe_load(data)
    except yaml.YAMLError as exc:
        raise ResourceError(
            f"{path}: not YAML netplan could read ({exc.__class__.__name__}); fix or remove it",
            resource=f"file{path}",
        ) from exc
    net = doc.get("network") if isinstance(doc, dict) else None
    if not isinstance(net, dict):
        return set()
    out: set[str] = set()
    for section in _NETPLAN_SECTIONS:
        if isinstance(defs := net.get(section), dict):
            out |= {str(k) for k in defs}
    return out


def nm_names(data: bytes) -> set[str]:
    """The interface a NetworkManager keyfile binds to (``connection.interface-name``)."""
    if len(data) > MAX_FOREIGN:
        return set()
    parser = configparser.ConfigParser(interpolation=None, strict=False)
    try:
        parser.read_string(data.decode("utf-8", "replace"))
    except configparser.Error:
        return set()
    name = parser.get("connection", "interface-name", fallback=None)
    return {name.strip()} if name else set()


# -- resources ----------------------------------------------------------------------------


class OwnedFile(FileResource):
    """A whole file of ours (:data:`HEADER` first); ``None`` removes it.

    A file at the path without our header is someone else's: the plan stops with an error
    naming it instead of overwriting it."""

    def __init__(
        self, host: HostRoot, path: str, content: bytes | None, *, mode: int, summary: str = ""
    ) -> None:
        super().__init__(host, path)
        self.content = content
        self.mode = mode
        self.summary = summary

    def edit(self, data: bytes | None) -> bytes | None:
        if data is not None and not ours(data) and data != self.content:
            raise ResourceError(
                f"{self.host_path} exists and was not written by cloudstack-bootstrap "
                f"(no {HEADER[:30]!r}... header): move it away or set spec.network.persist",
                resource=self.name,
            )
        return self.content

    async def apply(self, current: FileState, target: FileState) -> None:
        _write(self.path, target.data, self.mode)

    def describe(self, old: bytes | None, new: bytes | None) -> str:
        if new is None:
            return "remove (ours)"
        what = f"{len(new)} bytes" if old is None else f"{len(old)} -> {len(new)} bytes"
        return f"{what}, {self.summary}" if self.summary else what

    def owned(self) -> str:
        return "whole file"


def _write(path: Path, data: bytes | None, mode: int | None) -> None:
    """Atomically, and WITHOUT the ``*.csboot.bak`` other file resources keep: ifupdown's
    ``source interfaces.d/*`` would read a backup as configuration. The transaction's
    snapshot (journal) is what a rollback restores."""
    if data is None:
        path.unlink(missing_ok=True)
    elif read_bytes(path) != data or (mode is not None and path.stat().st_mode & 0o7777 != mode):
        atomic_write(path, data, mode=mode)


def ours(data: bytes) -> bool:
    return data.startswith(HEADER.encode())


class IfupdownFile(FileResource):
    """An interfaces(5) file of the installer's: our interfaces' stanzas commented out."""

    def __init__(
        self, host: HostRoot, path: str, names: frozenset[str], *, source: str | None
    ) -> None:
        super().__init__(host, path)
        self.names = names
        self.source = source

    def edit(self, data: bytes | None) -> bytes | None:
        if data is None:
            return None
        text = data.decode("utf-8", "surrogateescape")
        return disable_ifupdown(text, self.names, source=self.source).encode(
            "utf-8", "surrogateescape"
        )

    def describe(self, old: bytes | None, new: bytes | None) -> str:
        before = _live(old)
        after = _live(new)
        off = sorted(before - after)
        on = sorted(after - before)
        parts = [f"disable {', '.join(off)}"] if off else []
        parts += [f"restore {', '.join(on)}"] if on else []
        return "; ".join(parts) or "source line"

    async def apply(self, current: FileState, target: FileState) -> None:
        _write(self.path, target.data, None)

    def owned(self) -> str:
        return f"stanzas marked {DISABLED.strip()!r} and lines after {ADDED[:15]!r}"


def _live(data: bytes | None) -> set[str]:
    return ifupdown_names((data or b"").decode("utf-8", "replace"))


@dataclass(frozen=True, slots=True)
class PairState:
    """An installer's file and its disabled name: each file's bytes or ``None``."""

    active: Base64Bytes | None = None
    disabled: Base64Bytes | None = None


class DisabledFile(Resource[PairState]):
    """An installer's file that defines our interfaces, renamed away (and back)."""

    state_type = PairState

    def __init__(
        self,
        host: HostRoot,
        path: str,
        disabled: str,
        conflicts: Callable[[bytes], bool],
    ) -> None:
        self.host = host
        self.host_path = path
        self.disabled_path = disabled
        self.conflicts = conflicts

    @property
    def name(self) -> str:
        return f"file{self.host_path}"

    async def observe(self) -> PairState:
        return PairState(
            read_bytes(self.host.path(self.host_path)),
            read_bytes(self.host.path(self.disabled_path)),
        )

    def target(self, current: PairState) -> PairState:
        data = current.active if current.active is not None else current.disabled
        if data is None:
            return current
        if current.active is not None and current.disabled is not None:
            return current  # both there: someone else's doing, left alone
        return PairState(None, data) if self.conflicts(data) else PairState(data, None)

    def diff(self, current: PairState, target: PairState) -> list[Change]:
        if current == target:
            return []
        if target.active is None:
            return [Change(self.name, "modify", f"disable: rename to {self.disabled_path}")]
        return [Change(self.name, "modify", f"restore from {self.disabled_path}")]

    async def apply(self, current: PairState, target: PairState) -> None:
        for path, data in ((self.host_path, target.active), (self.disabled_path, target.disabled)):
            real = self.host.path(path)
            on_disk = read_bytes(real)
            if on_disk == data:
                continue
            if data is None:
                continue  # removed below, once the other name holds the bytes
            mode = 0o600
            other = self.host.path(self.disabled_path if path == self.host_path else self.host_path)
            if other.exists():
                mode = other.stat().st_mode & 0o7777
            atomic_write(real, data, mode=mode)
        for path, data in ((self.host_path, target.active), (self.disabled_path, target.disabled)):
            if data is None:
                self.host.path(path).unlink(missing_ok=True)

    def owned(self) -> str:
        return f"the rename to {self.disabled_path}"


class PlanWarning(Resource[None]):
    """Nothing to do, only something the plan must say (``warnings``)."""

    state_type = type(None)

    def __init__(self, name: str, message: str) -> None:
        self._name = name
        self.warnings = (message,)

    @property
    def name(self) -> str:
        return self._name

    async def observe(self) -> None:
        return None

    def target(self, current: None) -> None:
        return None

    def diff(self, current: None, target: None) -> list[Change]:
        return []

    async def apply(self, current: None, target: None) -> None:
        return None


def _files(host: HostRoot, directory: str, pattern: str = "*") -> list[str]:
    d = host.path(directory)
    if not d.is_dir():
        return []
    return sorted(
        f"{directory}/{p.name}" for p in d.glob(pattern) if p.is_file() and not p.is_symlink()
    )


def _netplan_conflict(names: frozenset[str], path: str) -> Callable[[bytes], bool]:
    def conflicts(data: bytes) -> bool:
        defined = netplan_names(data, path)
        if not defined & names:
            return False
        if defined - names:
            raise InvalidDocument(
                f"{path} defines {', '.join(sorted(defined & names))}, which the layout "
                f"uses, and also {', '.join(sorted(defined - names))}: disable it by hand "
                "(move our interfaces out of it) or persist otherwise",
                field="spec.network.persist",
            )
        return True

    return conflicts


def _nm_conflict(names: frozenset[str]) -> Callable[[bytes], bool]:
    return lambda data: bool(nm_names(data) & names)


def _nm_disabled(path: str) -> str:
    p = PurePosixPath(path)
    return str(p.with_name(f".{p.name}{DISABLED_SUFFIX}"))


def _unmanaged(names: frozenset[str]) -> bytes:
    devices = ";".join(f"interface-name:{n}" for n in sorted(names))
    return f"{HEADER}\n[keyfile]\nunmanaged-devices={devices}\n".encode()


def limits(network: Network, mode: str) -> list[str]:
    """Pure: what the chosen dialect cannot say about this layout (the plan warns)."""
    out: list[str] = []
    if network.backend != "openvswitch":
        return out
    if mode == "netplan" and network.openvswitch.datapath != "system":
        out.append(
            f"netplan has no datapath_type: the persisted {network.openvswitch.bridge} boots "
            f"on the system datapath, not {network.openvswitch.datapath}"
        )
    if mode == "networkmanager":
        out.append(
            "NetworkManager makes tagged internal ports, not ovs-vsctl fake bridges: after a "
            "boot without our agent `ovs-vsctl br-exists` fails for "
            + ", ".join(b.name for b in network.all_bridges())
        )
    return out


def persist_resources(network: Network, host: HostRoot) -> list[Resource[Any]]:
    """Our files for the chosen mode, the installer's conflicting definitions disabled,
    and every file of ours from another mode (or an earlier layout) removed."""
    mode: Mode = detect(host) if network.persist == "auto" else network.persist
    names = interface_names(network) if mode != "none" else frozenset()
    out: list[Resource[Any]] = []
    if mode == "none":
        why = (
            "auto found no netplan, NetworkManager or /etc/network/interfaces under the root"
            if network.persist == "auto"
            else "persist is none"
        )
        out.append(
            PlanWarning(
                "persist",
                f"spec.network.persist: {why}; the layout lives only in the kernel and "
                "OVSDB, and only our agent brings it back after a reboot",
            )
        )
    out += [PlanWarning("persist", f"spec.network.persist: {m}") for m in limits(network, mode)]
    return out + _our_files(network, host, mode, names) + _installer_files(host, mode, names)


def _our_files(
    network: Network, host: HostRoot, mode: Mode, names: frozenset[str]
) -> list[Resource[Any]]:
    """The files of the mode, and any file of ours (our header) no longer wanted."""
    wanted: dict[str, bytes] = {}
    if mode == "ifupdown":
        wanted = render_ifupdown(network)
    elif mode == "netplan":
        wanted = render_netplan(network)
    elif mode == "networkmanager":
        wanted = render_nm(network)
    listed = ", ".join(sorted(names))
    if mode in ("ifupdown", "netplan") and host.path("/etc/NetworkManager").is_dir():
        wanted[NM_UNMANAGED] = _unmanaged(names)
    candidates = {
        IFUPDOWN_FILE,
        NETPLAN_FILE,
        NM_UNMANAGED,
        *_files(host, NM_DIR, f"{NM_PREFIX}*.nmconnection"),
    }
    out: list[Resource[Any]] = []
    for path in sorted(candidates | set(wanted)):
        data = read_bytes(host.path(path))
        if path not in wanted and (data is None or not ours(data)):
            continue
        summary = ""
        if path == NM_UNMANAGED:
            summary = f"NetworkManager leaves {listed} alone"
        elif path.startswith(NM_DIR) and path in wanted:
            summary = "NetworkManager profile"
        elif path in wanted:
            summary = f"{mode}: {listed}"
        secret = path.startswith((NETPLAN_DIR, NM_DIR))
        mode_bits = 0o600 if secret else 0o644
        out.append(OwnedFile(host, path, wanted.get(path), mode=mode_bits, summary=summary))
    return out


def _installer_files(host: HostRoot, mode: Mode, names: frozenset[str]) -> list[Resource[Any]]:
    """The installer's definitions of our interfaces, in every dialect the host has (an
    ifupdown stanza for eth0 would still DHCP it at boot beside NetworkManager's profile),
    disabled; those we disabled and no longer need to, given back."""
    out: list[Resource[Any]] = []
    for path in [INTERFACES, *_files(host, INTERFACES_D)]:
        if path == IFUPDOWN_FILE or not host.path(path).exists():
            continue
        source = IFUPDOWN_FILE if mode == "ifupdown" and path == INTERFACES else None
        out.append(IfupdownFile(host, path, names, source=source))
    seen: set[str] = set()
    for path in _files(host, NETPLAN_DIR):
        if path.endswith(".yaml" + DISABLED_SUFFIX):
            active = path[: -len(DISABLED_SUFFIX)]
        elif path.endswith(".yaml") and path != NETPLAN_FILE:
            active = path
        else:
            continue
        if active not in seen:
            seen.add(active)
            off = active + DISABLED_SUFFIX
            out.append(DisabledFile(host, active, off, _netplan_conflict(names, active)))
    for path in _files(host, NM_DIR, "*") + _files(host, NM_DIR, ".*"):
        p = PurePosixPath(path)
        if p.name.startswith(".") and p.name.endswith(DISABLED_SUFFIX):
            active = str(p.with_name(p.name[1 : -len(DISABLED_SUFFIX)]))
        elif p.name.startswith((".", NM_PREFIX)):
            continue
        else:
            active = path
        if active not in seen:
            seen.add(active)
            out.append(DisabledFile(host, active, _nm_disabled(active), _nm_conflict(names)))
    return out
