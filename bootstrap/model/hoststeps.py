"""The seed's remaining host steps as spec data: packages (with CloudStack's repository)
and time (an NTP daemon with the spec's servers).

Both sections are optional: absent means unmanaged, as everywhere in the spec.
"""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StrictBool, model_validator

# Debian policy's package names (also valid RPM names); systemd unit names.
_PACKAGE = re.compile(r"^[a-z0-9][a-z0-9+.-]{1,127}$")
_UNIT = re.compile(r"^[A-Za-z0-9:_.@-]{1,250}\.(service|socket|timer)$")
_URL = re.compile(r"^(https?|file):[^\s\[\]]+$")
_WORD = re.compile(r"^[A-Za-z0-9._/-]{1,128}$")
_HOST = re.compile(r"^[A-Za-z0-9.:-]{1,253}$")
ARMORED = "-----BEGIN PGP PUBLIC KEY BLOCK-----"


def _package(value: str) -> str:
    if not _PACKAGE.match(value):
        raise ValueError(f"{value!r} is not a package name")
    return value


def _unit(value: str) -> str:
    if not _UNIT.match(value):
        raise ValueError(f"{value!r} is not a systemd unit name (NAME.service, .socket, .timer)")
    return value


def _word(value: str) -> str:
    if not _WORD.match(value):
        raise ValueError(f"{value!r} is not a repository suite or component")
    return value


def _server(value: str) -> str:
    if not _HOST.match(value) or value.startswith("-"):
        raise ValueError(f"{value!r} is not a host name or address")
    return value


PackageName = Annotated[str, AfterValidator(_package)]
UnitName = Annotated[str, AfterValidator(_unit)]
RepoWord = Annotated[str, AfterValidator(_word)]
NtpServer = Annotated[str, AfterValidator(_server)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Repository(_Strict):
    """CloudStack's package repository: an apt ``deb`` line or a dnf ``.repo``.

    ``key`` is the repository's ASCII-armored OpenPGP public key (upstream publishes it as
    ``https://download.cloudstack.org/release.asc``); without one the repository must be
    marked ``trusted`` explicitly (a local mirror you vouch for).
    """

    url: str
    suite: RepoWord | None = None  # apt: default the distribution's VERSION_CODENAME
    components: tuple[RepoWord, ...] = ()  # apt: e.g. ["4.20"]; none = a flat repository
    key: str | None = None
    trusted: StrictBool = False

    @model_validator(mode="after")
    def _checked(self) -> Repository:
        from bootstrap.model.spec import FieldError

        if not _URL.match(self.url):
            raise FieldError(("url",), f"{self.url!r} is not an http(s):// or file: URL")
        if self.key is not None and ARMORED not in self.key:
            raise FieldError(("key",), f"an ASCII-armored public key starts with {ARMORED}")
        if self.key is None and not self.trusted:
            raise FieldError(
                ("key",),
                "the repository's signing key is required (or trusted: true for a "
                "repository you vouch for without a signature)",
            )
        if self.key is not None and self.trusted:
            raise FieldError(("trusted",), "a repository with a key is checked, not trusted")
        return self


class Packages(_Strict):
    """Packages installed before anything else changes; a rollback never removes them."""

    manager: Literal["auto", "apt", "dnf"] = "auto"
    repository: Repository | None = None
    install: tuple[PackageName, ...] = ("cloudstack-agent", "chrony")
    enable: tuple[UnitName, ...] = ()

    @model_validator(mode="after")
    def _unique(self) -> Packages:
        from bootstrap.model.spec import FieldError

        for name, items in (("install", self.install), ("enable", self.enable)):
            for i, item in enumerate(items):
                if item in items[:i]:
                    raise FieldError((name, i), f"{item!r} is listed twice")
        return self


class Time(_Strict):
    """The NTP daemon with the spec's servers (the seed: 'make sure NTP is running')."""

    daemon: Literal["chrony"] = "chrony"
    servers: Annotated[tuple[NtpServer, ...], Field(min_length=1)]
    iburst: StrictBool = True
