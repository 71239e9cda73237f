"""A signed local rpm repository (rpmbuild, rpmsign, createrepo_c) and an EL-like file root.

The dnf side of tests/aptrepo.py: the same stand-in for cloudstack-agent (a unit file, no
scriptlets), installed by the real dnf and rpm into the test's root (``--installroot``)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from tests.aptrepo import UNIT, Repo, stop_agent

SPEC = """Name: cloudstack-agent
Version: 4.20.0
Release: 1
Summary: CloudStack Agent (test stand-in)
License: ASL 2.0
BuildArch: noarch
%description
test stand-in
%install
mkdir -p %{buildroot}/usr/lib/systemd/system
cp UNIT %{buildroot}/usr/lib/systemd/system/cloudstack-agent.service
%files
/usr/lib/systemd/system/cloudstack-agent.service
"""
TOOLS = ("dnf", "rpm", "rpmbuild", "rpmsign", "createrepo_c", "gpg")


def have_tools() -> bool:
    return all(shutil.which(t) for t in TOOLS)


def _run(*argv: str) -> bytes:
    return subprocess.run(argv, check=True, capture_output=True).stdout


def build_rpm_repo(base: Path) -> Repo:
    top = base / "rpmbuild"
    (top / "SPECS").mkdir(parents=True)
    (base / "cloudstack-agent.service").write_text(UNIT)
    spec = top / "SPECS/cloudstack-agent.spec"
    spec.write_text(SPEC.replace("UNIT", str(base / "cloudstack-agent.service")))
    _run("rpmbuild", "--define", f"_topdir {top}", "-bb", str(spec))
    repo = base / "repo"
    repo.mkdir()
    (rpm,) = (top / "RPMS").rglob("*.rpm")
    shutil.copy(rpm, repo)
    keys: list[str] = []
    try:
        for name in ("gnupg", "gnupg-other"):
            home = base / name
            home.mkdir(mode=0o700)
            gpg = ["gpg", "--homedir", str(home), "--batch", "--passphrase", ""]
            uid = f"csboot rpm {name} <{name}@example.org>"
            _run(*gpg, "--quick-gen-key", uid, "rsa2048", "sign")
            keys.append(_run(*gpg, "--armor", "--export").decode())
        _run(
            "rpmsign", "--define", "__gpg /usr/bin/gpg", "--define", "_gpg_name csboot rpm gnupg",
            "--define", f"_gpg_path {base / 'gnupg'}",
            "--define", "_gpg_sign_cmd_extra_args --batch --pinentry-mode loopback --passphrase ''",
            "--addsign", str(repo / rpm.name),
        )  # fmt: skip
        _run("createrepo_c", "-q", str(repo))
    finally:  # also when a step failed: the agents outlive the test otherwise
        for name in ("gnupg", "gnupg-other"):
            stop_agent(base / name)
    return Repo(url=f"file://{repo}", key=keys[0], other_key=keys[1])


def el_root(root: Path) -> Path:
    """A file root as an EL install leaves it, as far as dnf and rpm care."""
    (root / "var/lib/rpm").mkdir(parents=True)
    (root / "etc").mkdir(exist_ok=True)
    (root / "etc/os-release").write_text('ID="rocky"\nVERSION_ID="9"\n')
    return root


def installed(root: Path, package: str) -> str | None:
    out = subprocess.run(
        ["rpm", "--root", str(root), "-q", "--qf", "%{VERSION}-%{RELEASE}", package],
        capture_output=True,
        text=True,
        check=False,
    )
    return out.stdout if out.returncode == 0 else None
