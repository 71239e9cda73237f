"""A signed local apt repository the tests build, and a Debian-like file root to install into.

The package stands in for cloudstack-agent (which no reachable registry serves): a unit file
and nothing else, no maintainer scripts. Everything lives in the test's temporary directory:
apt and dpkg act on that root alone (``dpkg --root``), never on the machine's packages.
"""

from __future__ import annotations

import hashlib
import subprocess
from dataclasses import dataclass
from email.utils import formatdate
from pathlib import Path

UNIT = """[Unit]
Description=CloudStack Agent (test stand-in)

[Service]
ExecStart=/bin/true

[Install]
WantedBy=multi-user.target
"""


@dataclass(frozen=True, slots=True)
class Repo:
    url: str
    key: str  # the ASCII-armored public key that signed InRelease
    other_key: str  # a key that did not


def _gpg(home: Path, *args: str) -> bytes:
    return subprocess.run(
        ["gpg", "--homedir", str(home), "--batch", "--quiet", "--passphrase", "", *args],
        check=True,
        capture_output=True,
    ).stdout


def _key(home: Path, uid: str) -> str:
    home.mkdir(mode=0o700)
    _gpg(home, "--quick-gen-key", uid, "ed25519", "sign", "never")
    return _gpg(home, "--armor", "--export").decode()


def stop_agent(home: Path) -> None:
    """The gpg-agent that gpg started for ``home`` (it outlives gpg, and the test)."""
    subprocess.run(
        ["gpgconf", "--homedir", str(home), "--kill", "gpg-agent"],
        check=False,
        capture_output=True,
    )


SHIPPED_LIBVIRTD_CONF = "# libvirtd.conf as the package ships it\n#listen_tcp = 1\n"


def build_repo(base: Path, package: str = "cloudstack-agent", version: str = "4.20.0-1") -> Repo:
    """The stand-in ships its unit and, like libvirt's packages, /etc/libvirt/libvirtd.conf."""
    pkg = base / "pkg"
    (pkg / "DEBIAN").mkdir(parents=True)
    (pkg / "lib/systemd/system").mkdir(parents=True)
    (pkg / "etc/libvirt").mkdir(parents=True)
    (pkg / "etc/libvirt/libvirtd.conf").write_text(SHIPPED_LIBVIRTD_CONF)
    (pkg / "DEBIAN/control").write_text(
        f"Package: {package}\nVersion: {version}\nArchitecture: all\n"
        "Maintainer: csboot tests <tests@example.org>\nDescription: test stand-in\n"
    )
    (pkg / f"lib/systemd/system/{package}.service").write_text(UNIT)
    repo = base / "repo"
    repo.mkdir()
    subprocess.run(
        ["dpkg-deb", "--root-owner-group", "-b", str(pkg), str(repo / f"{package}.deb")],
        check=True,
        capture_output=True,
    )
    index = subprocess.run(
        ["dpkg-scanpackages", ".", "/dev/null"],
        cwd=repo,
        check=True,
        capture_output=True,
    ).stdout
    (repo / "Packages").write_bytes(index)
    digest = hashlib.sha256(index).hexdigest()
    (repo / "Release").write_text(
        f"Date: {formatdate(usegmt=True)}\nSHA256:\n {digest} {len(index)} Packages\n"
    )
    home = base / "gnupg"
    try:
        key = _key(home, "csboot test repo <repo@example.org>")
        _gpg(home, "--clearsign", "-o", str(repo / "InRelease"), str(repo / "Release"))
        other = _key(base / "gnupg-other", "someone else <other@example.org>")
    finally:  # also when a step failed: the agents outlive the test otherwise
        for name in ("gnupg", "gnupg-other"):
            stop_agent(base / name)
    return Repo(url=f"file:{repo}", key=key, other_key=other)


def debian_root(root: Path) -> Path:
    """A file root as a fresh Debian install leaves it, as far as apt and dpkg care."""
    (root / "var/lib/dpkg").mkdir(parents=True)
    (root / "var/lib/dpkg/status").write_text("")
    (root / "etc").mkdir(exist_ok=True)
    (root / "etc/debian_version").write_text("12.0\n")
    (root / "etc/os-release").write_text("ID=debian\nVERSION_CODENAME=bookworm\n")
    return root


def installed(root: Path, package: str) -> str | None:
    """The version dpkg (in ``root``) has installed, or None."""
    out = subprocess.run(
        [
            "dpkg-query",
            f"--admindir={root}/var/lib/dpkg",
            "-W",
            "-f",
            "${db:Status-Abbrev} ${Version}",
            package,
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    if out.returncode != 0 or not out.stdout.startswith("ii"):
        return None
    return out.stdout.split()[-1]
