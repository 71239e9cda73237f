"""Packages through the real dnf and rpm (Debian ships both), from a signed rpm repository
the test builds, installed into the test's root only (``dnf --installroot``)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.aptrepo import Repo
from tests.rpmrepo import build_rpm_repo, el_root, have_tools, installed

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(not have_tools(), reason="needs dnf, rpm (rpmbuild, rpmsign), createrepo_c"),
]


def csboot(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bootstrap.cli", *args], capture_output=True, text=True, check=False
    )


def role(tmp: Path, repo: Repo, key: str) -> str:
    spec = {
        "packages": {
            "repository": {"url": repo.url, "key": key},
            "install": ["cloudstack-agent"],
            "enable": ["cloudstack-agent.service"],
        }
    }
    doc = {"apiVersion": "cloudstack-bootstrap/v1", "kind": "Role", "name": "kvm", "version": 1}
    path = tmp / "role.yaml"
    path.write_text(yaml.safe_dump({**doc, "spec": spec}))
    return str(path)


def test_dnf_installs_a_signed_package_once(tmp_path: Path) -> None:
    repo = build_rpm_repo(tmp_path / "build")
    root = el_root(tmp_path / "host")
    doc = role(tmp_path, repo, repo.key)
    applied = csboot("apply", "-f", doc, "--root", str(root), "--json")
    assert applied.returncode == 0, applied.stdout + applied.stderr
    assert installed(root, "cloudstack-agent") == "4.20.0-1"
    assert installed(root, "gpg-pubkey") is not None  # dnf imported our key to check it
    repo_file = (root / "etc/yum.repos.d/cloudstack-bootstrap.repo").read_text()
    assert "gpgcheck=1\n" in repo_file and f"baseurl={repo.url}\n" in repo_file
    link = root / "etc/systemd/system/multi-user.target.wants/cloudstack-agent.service"
    assert str(link.readlink()) == "/usr/lib/systemd/system/cloudstack-agent.service"

    again = csboot("apply", "-f", doc, "--root", str(root), "--json")
    assert again.returncode == 0 and json.loads(again.stdout)["changes"] == []


def test_dnf_refuses_a_package_signed_by_another_key(tmp_path: Path) -> None:
    repo = build_rpm_repo(tmp_path / "build")
    root = el_root(tmp_path / "host")
    applied = csboot("apply", "-f", role(tmp_path, repo, repo.other_key), "--root", str(root))
    assert applied.returncode == 1
    assert "dnf install failed" in applied.stderr and "GPG check FAILED" in applied.stderr
    assert installed(root, "cloudstack-agent") is None
