"""Packages: CloudStack's repository and the packages the seed installs, through apt or dnf.

Installed first, before anything else changes (``converge`` applies them as a step of
their own and plans the rest on the installed host), and never removed: a rollback leaves
them, and every plan line says so. A repeated apply installs nothing.

On the machine's own root apt refreshes its lists (ours and the distribution's: the
packages' dependencies come from both) before it installs. Under ``--root DIR`` apt and
dpkg act on DIR alone:
its sources, keyrings, lists and cache, and its dpkg database (``dpkg --root``), so a test
or a simulated host never changes the machine's packages.
"""

from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass, replace
from typing import Any

from bootstrap.engine.resource import Change, Resource
from bootstrap.errors import InvalidDocument
from bootstrap.host.root import HostRoot
from bootstrap.model.hoststeps import Packages, Repository
from bootstrap.model.spec import Spec
from bootstrap.resources.filestate import WholeFile
from bootstrap.resources.units import UnitEnable

APT_LIST = "/etc/apt/sources.list.d/cloudstack-bootstrap.list"
APT_KEY = "/etc/apt/keyrings/cloudstack-bootstrap.asc"
DNF_REPO = "/etc/yum.repos.d/cloudstack-bootstrap.repo"
DNF_KEY = "/etc/pki/rpm-gpg/RPM-GPG-KEY-cloudstack-bootstrap"
LEFT = "a rollback leaves it"


class PackageError(RuntimeError):
    """apt, dnf, dpkg or rpm failed; the message carries their own words."""


async def run(*argv: str, env: dict[str, str] | None = None) -> str:
    proc = await asyncio.create_subprocess_exec(
        *argv,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, **(env or {})},
    )
    out, err = await proc.communicate()
    if proc.returncode != 0:
        tail = (err or out).decode(errors="replace").strip().splitlines()[-3:]
        verb = next((a for a in argv[1:] if not a.startswith("-")), "")
        raise PackageError(f"{argv[0]} {verb} failed: {' | '.join(tail)}")
    return out.decode(errors="replace")


def manager_of(packages: Packages, host: HostRoot) -> str:
    """apt or dnf: as the spec says, else by the root's package database."""
    if packages.manager != "auto":
        return packages.manager
    if host.path("/var/lib/dpkg/status").exists():
        return "apt"
    if host.path("/var/lib/rpm").exists() or host.path("/usr/lib/sysimage/rpm").exists():
        return "dnf"
    raise InvalidDocument(
        f"no dpkg or rpm database under {host.root}: say apt or dnf", field="spec.packages.manager"
    )


def os_release(host: HostRoot, field: str) -> str | None:
    try:
        text = host.path("/etc/os-release").read_text()
    except FileNotFoundError:
        return None
    for line in text.splitlines():
        key, _, value = line.partition("=")
        if key == field and value.strip("\"'"):
            return value.strip("\"'")
    return None


def codename(host: HostRoot) -> str | None:
    return os_release(host, "VERSION_CODENAME")


def apt_source(repo: Repository, host: HostRoot) -> bytes:
    """One ``deb`` line; ``signed-by`` names the key file as this machine sees it."""
    option = f"signed-by={host.path(APT_KEY)}" if repo.key else "trusted=yes"
    suite = repo.suite or (codename(host) if repo.components else "./")
    if suite is None:
        raise InvalidDocument(
            "the distribution names no VERSION_CODENAME: give the suite",
            field="spec.packages.repository.suite",
        )
    words = ["deb", f"[{option}]", repo.url, suite, *repo.components]
    return (" ".join(words) + "\n").encode()


def dnf_repo(repo: Repository, host: HostRoot) -> bytes:
    """A ``.repo`` section; ``gpgkey`` names the key file as this machine sees it."""
    check = f"gpgcheck=1\ngpgkey=file://{host.path(DNF_KEY)}\n" if repo.key else "gpgcheck=0\n"
    return f"[cloudstack]\nname=Apache CloudStack\nbaseurl={repo.url}\nenabled=1\n{check}".encode()


@dataclass(frozen=True, slots=True)
class PackageState:
    """Installed versions of the spec's packages; ``wanted`` is set on a target only."""

    installed: tuple[tuple[str, str], ...] = ()
    wanted: tuple[str, ...] = ()


