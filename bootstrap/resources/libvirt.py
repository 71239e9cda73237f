"""libvirt for CloudStack: listen on TCP for live migration, VNC on every address.

The seed's settings go to /etc/libvirt/libvirtd.conf and qemu.conf. libvirtd also has to
be told to listen, which differs per distribution and libvirt version:

- classic daemons: ``--listen`` (``-l``) in the daemon's arguments, in whichever of
  /etc/sysconfig/libvirtd (RHEL), /etc/default/libvirtd (Debian/Ubuntu) or
  /etc/default/libvirt-bin (old Ubuntu) exists; we never create a file the distribution
  did not ship;
- socket activation (libvirt >= 5.7 with systemd, recognised by a ``libvirtd.socket`` or
  ``libvirtd-tcp.socket`` unit): ``--listen`` makes libvirtd refuse to start (the bug
  cloudstack-setup-agent has), so the flag is removed and ``libvirtd-tcp.socket`` is
  enabled instead, with a drop-in for a port other than 16509.

``mode: tls`` instead leaves libvirt as ``cloudstack-setup-agent -s`` does (its
``configureLibvirtConfig`` and ``libvirtConfigRedhat/Ubuntu``): ``listen_tls=1``,
``listen_tcp=0``, ``tls_port``, the five libvirtd socket units masked and ``--listen`` in
the daemon's arguments, so libvirtd runs as a plain service. ``remote_mode = "legacy"`` in
/etc/libvirt/libvirt.conf makes remote URIs reach that libvirtd rather than virtproxyd;
where the modular daemons are the distribution's default they are masked for it.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
from pathlib import Path
from typing import Any

from bootstrap.engine.resource import Resource
from bootstrap.host.root import HostRoot
from bootstrap.model.spec import Libvirt
from bootstrap.resources.conffile import (
    LIBVIRT,
    SHELL,
    ConfFile,
    Rule,
    decode,
    describe,
    edit_text,
    encode,
    flag_rule,
    values,
)
from bootstrap.resources.filestate import LinkState, Symlink, WholeFile
from bootstrap.resources.units import UNIT_DIRS, systemctl, unit_file

log = logging.getLogger(__name__)

LIBVIRTD = frozenset({"libvirtd"})
DEFAULT_TCP_PORT = 16509
TCP_SOCKET = "libvirtd-tcp.socket"
SOCKET_WANTS = f"/etc/systemd/system/sockets.target.wants/{TCP_SOCKET}"
SOCKET_DROP_IN = f"/etc/systemd/system/{TCP_SOCKET}.d/cloudstack-bootstrap.conf"

#: (file, variable, flag, the value an unset variable starts from)
ARGS_FILES = (
    ("/etc/sysconfig/libvirtd", "LIBVIRTD_ARGS", "--listen", ()),
    ("/etc/default/libvirtd", "LIBVIRTD_ARGS", "--listen", ()),
    ("/etc/default/libvirt-bin", "libvirtd_opts", "-l", ("-d",)),
)
LISTEN_FLAGS = frozenset({"--listen", "-l"})
LIBVIRT_CONF = "/etc/libvirt/libvirt.conf"
#: what cloudstack-setup-agent masks when /lib/systemd/system/libvirtd.socket exists
LIBVIRTD_SOCKETS = (
    "libvirtd.socket",
    "libvirtd-ro.socket",
    "libvirtd-admin.socket",
    "libvirtd-tls.socket",
    "libvirtd-tcp.socket",
)
MODULAR_SOCKETS = tuple(
    f"virt{driver}d{kind}.socket"
    for driver in ("qemu", "interface", "network", "nodedev", "nwfilter", "secret", "storage")
    for kind in ("", "-ro", "-admin")
) + tuple(f"virtproxyd{kind}.socket" for kind in ("", "-ro", "-admin", "-tls", "-tcp"))


def _bool(value: bool) -> str:
    return "1" if value else "0"


#: libvirtd.conf keys cloudstack-setup-agent writes (serviceConfig.configureLibvirtConfig):
#: after the hand-off they are CloudStack's
SETUP_LIBVIRTD_KEYS = frozenset(
    {"listen_tls", "listen_tcp", "tcp_port", "tls_port", "auth_tcp", "auth_tls"}
)


def libvirtd_conf_rules(settings: Libvirt, *, handed_off: bool = False) -> dict[str, Rule]:
    """The seed's libvirtd.conf lines, quoted as the seed quotes them (TLS mode: as
    ``cloudstack-setup-agent -s`` writes them); after the hand-off only what setup leaves."""
    rules: dict[str, Rule] = {
        "listen_tls": _bool(settings.listen_tls),
        "listen_tcp": _bool(settings.listen_tcp),
        "tcp_port": f'"{settings.tcp_port}"',
        "auth_tcp": f'"{settings.auth_tcp}"',
        "mdns_adv": _bool(settings.mdns_adv),
    }
    if settings.mode == "tls":
        rules["tls_port"] = f'"{settings.tls_port}"'
    if handed_off:
        rules = {k: v for k, v in rules.items() if k not in SETUP_LIBVIRTD_KEYS}
    return rules


def tcp_socket_unit(host: HostRoot) -> str | None:
    """The host path of ``libvirtd-tcp.socket`` when libvirt is socket-activated."""
    for unit_dir in UNIT_DIRS:
        if host.path(f"{unit_dir}/{TCP_SOCKET}").exists():
            return f"{unit_dir}/{TCP_SOCKET}"
    return None


def socket_activated(host: HostRoot) -> bool:
    return any(
        host.path(f"{d}/{unit}").exists()
        for d in UNIT_DIRS
        for unit in ("libvirtd.socket", TCP_SOCKET)
    )


class ArgsFile(ConfFile):
    """A daemon-arguments file; adds or removes the listen flag, keeping other flags.

    Missing files stay missing. Ubuntu 16.04-18.04's /etc/default/libvirtd still sets
    ``libvirtd_opts`` (with ``-l``), so the variable is chosen from the file's text.
    """

    def __init__(
        self,
        host: HostRoot,
        path: str,
        variable: str,
        flag: str,
        default: tuple[str, ...],
        *,
        listen: bool,
    ) -> None:
        super().__init__(host, path, {}, dialect=SHELL, create=False, restarts=LIBVIRTD)
        self.variable, self.flag, self.default, self.listen = variable, flag, default, listen

    def edit(self, data: bytes | None) -> bytes | None:
        if data is None:
            return None
        text = decode(data)
        variable, flag, default = self.variable, self.flag, self.default
        found = values(text)
        if variable == "LIBVIRTD_ARGS" and variable not in found and "libvirtd_opts" in found:
            variable, flag, default = "libvirtd_opts", "-l", ()
        rule = flag_rule(flag, aliases=LISTEN_FLAGS, present=self.listen, default=default)
        return encode(edit_text(text, {variable: rule}, SHELL))

    def describe(self, old: bytes | None, new: bytes | None) -> str:
        return describe(decode(old or b""), decode(new or b""))


def libvirt_resources(
    settings: Libvirt, host: HostRoot, *, handed_off: bool = False
) -> list[Resource[Any]]:
    """libvirtd.conf, qemu.conf, libvirt.conf, the daemon's listen switch, socket units.

    TLS mode leaves the host as ``cloudstack-setup-agent -s`` does: the libvirtd sockets
    masked and the listen flag in the daemon's arguments. After the hand-off CloudStack's
    setup owns the listen keys, the arguments files and the sockets: we leave them alone.
    """
    out: list[Resource[Any]] = [
        ConfFile(
            host,
            "/etc/libvirt/libvirtd.conf",
            libvirtd_conf_rules(settings, handed_off=handed_off),
            dialect=LIBVIRT,
            create=True,
            restarts=LIBVIRTD,
        ),
        ConfFile(
            host,
            LIBVIRT_CONF,
            {"remote_mode": '"legacy"'},
            dialect=LIBVIRT,
            create=True,
            restarts=LIBVIRTD,
        ),
    ]
    if not handed_off:
        out.append(
            ConfFile(
                host,
                "/etc/libvirt/qemu.conf",
                {"vnc_listen": f'"{settings.vnc_listen}"'},
                dialect=LIBVIRT,
                create=True,
                restarts=LIBVIRTD,
            )
        )
    out += modular_resources(host)
    if handed_off:
        return out
    if settings.mode == "tls":
        return out + _tls_listen(host)
    sockets = socket_activated(host)
    listen = (settings.listen_tcp or settings.listen_tls) and not sockets
    out += [
        ArgsFile(host, path, variable, flag, default, listen=listen)
        for path, variable, flag, default in ARGS_FILES
    ]
    unit = tcp_socket_unit(host)
    if unit is not None:
        out.append(SocketEnable(host, SOCKET_WANTS, unit if settings.listen_tcp else None))
    drop_in = None
    if sockets and settings.listen_tcp and settings.tcp_port != DEFAULT_TCP_PORT:
        drop_in = f"[Socket]\nListenStream=\nListenStream={settings.tcp_port}\n".encode()
    out.append(WholeFile(host, SOCKET_DROP_IN, drop_in, restarts=LIBVIRTD))
    return out


def _tls_listen(host: HostRoot) -> list[Resource[Any]]:
    """As ``cloudstack-setup-agent -s`` leaves it: every libvirtd socket unit masked (where
    the distribution ships ``libvirtd.socket``), ``--listen`` for the daemon itself."""
    out: list[Resource[Any]] = [
        ArgsFile(host, path, variable, flag, default, listen=True)
        for path, variable, flag, default in ARGS_FILES
    ]
    if socket_activated(host):
        out += [UnitMask(host, unit) for unit in LIBVIRTD_SOCKETS]
        out.append(SocketEnable(host, SOCKET_WANTS, None))
    out.append(WholeFile(host, SOCKET_DROP_IN, None, restarts=LIBVIRTD))
    return out


def modular_default(host: HostRoot) -> bool:
    """The distribution runs libvirt's modular daemons (EL 9, Ubuntu 24.04): virtqemud's
    socket is enabled and libvirtd's is not."""
    wants = "/etc/systemd/system/sockets.target.wants"
    return (
        host.path(f"{wants}/virtqemud.socket").is_symlink()
        and not host.path(f"{wants}/libvirtd.socket").is_symlink()
    )


