"""Time a simulated fleet end to end: up, rollout, each check, down.

    sudo .venv/bin/python bench/sim_scale.py [nets/scale-100.yaml] [--hosts N] [--json]

Prints one table (phase, seconds) plus the fleet's size and whether everything passed.
The fleet is always torn down. Exit 0 when the rollout converged and every check passed.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import yaml
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from simulator.fleet import Sim, SimError


def sized(net: str, hosts: int | None) -> str:
    """``net`` with ``hosts.count`` set to ``hosts`` (a temporary copy), or ``net`` itself."""
    if hosts is None:
        return net
    data = yaml.safe_load(Path(net).read_text())
    data["hosts"]["count"] = hosts
    data["name"] = f"{data['name'].rsplit('-', 1)[0]}-{hosts}"
    fd, path = tempfile.mkstemp(prefix=f"csboot-bench-{hosts}-", suffix=".yaml")
    with os.fdopen(fd, "w") as out:
        yaml.safe_dump(data, out)
    return path


def run(net: str) -> dict[str, Any]:
    """Up, rollout, every check, down: the summary (seconds per phase, checks, ok)."""
    t0 = time.monotonic()
    fleet = Sim.up(net)
    up = time.monotonic() - t0
    results = []
    try:
        rows = fleet.rollout()
        converged = sum(r.ok for r in rows)
        if converged == len(rows):
            results = fleet.check()
    finally:
        fleet.down()
    total = time.monotonic() - t0
    phases = {"up": up, **{k: v for k, v in fleet.timings.items() if k not in ("fabric", "hosts")}}
    phases["total"] = total
    ok = converged == len(rows) and bool(results) and all(r.ok for r in results)
    return {
        "net": fleet.net.name,
        "hosts": len(fleet.layout.hosts),
        "converged": converged,
        "checks": {r.name: {"ok": r.ok, "rows": len(r.rows), "hosts": r.hosts} for r in results},
        "seconds": {k: round(v, 1) for k, v in phases.items()},
        "cpus": os.cpu_count(),
        "kernel": platform.release(),
        "ok": ok,
        "failed": Counter(f"{r.state}: {r.detail[:100]}" for r in rows if not r.ok).most_common(5),
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("net", nargs="?", default="nets/scale-100.yaml")
    p.add_argument("--hosts", type=int, help="override the net's host count")
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    try:
        summary = run(sized(args.net, args.hosts))
    except SimError as exc:
        print(f"could not build: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0 if summary["ok"] else 1
    t = Table(
        title=f"{summary['net']}: {summary['hosts']} hosts, "
        f"{summary['converged']} converged, {os.cpu_count()} CPUs"
    )
    t.add_column("phase")
    t.add_column("seconds", justify="right")
    for k, v in summary["seconds"].items():
        t.add_row(k, f"{v:.1f}")
    for name, c in summary["checks"].items():
        t.add_row(
            f"  {name}: {'ok' if c['ok'] else 'FAIL ' + ','.join(c['hosts'][:10])}",
            f"{c['rows']} rows",
        )
    Console().print(t)
    for what, n in summary["failed"]:
        print(f"  {n} host(s) {what}")
    return 0 if summary["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
