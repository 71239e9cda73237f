"""The shared status document: strict, bounded, parsed from bytes without trusting them;
terminal-safe text; the fleet tools import neither the agent daemon nor the host engine."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, datetime
from typing import Any

import pytest
from rich.console import Console

from bootstrap.agent.status import status_document
from bootstrap.engine.check import Check
from bootstrap.engine.resource import Change
from bootstrap.errors import InvalidStatus, StaleDocument
from bootstrap.fleet.status import render, rows
from bootstrap.fleet.view import FleetView
from bootstrap.wire.status import MAX_STATUS_BYTES, MAX_TEXT, parse_status
from bootstrap.wire.text import printable

GOOD = status_document(host="h1", state="converged", applied={"roles": {"kvm": 3}, "host": 2})


def _with(**changes: Any) -> bytes:
    return json.dumps({**GOOD, **changes}).encode()


HOSTILE: dict[str, bytes] = {
    "deep": b"[" * 100_000 + b"]" * 100_000,
    "deep-object": b'{"a":' * 50_000 + b"1" + b"}" * 50_000,
    "checks-int": b'{"state":"converged","applied":{"roles":{"kvm":1}},"checks":[1]}',
    "claims": b'{"state":"converged","applied":{"roles":{"web":999999999999}}}',
    "checks-wrong-type": _with(checks=[{"name": "x", "ok": "yes"}]),
    "state-unknown": _with(state="pwned"),
    "version-bool": _with(applied={"roles": {"kvm": True}}),
    "version-digits": _with(applied={"roles": {"kvm": 7}}).replace(
        b'"kvm": 7', b'"kvm": ' + b"1" * 5000
    ),
    "version-float": _with(applied={"roles": {"kvm": 2.0}}),
    "huge": _with(error={"code": "x", "message": "A" * (MAX_STATUS_BYTES + 1)}),
    "long-message": _with(error={"code": "x", "message": "A" * (MAX_TEXT + 1)}),
    "invalid-utf8": b'{"state": "\xff\xfe converged"}',
    "not-object": b"[1, 2]",
    "nan": _with(at="x").replace(b'"x"', b"NaN"),
    "duplicate-key": b'{"state": "converged", "state": "failed"}',
    "other-host": _with(host="h2"),
    "role-name": _with(applied={"roles": {"\x1b[2J": 1}}),
}


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_statuses_are_refused_with_a_reason(name: str) -> None:
    with pytest.raises(InvalidStatus) as info:
        parse_status(HOSTILE[name], host="h1")
    assert info.value.message


def test_the_agent_builds_what_the_fleet_parses_and_clips_what_it_echoes() -> None:
    doc = parse_status(json.dumps(GOOD).encode(), host="h1")
    assert doc.role_version("kvm") == 3 and doc.applied.host == 2 and doc.error is None
    huge = status_document(
        host="h1",
        state="rejected",
        applied={"roles": {}},
        error=StaleDocument("x" * 50_000_000),
        changes=[Change(f"file/{i}", "create", "y" * 5000) for i in range(1000)],
    )
    wire = json.dumps(huge).encode()
    assert len(wire) < MAX_STATUS_BYTES
    again = parse_status(wire, host="h1")
    assert again.error is not None and again.error.field == "version"
    assert len(again.error.message) <= MAX_TEXT and len(again.changes) == 200
    assert "drift" not in huge and huge["error"]["code"] == "stale"


def test_the_agent_cuts_long_lists_to_fit_the_wire_and_says_so() -> None:
    long = "r" * 5000
    doc = status_document(
        host="h1",
        state="converged",
        applied={"roles": {"kvm": 1}},
        changes=[Change(f"{long}{i}", "modify", long) for i in range(500)],
        drift=[Change(f"{long}{i}", "modify", long) for i in range(500)],
        checks=[Check(f"c{i}" + "n" * 300, True, long) for i in range(500)],
    )
    wire = json.dumps(doc).encode()
    assert len(wire) <= MAX_STATUS_BYTES
    parsed = parse_status(wire, host="h1")
    assert parsed.changes[-1].detail.endswith(" more") and parsed.drift is not None
    kept = len(parsed.changes) - 1
    assert parsed.changes[-1].detail == f"{500 - kept} more"
    assert 0 < len(parsed.checks) <= 200


def test_printable_strips_escapes_controls_and_bidi() -> None:
    hostile = "ok\x1b[31mred\x1b]0;title\x07\x1b]8;;http://x\x1b\\link\x9b2J\u202egnp.exe\x00\n!"
    clean = printable(hostile)
    assert clean == "okredlinkgnp.exe !"
    assert printable("a" * 500, 10) == "a" * 9 + "…"
    assert printable(b"\x1b") == "b'\\x1b'"


def test_status_view_shows_invalid_hosts_and_nothing_a_host_wrote_reaches_the_terminal() -> None:
    view = FleetView("p")
    view.feed("p/hosts/h1/status", json.dumps(GOOD).encode())
    for name, payload in HOSTILE.items():
        view.feed(f"p/hosts/{name}/status", payload)
    evil = {**GOOD, "host": "evil", "at": "\x1b]0;pwned\x07", "state": "converged"}
    evil["checks"] = [{"name": "[link=http://x]\x1b[5mc\u202e", "ok": False, "detail": ""}]
    evil["error"] = {"code": "x", "message": "\x1b[2J\x1b[H\u2066boom"}
    view.feed("p/hosts/evil/status", json.dumps(evil).encode())
    now = datetime.now(UTC)
    table = {r["host"]: r for r in rows(view, None, now)}
    assert table["h1"]["state"] == "converged" and table["h1"]["roles"] == {"kvm": 3}
    for name in HOSTILE:
        assert table[name]["state"] == "invalid" and table[name]["error"], name
    assert table["evil"]["error"] == "boom" and table["evil"]["at"] == ""
    assert [r["host"] for r in rows(view, "kvm", now)] == sorted([*HOSTILE, "evil", "h1"])
    console = Console(record=True, force_terminal=True, width=200, color_system="truecolor")
    console.print(render(view, None, now))
    out = console.export_text(styles=False)
    assert "\x1b" not in out and "\u202e" not in out and "\u2066" not in out
    styled = console.export_text(styles=True)
    assert "]8;" not in styled  # no hyperlink from "[link=...]" markup in a check name


def test_fleet_tools_do_not_import_the_host_engine() -> None:
    code = (
        "import sys, bootstrap.fleet.cli, bootstrap.fleet.rollout, bootstrap.fleet.status;"
        "print(' '.join(sorted(m for m in sys.modules if m.startswith('bootstrap'))))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.split()
    forbidden = ("bootstrap.engine", "bootstrap.converge", "bootstrap.resources", "bootstrap.host")
    assert not [m for m in out if m.startswith(forbidden) or m == "bootstrap.agent.daemon"], out
    assert "bootstrap.wire.status" in out


def test_the_wire_knows_every_plan_action() -> None:
    """The status document is typed apart from the engine: the two lists must agree."""
    from typing import get_args

    from bootstrap.engine.resource import Action
    from bootstrap.wire.status import ChangeItem

    wire = get_args(ChangeItem.model_fields["action"].annotation)
    assert set(wire) == set(get_args(Action))


def test_warnings_reach_the_wire_and_parse_back() -> None:
    from bootstrap.agent.status import status_document

    doc = status_document(
        host="h1", state="converged", applied={"roles": {"kvm": 1}}, warnings=["no trusted keys"]
    )
    assert doc["warnings"] == ["no trusted keys"] and doc["state"] == "converged"
    assert parse_status(json.dumps(doc).encode(), host="h1").warnings == ("no trusted keys",)
    assert "warnings" not in status_document(host="h1", state="converged", applied={})
