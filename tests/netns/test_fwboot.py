"""Our boot file on a real kernel: ``nft -j -f`` of it in a fresh namespace gives exactly
the table the agent writes live, loading it twice changes nothing, other tables stay."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from bootstrap.model.spec import Firewall
from bootstrap.resources.firewall import write_table
from bootstrap.resources.fwboot import RULES_FILE, render_rules, render_unit
from bootstrap.resources.nft_rules import desired_state
from simulator.namespaces import Namespace
from simulator.reboot import exec_start

pytestmark = [pytest.mark.root, pytest.mark.netns]
NamespaceFactory = Callable[[str], Namespace]

FW = Firewall.model_validate(
    {
        "policy": "drop",
        "allow_tcp": [22, 1798, 16509, "5900-6100", "49152-49216"],
        "sources": ["192.168.42.0/24", "10.9.0.7/32", "fd42::/64"],
    }
)
FOREIGN = "table ip operator { chain c { type filter hook input priority 0; policy accept; }; }"


def _nft(ns: Namespace, *args: str) -> str:
    done = ns.run(["nft", *args], capture_output=True, text=True, check=False, timeout=30)
    assert done.returncode == 0, done.stderr
    return str(done.stdout)


def _strip(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _strip(v) for k, v in obj.items() if k != "handle"}
    if isinstance(obj, list):
        return [_strip(v) for v in obj]
    return obj


def listing(ns: Namespace, *what: str) -> list[Any]:
    """``nft -j list ...`` without metainfo and handles."""
    data = json.loads(_nft(ns, "-j", "list", *what))
    return [_strip(o) for o in data["nftables"] if "metainfo" not in o]


def test_boot_file_loads_exactly_our_live_table(make_ns: NamespaceFactory, tmp_path: Path) -> None:
    live, booted = make_ns("live"), make_ns("booted")
    with live.inside():
        write_table(desired_state(FW))  # what the agent does
    want = listing(live, "table", "inet", "cloudstack_bootstrap")
    assert any("rule" in o for o in want) and any("set" in o for o in want)

    path = tmp_path / "firewall.nft.json"
    path.write_bytes(render_rules(FW))
    # the command line our unit runs, with its file rewritten to this one
    ((exe, *args),) = exec_start(render_unit().decode())
    argv = [exe, *(str(path) if a == RULES_FILE else a for a in args)]
    check = booted.run([exe, "-c", *argv[1:]], capture_output=True, text=True, check=False)
    assert check.returncode == 0, check.stderr  # nft's check mode accepts the file
    assert listing(booted, "ruleset") == []  # check mode changed nothing

    subprocess.run(booted.argv(["nft", "-f", "-"]), input=FOREIGN, text=True, check=True)
    foreign = listing(booted, "table", "ip", "operator")
    first = booted.run(argv, capture_output=True, text=True, check=False)
    assert first.returncode == 0, first.stderr
    assert listing(booted, "table", "inet", "cloudstack_bootstrap") == want
    again = booted.run(argv, capture_output=True, text=True, check=False)
    assert again.returncode == 0, again.stderr
    assert listing(booted, "table", "inet", "cloudstack_bootstrap") == want
    assert listing(booted, "table", "ip", "operator") == foreign  # not ours: untouched
    tables = [o["table"]["name"] for o in listing(booted, "tables")]
    assert sorted(tables) == ["cloudstack_bootstrap", "operator"]
