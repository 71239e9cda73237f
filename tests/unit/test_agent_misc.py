"""sd_notify, journald log lines, backoff, kernel command line, unit file, keygen/sign."""

from __future__ import annotations

import json
import logging
import socket
import subprocess
from pathlib import Path

import pytest

from bootstrap.agent.firstboot import Settings, build_config, enable_unit, parse_cmdline
from bootstrap.agent.notify import JournalFormatter, sd_notify
from bootstrap.agent.session import Backoff
from bootstrap.agent.unit import UNIT_TEXT
from bootstrap.errors import ConfigError
from bootstrap.host.root import HostRoot

REPO = Path(__file__).resolve().parents[2]


def test_sd_notify_datagram(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert sd_notify("READY=1") is False
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(tmp_path / "n.sock"))
        monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "n.sock"))
        assert sd_notify("READY=1", "STATUS=converged")
        assert sock.recv(100) == b"READY=1\nSTATUS=converged"


def test_journal_lines_have_priority_and_no_timestamp() -> None:
    fmt = JournalFormatter()
    rec = logging.LogRecord("bootstrap.agent", logging.WARNING, __file__, 1, "a\nb", None, None)
    assert fmt.format(rec) == "<4>bootstrap.agent: a\n<4>b"
    rec = logging.LogRecord("x", logging.INFO, __file__, 1, "ok %d", (7,), None)
    assert fmt.format(rec) == "<6>x: ok 7"


def test_backoff_grows_with_jitter_and_caps() -> None:
    b = Backoff(0.5, 8.0)
    for attempt, base in ((0, 0.5), (1, 1.0), (3, 4.0), (10, 8.0)):
        delays = {b.delay(attempt) for _ in range(50)}
        assert all(base / 2 <= d <= base for d in delays)
        assert len(delays) > 1  # jittered


def test_cmdline_and_settings(tmp_path: Path) -> None:
    found = parse_cmdline(
        "BOOT_IMAGE=/vmlinuz quiet csboot.broker=mqtts://b1:8883,mqtt://b2 csboot.roles=kvm,base "
        "csboot.host=kvm7.lab csboot.unknown=1 csboot.prefix=x/y\n"
    )
    assert found == {
        "broker": "mqtts://b1:8883,mqtt://b2",
        "roles": "kvm,base",
        "host": "kvm7.lab",
        "prefix": "x/y",
    }
    merged = Settings(roles=("lxc",)).overlay(found)
    config = build_config(merged, tmp_path, None)
    assert [b.url for b in config.brokers] == ["mqtts://b1:8883", "mqtt://b2:1883"]
    assert config.roles == ("lxc",) and config.host == "kvm7.lab" and config.prefix == "x/y"
    assert config.root == tmp_path
    with pytest.raises(ConfigError, match="broker"):
        build_config(Settings(), tmp_path, None)


def test_enable_unit_is_idempotent(tmp_path: Path) -> None:
    host = HostRoot(tmp_path)
    link = enable_unit(host)
    assert enable_unit(host) == link
    assert str(link.readlink()) == "/etc/systemd/system/csboot-agent.service"
    (tmp_path / "lib/systemd/system").mkdir(parents=True)
    (tmp_path / "lib/systemd/system/csboot-agent.service").write_text(UNIT_TEXT)
    assert str(enable_unit(host).readlink()) == "/lib/systemd/system/csboot-agent.service"


def test_packaged_unit_matches_the_embedded_one() -> None:
    text = (REPO / "packaging/csboot-agent.service").read_text()
    assert text == UNIT_TEXT
    assert "Type=notify" in text and "Restart=on-failure" in text
    assert "ExecStart=/usr/bin/csboot agent -c /etc/cloudstack-bootstrap/agent.toml" in text


def test_keygen_and_sign_round_trip(tmp_path: Path) -> None:
    csboot = REPO / ".venv/bin/csboot"
    key = tmp_path / "ops.key"
    out = subprocess.run(
        [csboot, "keygen", "--out", key], capture_output=True, text=True, check=True
    )
    entry = out.stdout.strip()
    assert entry.startswith("ops:") and key.stat().st_mode & 0o777 == 0o600
    again = subprocess.run(
        [csboot, "keygen", "--out", key], check=False, capture_output=True, text=True
    )
    assert again.returncode == 1  # never overwrites a key silently
    (tmp_path / "d.json").write_text(
        json.dumps(
            {"apiVersion": "cloudstack-bootstrap/v1", "kind": "Role", "name": "kvm", "version": 1}
        )
    )
    signed = subprocess.run(
        [csboot, "sign", "-k", key, "--key-id", "ops", tmp_path / "d.json"],
        capture_output=True,
        text=True,
        check=True,
    )
    doc = json.loads(signed.stdout)
    assert doc["signature"]["keyId"] == "ops"
    from bootstrap.agent.config import parse_config
    from bootstrap.model.document import parse_document
    from bootstrap.model.signing import verify

    trusted = parse_config({"broker": "mqtt://x", "host": "h", "trusted_keys": [entry]}).trusted()
    verify(parse_document(doc), trusted, prefix="cloudstack/bootstrap/v1")  # raises if not
