"""SELinux permissive and libvirt's AppArmor profiles disabled, as the seed asks.

Persistent state lives in files (/etc/selinux/config, links in /etc/apparmor.d/disable/)
and is managed under any ``--root``. The running kernel is touched only when the root is
the machine's own ("/") and the tool exists: ``setenforce`` as its own resource (its state
is observable in /sys/fs/selinux/enforce, so it plans, verifies and reverts like a file),
``apparmor_parser -R`` (or ``-r`` on revert) right after the disable link changes.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
from pathlib import Path
from typing import Any

from bootstrap.engine.resource import Change, Resource
from bootstrap.host.root import HostRoot
from bootstrap.model.spec import Security
from bootstrap.resources.conffile import SHELL, ConfFile
from bootstrap.resources.filestate import LinkState, Symlink

log = logging.getLogger(__name__)

SELINUX_CONFIG = "/etc/selinux/config"
SELINUX_ENFORCE = Path("/sys/fs/selinux/enforce")
APPARMOR_DIR = "/etc/apparmor.d"
LIBVIRT_PROFILES = ("usr.sbin.libvirtd", "usr.lib.libvirt.virt-aa-helper")
LIBVIRTD = frozenset({"libvirtd"})


def selinux_rule(current: str | None) -> str | None:
    """``enforcing`` (or unset) becomes ``permissive``; ``disabled`` already satisfies the
    seed and is kept (switching it to permissive would turn SELinux on at next boot)."""
    value = (current or "").strip("\"'")
    return current if value in {"permissive", "disabled"} else "permissive"


def _enforcing() -> bool | None:
    try:
        return SELINUX_ENFORCE.read_text().strip() == "1"
    except OSError:
        return None


async def _run(*argv: str) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE
    )
    _, err = await proc.communicate()
    return proc.returncode or 0, err.decode(errors="replace").strip()


class SelinuxEnforce(Resource[bool | None]):
    """The running SELinux mode: True = enforcing, None = SELinux is off or absent."""

    state_type = bool | None

    @property
    def name(self) -> str:
        return "selinux/enforce"

    async def observe(self) -> bool | None:
        return _enforcing()

    def target(self, current: bool | None) -> bool | None:
        return None if current is None else False

    def diff(self, current: bool | None, target: bool | None) -> list[Change]:
        if current == target or target is None:
            return []
        mode = "enforcing" if target else "permissive"
        return [Change(self.name, "modify", f"setenforce {int(target)} ({mode} until reboot)")]

    async def apply(self, current: bool | None, target: bool | None) -> None:
        if target is None or await self.observe() in (None, target):
            return
        code, err = await _run("setenforce", "1" if target else "0")
        if code != 0:
            raise RuntimeError(f"setenforce: {err}")


class AppArmorDisable(Symlink):
    """``ln -s /etc/apparmor.d/<profile> /etc/apparmor.d/disable/``, then unload it."""

    def __init__(self, host: HostRoot, profile: str) -> None:
        self.profile = f"{APPARMOR_DIR}/{profile}"
        super().__init__(host, f"{APPARMOR_DIR}/disable/{profile}", self.profile, restarts=LIBVIRTD)

    async def after_apply(self, target: LinkState) -> None:
        if not (self.host.is_real and shutil.which("apparmor_parser")):
            return
        flag = "-R" if target.points_to else "-r"
        code, err = await _run("apparmor_parser", flag, self.profile)
        if code != 0:  # -R of a profile that is not loaded fails; the link is what lasts
            log.warning("apparmor_parser %s %s: %s", flag, self.profile, err)


def security_resources(security: Security, host: HostRoot) -> list[Resource[Any]]:
    out: list[Resource[Any]] = []
    if security.selinux == "permissive" and host.path(SELINUX_CONFIG).is_file():
        out.append(
            ConfFile(host, SELINUX_CONFIG, {"SELINUX": selinux_rule}, dialect=SHELL, create=False)
        )
        if host.is_real and shutil.which("setenforce") and SELINUX_ENFORCE.exists():
            out.append(SelinuxEnforce())
    if security.apparmor_libvirt == "disabled":
        out += [
            AppArmorDisable(host, profile)
            for profile in LIBVIRT_PROFILES
            if host.path(f"{APPARMOR_DIR}/{profile}").is_file()
        ]
    return out
