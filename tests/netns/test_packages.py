"""Packages through the real apt and dpkg, from a signed repository the test builds.

apt and dpkg act on the test's file root alone (its sources, keyring, lists and dpkg
database), so the machine's own packages and sources are never changed; the root, with
what was installed in it, is removed with the test's temporary directory.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.aptrepo import SHIPPED_LIBVIRTD_CONF, Repo, build_repo, debian_root, installed

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(
        any(shutil.which(t) is None for t in ("apt-get", "dpkg-scanpackages", "gpg")),
        reason="needs apt-get, dpkg-scanpackages (dpkg-dev) and gpg",
    ),
]

UNIT_LINK = "etc/systemd/system/multi-user.target.wants/cloudstack-agent.service"


def csboot(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bootstrap.cli", *args], capture_output=True, text=True, check=False
    )


def role(tmp: Path, repo: Repo, *, key: str | None = None, enable: list[str] | None = None) -> str:
    spec: dict[str, Any] = {
        "packages": {
            "repository": {"url": repo.url, "key": key or repo.key},
            "install": ["cloudstack-agent"],
            "enable": enable if enable is not None else ["cloudstack-agent.service"],
        }
    }
    doc = {"apiVersion": "cloudstack-bootstrap/v1", "kind": "Role", "name": "kvm", "version": 1}
    path = tmp / "role.yaml"
    path.write_text(yaml.safe_dump({**doc, "spec": spec}))
    return str(path)


@pytest.fixture
def repo(tmp_path: Path) -> Repo:
    return build_repo(tmp_path / "build")


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return debian_root(tmp_path / "host")


@pytest.fixture(autouse=True)
def machine_untouched() -> Any:
    """The machine's dpkg database does not know the stand-in before or after."""
    before = subprocess.run(
        ["dpkg-query", "-W", "cloudstack-agent"], capture_output=True, check=False
    )
    yield
    after = subprocess.run(
        ["dpkg-query", "-W", "cloudstack-agent"], capture_output=True, check=False
    )
    assert before.returncode != 0 and after.returncode != 0


def test_installed_enabled_then_nothing_to_install(tmp_path: Path, repo: Repo, root: Path) -> None:
    doc = role(tmp_path, repo)
    plan = csboot("plan", "-f", doc, "--root", str(root), "--json")
    assert plan.returncode == 2, plan.stderr
    lines = {c["resource"]: c for c in json.loads(plan.stdout)["changes"]}
    assert "a rollback leaves it" in lines["package/cloudstack-agent"]["detail"]
    assert installed(root, "cloudstack-agent") is None

    applied = csboot("apply", "-f", doc, "--root", str(root), "--json")
    assert applied.returncode == 0, applied.stdout + applied.stderr
    assert installed(root, "cloudstack-agent") == "4.20.0-1"
    assert (root / "lib/systemd/system/cloudstack-agent.service").is_file()  # dpkg put it there
    link = root / UNIT_LINK
    assert (
        link.is_symlink() and str(link.readlink()) == "/lib/systemd/system/cloudstack-agent.service"
    )
    keyring = root / "etc/apt/keyrings/cloudstack-bootstrap.asc"
    assert keyring.read_text() == repo.key
    source = (root / "etc/apt/sources.list.d/cloudstack-bootstrap.list").read_text()
    assert source == f"deb [signed-by={keyring}] {repo.url} ./\n"

    status = root / "var/lib/dpkg/status"
    stamp = (status.read_bytes(), status.stat().st_mtime_ns)
    again = csboot("apply", "-f", doc, "--root", str(root), "--json")
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["changes"] == []
    assert (status.read_bytes(), status.stat().st_mtime_ns) == stamp  # dpkg did not run
    assert csboot("plan", "-f", doc, "--root", str(root)).returncode == 0


def test_a_rollback_leaves_the_packages_and_says_so(tmp_path: Path, repo: Repo, root: Path) -> None:
    # the package ships no such unit: enabling it fails after the install, the rest reverts
    doc = role(tmp_path, repo, enable=["cloudstack-agent.service", "no-such-unit.service"])
    applied = csboot("apply", "-f", doc, "--root", str(root), "--json")
    assert applied.returncode == 1
    out = json.loads(applied.stdout)
    assert out["state"] == "rolled_back", out
    assert "no-such-unit.service is not installed" in out["error"]["message"]
    (kept,) = [c for c in out["checks"] if c["name"] == "packages"]
    assert kept["ok"] and kept["detail"].startswith("the rollback left them: ")
    assert "package/cloudstack-agent" in kept["detail"]
    assert (root / "etc/apt/sources.list.d/cloudstack-bootstrap.list").is_file()
    assert installed(root, "cloudstack-agent") == "4.20.0-1"
    assert not (root / UNIT_LINK).is_symlink()  # enabled in the reverted part: undone


def test_a_repository_signed_by_another_key_installs_nothing(
    tmp_path: Path, repo: Repo, root: Path
) -> None:
    doc = role(tmp_path, repo, key=repo.other_key)
    applied = csboot("apply", "-f", doc, "--root", str(root), "--json")
    assert applied.returncode == 1
    out = json.loads(applied.stdout)
    assert out["error"]["resource"] == "packages"
    assert "apt-get update failed" in out["error"]["message"]
    assert "NO_PUBKEY" in out["error"]["message"]  # apt checked InRelease against the key
    assert installed(root, "cloudstack-agent") is None


def test_files_a_package_ships_are_edited_not_replaced(
    tmp_path: Path, repo: Repo, root: Path
) -> None:
    """The rest is planned once the packages are in: our keys go into the shipped file."""
    path = tmp_path / "role.yaml"
    doc = role(tmp_path, repo)
    spec = yaml.safe_load(Path(doc).read_text())
    spec["spec"]["libvirt"] = {"mode": "tcp"}
    path.write_text(yaml.safe_dump(spec))
    assert not (root / "etc/libvirt/libvirtd.conf").exists()

    applied = csboot("apply", "-f", str(path), "--root", str(root), "--json")
    assert applied.returncode == 0, applied.stdout + applied.stderr
    conf = (root / "etc/libvirt/libvirtd.conf").read_text()
    assert conf.startswith(SHIPPED_LIBVIRTD_CONF) and "\nlisten_tcp = 1\n" in conf
    changes = {c["resource"]: c for c in json.loads(applied.stdout)["changes"]}
    assert changes["file/etc/libvirt/libvirtd.conf"]["action"] == "modify"  # not "create"