class Installer:
    """apt/dpkg or dnf/rpm, on the machine's root or confined to ``--root``."""

    def __init__(self, manager: str, host: HostRoot) -> None:
        self.manager, self.host = manager, host
        self.root = str(host.root.resolve())

    def _apt_options(self) -> list[str]:
        if self.host.is_real:
            return []
        r = self.root
        return [
            f"-oDir::Etc={r}/etc/apt",
            f"-oDir::State={r}/var/lib/apt",
            f"-oDir::State::status={r}/var/lib/dpkg/status",
            f"-oDir::Cache={r}/var/cache/apt",
            f"-oDir::Log={r}/var/log/apt",
            f"-oDPkg::Options::=--root={r}",
            "-oAPT::Sandbox::User=root",
        ]

    def _prepare(self) -> None:
        if self.host.is_real or self.manager != "apt":
            return
        for d in (
            "/var/lib/apt/lists/partial",
            "/var/cache/apt/archives/partial",
            "/var/log/apt",
            "/etc/apt/preferences.d",
            "/etc/apt/apt.conf.d",
            "/etc/apt/sources.list.d",
            "/var/lib/dpkg/info",
            "/var/lib/dpkg/updates",
        ):
            self.host.path(d).mkdir(parents=True, exist_ok=True)

    async def installed(self, names: tuple[str, ...]) -> dict[str, str]:
        if self.manager == "apt":
            argv = ["dpkg-query", "-W", "-f", "${Package}\t${db:Status-Abbrev}\t${Version}\n"]
            if not self.host.is_real:
                argv.insert(1, f"--admindir={self.root}/var/lib/dpkg")
            proc = await asyncio.create_subprocess_exec(
                *argv, *names, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL
            )
            out, _ = await proc.communicate()  # exit 1 when a name is unknown: not an error
            rows = (line.split("\t") for line in out.decode().splitlines())
            return {r[0]: r[2] for r in rows if len(r) == 3 and r[1].startswith("ii")}
        argv = ["rpm", "-q", "--qf", "%{NAME}\t%{VERSION}-%{RELEASE}\n"]
        if not self.host.is_real:
            argv[1:1] = ["--root", self.root]
        proc = await asyncio.create_subprocess_exec(
            *argv, *names, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL
        )
        out, _ = await proc.communicate()
        rows = (line.split("\t") for line in out.decode().splitlines())
        return {r[0]: r[1] for r in rows if len(r) == 2}

    async def install(self, names: tuple[str, ...]) -> None:
        self._prepare()
        if self.manager == "apt":
            opts = self._apt_options()
            await run("apt-get", "-q", "update", *opts)
            env = {"DEBIAN_FRONTEND": "noninteractive"}
            await run("apt-get", "-q", "-y", "install", *opts, *names, env=env)
            return
        await run("dnf", "-y", "install", *self._dnf_options(), *names)

    def _dnf_options(self) -> list[str]:
        """Under ``--root``: install there, with the root's repositories and release."""
        if self.host.is_real:
            return []
        r = self.root
        out = [f"--installroot={r}", f"--setopt=reposdir={r}/etc/yum.repos.d"]
        if release := os_release(self.host, "VERSION_ID"):
            out.append(f"--releasever={release}")
        return out


class PackagesResource(Resource[PackageState]):
    """The spec's packages present; never removed (``revert`` leaves them)."""

    state_type = PackageState

    def __init__(self, packages: Packages, host: HostRoot) -> None:
        self.names = packages.install
        self.source = packages.repository.url if packages.repository else "the distribution"
        self.installer = Installer(manager_of(packages, host), host)

    @property
    def name(self) -> str:
        return "packages"

    async def observe(self) -> PackageState:
        found = await self.installer.installed(self.names)
        return PackageState(tuple(sorted(found.items())))

    def target(self, current: PackageState) -> PackageState:
        return replace(current, wanted=self.names)

    def missing(self, current: PackageState, target: PackageState) -> list[str]:
        have = dict(current.installed)
        return [n for n in target.wanted if n not in have]

    def diff(self, current: PackageState, target: PackageState) -> list[Change]:
        return [
            Change(f"package/{n}", "create", f"install from {self.source}; {LEFT}")
            for n in self.missing(current, target)
        ]

    async def apply(self, current: PackageState, target: PackageState) -> None:
        missing = self.missing(await self.observe(), target)
        if missing:
            await self.installer.install(tuple(missing))

    async def verify(self, target: PackageState) -> list[Change]:
        return self.diff(await self.observe(), target)

    async def revert(self, snapshot: PackageState) -> None:
        """Packages stay: removing them could take the hypervisor's own tools away."""

    def owned(self) -> str:
        return ", ".join(self.names)


def install_resources(spec: Spec, host: HostRoot) -> list[Resource[Any]]:
    """The repository's files, then the packages: applied before anything else."""
    packages = spec.packages
    if packages is None:
        return []
    out: list[Resource[Any]] = []
    repo = packages.repository
    if repo is not None:
        if manager_of(packages, host) == "apt":
            key = repo.key.encode() if repo.key else None
            out += [
                WholeFile(host, APT_KEY, key),
                WholeFile(host, APT_LIST, apt_source(repo, host)),
            ]
        else:
            key = repo.key.encode() if repo.key else None
            out += [WholeFile(host, DNF_KEY, key), WholeFile(host, DNF_REPO, dnf_repo(repo, host))]
    out.append(PackagesResource(packages, host))
    return out


def enable_resources(spec: Spec, host: HostRoot) -> list[Resource[Any]]:
    """``packages.enable``: the units the packages ship, enabled (planned after install)."""
    if spec.packages is None:
        return []
    return [UnitEnable(host, unit) for unit in spec.packages.enable]