def modular_resources(host: HostRoot) -> list[Resource[Any]]:
    """CloudStack's agent and migrations talk to the monolithic libvirtd: where the modular
    daemons are the default, mask their sockets (libvirt's documented switch to
    libvirtd) and enable libvirtd.service."""
    if not modular_default(host):
        return []
    out: list[Resource[Any]] = [
        UnitMask(host, unit) for unit in MODULAR_SOCKETS if unit_file(host, unit)
    ]
    service = unit_file(host, "libvirtd.service")
    if service is not None:
        out.append(
            Symlink(
                host,
                "/etc/systemd/system/multi-user.target.wants/libvirtd.service",
                service,
                restarts=LIBVIRTD,
            )
        )
    return out


class UnitMask(Symlink):
    """``systemctl mask UNIT``: a link to /dev/null in /etc/systemd/system."""

    def __init__(self, host: HostRoot, unit: str) -> None:
        super().__init__(host, f"/etc/systemd/system/{unit}", "/dev/null", restarts=LIBVIRTD)
        self.unit = unit

    async def after_apply(self, target: LinkState) -> None:
        """On a running systemd: reload, and stop a socket we just masked (a masked but
        listening socket would still hand libvirtd its file descriptors)."""
        if not (self.host.is_real and systemd_running()):
            return
        await systemctl("daemon-reload")
        if target.points_to == "/dev/null":
            await systemctl("stop", self.unit)


def systemd_running() -> bool:
    """systemctl can act only when systemd is this machine's init."""
    return shutil.which("systemctl") is not None and Path("/run/systemd/system").is_dir()


class SocketEnable(Symlink):
    """``systemctl enable libvirtd-tcp.socket`` as a symlink; on the real root with
    systemd running, also reload units and start (or stop) the socket."""

    def __init__(self, host: HostRoot, path: str, points_to: str | None) -> None:
        super().__init__(host, path, points_to, restarts=LIBVIRTD)

    async def after_apply(self, target: LinkState) -> None:
        if not (self.host.is_real and systemd_running()):
            return
        verb = "start" if target.points_to else "stop"
        for args in (("daemon-reload",), (verb, TCP_SOCKET)):
            proc = await asyncio.create_subprocess_exec(
                "systemctl",
                *args,
                stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.PIPE,
            )
            _, err = await proc.communicate()
            if proc.returncode != 0:
                raise RuntimeError(f"systemctl {' '.join(args)}: {err.decode().strip()}")
