"""``make bench``'s page says what failed: a failing check's first rows, a rollout's failures,
and no ratio where the checks did not run (issue 11)."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("bench_compare", REPO / "bench/compare.py")
assert _spec is not None and _spec.loader is not None
compare = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(compare)


def _row(hosts: int, converged: int, checks: dict[str, Any], failed: list[Any]) -> dict[str, Any]:
    ours = {
        "hosts": hosts,
        "converged": converged,
        "checks": checks,
        "failed": failed,
        "seconds": {"up": 1.0, "rollout": 2.0, "total": 10.0},
        "cpu": {},
        "converged_at": {},
    }
    mininet = {"seconds": 5.0, "received": "90/90", "completed_in": "4.9"}
    return {"hosts": hosts, "ours": ours, "mininet": mininet, "load": "1.0 / 1.0 / 1.0"}


def test_the_page_names_what_failed_and_gives_no_ratio_without_checks() -> None:
    reach = {"ok": False, "rows": 45, "hosts": [], "failed": ["kvm1 -> broker: no reply"]}
    ports = {"ok": True, "rows": 10, "hosts": [], "failed": []}
    text = compare.markdown(
        [
            _row(10, 10, {"reach": reach, "ports": ports}, []),
            _row(200, 199, {}, [["rejected: spec.network.uplink: Field required", 1]]),
        ],
        "2026-12-03 16:10 UTC",
    )
    assert "reach FAIL (45 rows): `kvm1 -> broker: no reply`, ports ok (10 rows)" in text
    assert "| **ratio ours / Mininet** | **2.00** |" in text
    assert "rollout failures: `rejected: spec.network.uplink: Field required` (1 host)" in text
    assert "| **ratio ours / Mininet** | — (no checks ran: not comparable) |" in text


def test_repeated_runs_are_judged_by_each_sides_median_run() -> None:
    """``--repeat``: the page shows each side's median run (a real run, whose phases add
    up), the ratio of the medians, and every run's seconds."""
    totals, walls = [40.0, 30.0, 35.0], [30.0, 36.0, 33.0]
    pairs = []
    for i, (total, wall) in enumerate(zip(totals, walls, strict=True)):
        row = _row(100, 100, {"reach": {"ok": True, "rows": 9, "hosts": [], "failed": []}}, [])
        row["ours"]["seconds"] = {"up": float(i), "total": total}
        row["ours"]["ok"] = i != 0
        row["mininet"]["seconds"] = wall
        pairs.append((row["ours"], row["mininet"]))
    chosen = compare.repeated(pairs)
    assert chosen["ours"]["seconds"] == {"up": 2.0, "total": 35.0}  # the middle, not a mix
    assert chosen["mininet"]["seconds"] == 33.0
    text = compare.markdown([{"hosts": 100, **chosen, "load": "1 / 1 / 1"}], "now")
    assert "| **ratio ours / Mininet** (medians) | **1.06** |" in text
    assert "Ours: 40.0 (failed), 30.0, 35.0 s; Mininet: 30.0, 36.0, 33.0 s" in text
    assert "each run's ratio: 1.33, 0.83, 1.06" in text
    assert "| up | 2.0 |" in text  # the median run's phases


def test_an_even_number_of_runs_takes_the_lower_middle_run() -> None:
    runs = [{"s": 4.0}, {"s": 1.0}, {"s": 3.0}, {"s": 2.0}]
    assert compare.median_run(runs, lambda r: r["s"]) == {"s": 2.0}
