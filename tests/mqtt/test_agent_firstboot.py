"""``csboot firstboot`` on a blank root: config written, converged once, daemon enabled."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from bootstrap.agent.config import load_config
from bootstrap.agent.unit import UNIT_TEXT
from simulator.broker import Mosquitto
from tests.mqtt.conftest import CSBOOT, PREFIX, Client, role_doc

pytestmark = pytest.mark.mqtt

WANTS = Path("etc/systemd/system/multi-user.target.wants/csboot-agent.service")


def firstboot(root: Path, cmdline: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            str(CSBOOT),
            "firstboot",
            "--root",
            str(root),
            "--cmdline",
            str(cmdline),
            "--debounce",
            "0.2",
            *extra,
        ],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_firstboot_converges_a_blank_root_and_enables_the_daemon(
    tmp_path: Path, broker: Mosquitto, client: Client, root: Path
) -> None:
    client.publish(
        f"{PREFIX}/roles/base/desired", role_doc(2, name="base", cpu={"mode": "host-passthrough"})
    )
    client.publish(f"{PREFIX}/roles/kvm/desired", role_doc(9, hypervisor="kvm"))
    cmdline = tmp_path / "cmdline"
    cmdline.write_text(
        "BOOT_IMAGE=/vmlinuz ro quiet "
        f"csboot.broker={broker.url} csboot.roles=base,kvm csboot.host=fb1.lab.example.org\n"
    )
    done = firstboot(root, cmdline, "--timeout", "20")
    assert done.returncode == 0, done.stderr
    assert "<6>" in done.stderr  # journald-style priorities, no timestamps

    config = load_config(root / "etc/cloudstack-bootstrap/agent.toml")
    assert [b.url for b in config.brokers] == [broker.url]
    assert config.roles == ("base", "kvm") and config.host == "fb1.lab.example.org"
    assert config.root == root.resolve()
    assert (root / "etc/cloudstack-bootstrap/agent.toml").stat().st_mode & 0o777 == 0o600

    props = (root / "etc/cloudstack/agent/agent.properties").read_text()
    assert "hypervisor.type=kvm" in props and "guest.cpu.mode=host-passthrough" in props
    status = client.status("fb1.lab.example.org")
    assert status is not None and status["state"] == "converged"
    assert status["applied"] == {"roles": {"base": 2, "kvm": 9}, "host": None}

    link = root / WANTS
    assert link.is_symlink()
    assert str(link.readlink()) == "/etc/systemd/system/csboot-agent.service"
    assert (root / "etc/systemd/system/csboot-agent.service").read_text() == UNIT_TEXT
    # the cache holds the state in force for the daemon's first start
    assert (root / "var/lib/cloudstack-bootstrap/agent/last-known-good.json").exists()


def test_firstboot_without_desired_state_fails_but_still_enables(
    tmp_path: Path, broker: Mosquitto, client: Client, root: Path
) -> None:
    cmdline = tmp_path / "cmdline"
    cmdline.write_text(f"csboot.broker={broker.url} csboot.roles=kvm csboot.host=fb2\n")
    done = firstboot(root, cmdline, "--timeout", "2")
    assert done.returncode == 1
    assert (root / WANTS).is_symlink()
    status = client.status("fb2")
    assert status is not None and status["state"] == "failed"
    assert status["error"]["code"] == "timeout"
    assert not (root / "etc/cloudstack/agent/agent.properties").exists()


def test_firstboot_without_a_broker_is_a_config_error(tmp_path: Path, root: Path) -> None:
    cmdline = tmp_path / "cmdline"
    cmdline.write_text("quiet csboot.roles=kvm\n")
    done = firstboot(root, cmdline, "--timeout", "1")
    assert done.returncode == 1 and "broker" in done.stderr
    assert not (root / WANTS).exists()
