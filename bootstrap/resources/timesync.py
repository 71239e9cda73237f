"""Time: chrony with the spec's servers, enabled (the seed: NTP must be running).

We own exactly the ``server`` and ``pool`` directives of the distribution's chrony.conf
(/etc/chrony/chrony.conf on Debian/Ubuntu, /etc/chrony.conf on EL), as we own exactly our
keys of agent.properties: every other line stays byte for byte, and the spec's servers
take the place of the first source line that was there. Whether the clock is synchronised
is a post-apply check (``time-synchronised``), reported and never rolled back.
"""

from __future__ import annotations

import re
from typing import Any

from bootstrap.engine.resource import Resource
from bootstrap.host.root import HostRoot
from bootstrap.model.hoststeps import Time
from bootstrap.model.spec import Spec
from bootstrap.resources.conffile import decode, encode
from bootstrap.resources.filestate import FileResource
from bootstrap.resources.units import UnitEnable, unit_file

CHRONY_CONFS = ("/etc/chrony/chrony.conf", "/etc/chrony.conf")
_SOURCE = re.compile(r"^[ \t]*(server|pool)[ \t]+(\S+)")


def source_lines(time: Time) -> list[str]:
    return [f"server {s}" + (" iburst" if time.iburst else "") for s in time.servers]


def edit_sources(text: str, wanted: list[str]) -> str:
    """Pure: ``text`` with its server/pool lines replaced by ``wanted`` (where the first
    one was, else at the end); comments and every other line kept."""
    lines = text.splitlines(keepends=True)
    kept: list[str] = []
    at: int | None = None
    for line in lines:
        if _SOURCE.match(line):
            at = len(kept) if at is None else at
            continue
        kept.append(line)
    block = [f"{line}\n" for line in wanted]
    if at is None:
        if kept and not kept[-1].endswith("\n"):
            kept[-1] += "\n"
        return "".join(kept + block)
    return "".join(kept[:at] + block + kept[at:])


def sources(text: str) -> list[str]:
    return [m.group(0).strip() for line in text.splitlines() if (m := _SOURCE.match(line))]


class ChronyConf(FileResource):
    def __init__(self, host: HostRoot, path: str, time: Time, service: str) -> None:
        super().__init__(host, path)
        self.wanted = source_lines(time)
        self.restarts = frozenset({service})

    def edit(self, data: bytes | None) -> bytes:
        return encode(edit_sources(decode(data or b""), self.wanted))

    def describe(self, old: bytes | None, new: bytes | None) -> str:
        was = ", ".join(sources(decode(old or b""))) or "(none)"
        now = ", ".join(sources(decode(new or b"")))
        return f"sources: {was} -> {now}"

    def owned(self) -> str:
        return "server/pool lines: " + ", ".join(self.wanted)


def chrony_conf(host: HostRoot) -> str:
    for path in CHRONY_CONFS:
        if host.path(path).exists():
            return path
    return CHRONY_CONFS[0] if host.path("/etc/debian_version").exists() else CHRONY_CONFS[1]


def chrony_service(host: HostRoot) -> str:
    """Debian calls the unit chrony.service (chronyd.service is an alias), EL chronyd;
    before chrony is installed, the distribution family decides."""
    if unit_file(host, "chrony.service"):
        return "chrony"
    if unit_file(host, "chronyd.service"):
        return "chronyd"
    return "chrony" if host.path("/etc/debian_version").exists() else "chronyd"


def time_resources(spec: Spec, host: HostRoot) -> list[Resource[Any]]:
    if spec.time is None:
        return []
    service = chrony_service(host)
    return [
        ChronyConf(host, chrony_conf(host), spec.time, service),
        UnitEnable(host, f"{service}.service", start=True),
    ]
