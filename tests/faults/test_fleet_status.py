"""Issue 10, item 4: ``csboot status`` never crashes on a status a host wrote.

Every hostile status of the issue's reproduction 4 (and more: wrong types, huge, invalid
UTF-8, escape sequences) is published retained with Debian's ``mosquitto_pub -f`` (bytes
exactly as given) next to a real agent's status; the real ``csboot status`` process shows
each as ``invalid`` with its reason, the real host as it is, and nothing any host wrote
reaches the terminal as an escape or control sequence.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from simulator.broker import Mosquitto
from tests.mqtt.conftest import CSBOOT, HOST, PREFIX, AgentProcess, Client, role_doc, write_config

pytestmark = pytest.mark.mqtt

ESCAPES = "\x1b]0;owned\x07\x1b[2J\x1b[H\x9b31m\x1b]8;;http://evil\x1b\\\u202e\u2066\x00\r\n"


def _valid(host: str, **changes: Any) -> bytes:
    doc = {
        "apiVersion": "cloudstack-bootstrap/v1",
        "host": host,
        "state": "converged",
        "applied": {"roles": {"kvm": 1}, "host": None},
        "changes": [],
        "checks": [],
        "error": None,
        "at": "2026-12-01T00:00:00.000Z",
        "agent": {"version": "0.1.0"},
    }
    return json.dumps({**doc, **changes}, ensure_ascii=False).encode()


HOSTILE: dict[str, bytes] = {
    # the reproduction 4, verbatim
    "evil-deep": b"[" * 100_000 + b"]" * 100_000,
    "evil-checks": b'{"state":"converged","applied":{"roles":{"kvm":1}},"checks":[1]}',
    # the same ideas in otherwise valid statuses
    "evil-check-int": _valid("evil-check-int", checks=[1]),
    "evil-types": _valid("evil-types", applied={"roles": {"kvm": "7"}}),
    "evil-bool": _valid("evil-bool", checks=[{"name": "x", "ok": "yes", "detail": ""}]),
    "evil-digits": _valid("evil-digits").replace(b'"kvm": 1', b'"kvm": ' + b"9" * 5000),
    "evil-huge": _valid("evil-huge", error={"code": "x", "message": "A" * 3_000_000}),
    "evil-utf8": _valid("evil-utf8").replace(b"converged", b"conv\xff\xfeerged"),
    "evil-state": _valid("evil-state", state="converged" + ESCAPES),
    "evil-object": b'"just a string"',
    "evil-host": _valid("someone-else"),
}
# valid statuses whose strings carry escapes: shown, but cleaned
SHOWN: dict[str, bytes] = {
    "evil-text": _valid(
        "evil-text",
        state="failed",
        error={"code": "apply", "message": "boom" + ESCAPES + "end"},
        checks=[{"name": "chk" + ESCAPES, "ok": False, "detail": ESCAPES}],
        at="2026" + ESCAPES[:20],
    ),
}


# beyond what a fleet tool accepts at all (MQTT 5 maximum packet size): never delivered
GIANT = {"evil-giant": _valid("evil-giant", error={"code": "x", "message": "G" * 6_000_000})}


def publish_file(client: Client, topic: str, payload: bytes, directory: Path) -> None:
    path = directory / f"payload-{len(list(directory.iterdir()))}"
    path.write_bytes(payload)
    base = ["-h", client.broker.host, "-p", str(client.broker.port)]
    argv = ["mosquitto_pub", *base, "-q", "1", "-r", "-t", topic, "-f", str(path)]
    subprocess.run(argv, check=True, capture_output=True, timeout=30)


def status(broker: Mosquitto, *args: str, env: dict[str, str] | None = None) -> bytes:
    """stdout of a real ``csboot status``; stderr must be terminal-safe too."""
    argv = [str(CSBOOT), "status", "--broker", broker.url, *args]
    done = subprocess.run(
        argv, capture_output=True, timeout=60, check=False, env={**os.environ, **(env or {})}
    )
    assert done.returncode == 0, done.stderr.decode(errors="replace")
    assert b"Traceback" not in done.stderr, done.stderr.decode(errors="replace")
    assert_terminal_safe(done.stderr)
    return done.stdout


SGR = re.compile(rb"\x1b\[[0-9;]*m")  # rich's own colours on a terminal, nothing else


def assert_terminal_safe(out: bytes) -> None:
    text = SGR.sub(b"", out).decode()
    bad = [c for c in text if (ord(c) < 32 and c != "\n") or 0x7F <= ord(c) < 0xA0]
    assert not bad, bad
    for char in ("\u202e", "\u2066"):
        assert char not in text
    assert "http://evil" not in text or "]8;" not in text


@pytest.fixture
def fleet_statuses(
    broker: Mosquitto,
    client: Client,
    tmp_path: Path,
    agents: Callable[..., AgentProcess],
) -> Mosquitto:
    """A real agent converged on v1, plus every hostile status, all retained."""
    root = tmp_path / "root"
    root.mkdir()
    agents(write_config(tmp_path / "agent.toml", [broker.url], root))
    client.publish(f"{PREFIX}/roles/kvm/desired", role_doc(1))
    client.wait_status(lambda s: s["state"] == "converged")
    payloads = tmp_path / "payloads"
    payloads.mkdir()
    for host, payload in {**HOSTILE, **SHOWN, **GIANT}.items():
        publish_file(client, f"{PREFIX}/hosts/{host}/status", payload, payloads)
    return broker


def test_status_json_shows_every_hostile_status_as_invalid(fleet_statuses: Mosquitto) -> None:
    out = status(fleet_statuses, "--json")
    view = json.loads(out)
    rows = {r["host"]: r for r in view["hosts"]}
    assert rows[HOST]["state"] == "converged" and rows[HOST]["roles"] == {"kvm": 1}
    for host in HOSTILE:
        assert rows[host]["state"] == "invalid", rows[host]
        assert rows[host]["error"], host  # the reason
    assert "deep" in rows["evil-deep"]["error"]
    assert "bytes" in rows["evil-huge"]["error"] and "UTF-8" in rows["evil-utf8"]["error"]
    assert "checks" in rows["evil-check-int"]["error"]
    assert "evil-giant" not in rows  # the broker never sent it (maximum packet size)
    assert rows["evil-text"]["state"] == "failed"
    assert rows["evil-text"]["error"].startswith("boom") and rows["evil-text"]["error"].endswith(
        "end"
    )
    assert_terminal_safe(out)
    # a role filter keeps the hosts whose status cannot say which roles they run
    kvm = {
        r["host"] for r in json.loads(status(fleet_statuses, "--json", "--role", "kvm"))["hosts"]
    }
    assert HOST in kvm and set(HOSTILE) <= kvm


@pytest.mark.parametrize("terminal", [False, True])
def test_status_table_shows_invalid_and_no_escape_reaches_the_terminal(
    fleet_statuses: Mosquitto, terminal: bool
) -> None:
    env = {"FORCE_COLOR": "1", "TERM": "xterm-256color", "COLUMNS": "250"} if terminal else {}
    out = status(fleet_statuses, env={"COLUMNS": "250", **env})
    if terminal:
        assert SGR.search(out)  # it did render for a terminal
    assert_terminal_safe(out)
    text = SGR.sub(b"", out).decode()
    assert HOST in text and "converged" in text
    for host in HOSTILE:
        line = next(line for line in text.splitlines() if host in line)
        assert "invalid" in line, line
