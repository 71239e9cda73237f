"""Restarting the services that read what we changed (libvirtd, cloudstack-agent).

On the machine's own root with systemd running we ask systemctl. Under ``--root`` (tests,
the simulator) there is no service to restart: the restart is reported, not performed.
"""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path
from typing import Protocol


class ServiceManager(Protocol):
    async def restart(self, service: str) -> None: ...


class SystemdServices:
    """systemctl try-restart: restarts a unit only if it is running (or socket-activated)."""

    async def restart(self, service: str) -> None:
        proc = await asyncio.create_subprocess_exec(
            "systemctl",
            "try-restart",
            f"{service}.service",
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )
        _, err = await proc.communicate()
        if proc.returncode not in (0, 5):  # 5: unit not loaded (not installed)
            raise RuntimeError(f"systemctl try-restart {service}: {err.decode().strip()}")


class NoServices:
    """Under a file root: remembers what would have been restarted."""

    def __init__(self) -> None:
        self.restarted: list[str] = []

    async def restart(self, service: str) -> None:
        self.restarted.append(service)


def services_for(root_is_real: bool) -> ServiceManager:
    if root_is_real and shutil.which("systemctl") and Path("/run/systemd/system").is_dir():
        return SystemdServices()
    return NoServices()
