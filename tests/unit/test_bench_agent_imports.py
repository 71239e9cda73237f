"""``bench/agent_imports.py``: a module is left out with what it brought in (issue 11)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
BENCH = REPO / "bench/agent_imports.py"
_spec = importlib.util.spec_from_file_location("bench_agent_imports", BENCH)
assert _spec is not None and _spec.loader is not None
agent_imports = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(agent_imports)


def test_a_subtree_goes_with_its_root_and_nothing_else_does() -> None:
    # -X importtime's order: children first, one level deeper than their importer; a module
    # pydantic imported first goes with it (whatever else needs it imports it again)
    rows = [
        ("typing", 2),
        ("pydantic._internal", 2),
        ("pydantic", 1),
        ("json", 1),
        ("bootstrap.model.spec", 0),
        ("socket", 1),
        ("paho.mqtt.client", 0),
    ]
    assert agent_imports.without(rows, ("pydantic",)) == [
        "json",
        "bootstrap.model.spec",
        "socket",
        "paho.mqtt.client",
    ]
