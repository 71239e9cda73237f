"""``systemctl enable`` as data: the ``[Install] WantedBy=`` symlink of a unit.

Works on any file root (the link is what ``systemctl enable`` makes); on the machine's own
root with systemd running it also reloads units and, when asked, starts the unit. A unit
that is still missing when the apply comes is an error naming it: its package did not
ship it.
"""

from __future__ import annotations

import asyncio
import re

from bootstrap.engine.resource import Change
from bootstrap.host.root import HostRoot
from bootstrap.resources.filestate import LinkState, Symlink

UNIT_DIRS = ("/usr/lib/systemd/system", "/lib/systemd/system")
_WANTED_BY = re.compile(r"^\s*WantedBy\s*=\s*(\S+)", re.MULTILINE)


def unit_file(host: HostRoot, unit: str) -> str | None:
    """The host path of a unit the distribution (or a package) ships, if any."""
    return next(
        (f"{d}/{unit}" for d in UNIT_DIRS if host.path(f"{d}/{unit}").exists()),
        None,
    )


def wanted_by(host: HostRoot, path: str | None) -> str:
    """The unit's first ``WantedBy=`` target (``multi-user.target`` when it names none)."""
    if path is not None:
        text = host.path(path).read_text(errors="replace")
        if m := _WANTED_BY.search(text):
            return m.group(1)
    return "multi-user.target"


def systemd_running() -> bool:
    import shutil
    from pathlib import Path

    return shutil.which("systemctl") is not None and Path("/run/systemd/system").is_dir()


async def systemctl(*args: str) -> None:
    proc = await asyncio.create_subprocess_exec(
        "systemctl", *args, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE
    )
    _, err = await proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"systemctl {' '.join(args)}: {err.decode().strip()}")


class UnitEnable(Symlink):
    """One unit enabled: ``/etc/systemd/system/TARGET.wants/UNIT -> the unit file``."""

    def __init__(self, host: HostRoot, unit: str, *, start: bool = False) -> None:
        found = unit_file(host, unit)
        target = wanted_by(host, found)
        super().__init__(
            host,
            f"/etc/systemd/system/{target}.wants/{unit}",
            found or f"{UNIT_DIRS[-1]}/{unit}",
        )
        self.unit, self.start, self.missing = unit, start, found is None

    @property
    def name(self) -> str:
        return f"service/{self.unit}"

    def diff(self, current: LinkState, target: LinkState) -> list[Change]:
        if current == target:
            return []
        if target.points_to is None:
            return [Change(self.name, "delete", f"disable (unlink {self.host_path})")]
        note = " (its package ships it)" if self.missing else ""
        return [
            Change(self.name, "create", f"enable: {self.host_path} -> {target.points_to}{note}")
        ]

    async def apply(self, current: LinkState, target: LinkState) -> None:
        if target.points_to is not None and unit_file(self.host, self.unit) is None:
            raise RuntimeError(
                f"{self.unit} is not installed: no unit file in {', '.join(UNIT_DIRS)}"
            )
        await super().apply(current, target)

    async def after_apply(self, target: LinkState) -> None:
        if not (self.host.is_real and systemd_running()):
            return
        await systemctl("daemon-reload")
        if self.start and target.points_to is not None:
            await systemctl("start", self.unit)
