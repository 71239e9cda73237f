"""The run's report: rich tables for people, one JSON object for scripts (``--json``)."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from typing import Any, TextIO

from rich.console import Console
from rich.table import Table

from simulator.checks import CheckResult
from simulator.fleet import RolloutRow

__all__ = ["render", "to_json"]

MAX_ROWS = 40  # per table; failures always shown first


def to_json(
    *,
    net: str,
    run: str,
    phase: str,
    rollout: Sequence[RolloutRow] = (),
    checks: Sequence[CheckResult] = (),
    timings: dict[str, float] | None = None,
    error: str | None = None,
    mode: str = "native",
) -> dict[str, Any]:
    ok = error is None and all(r.ok for r in rollout) and all(c.ok for c in checks)
    return {
        "net": net,
        "run": run,
        "mode": mode,
        "phase": phase,
        "ok": ok,
        "error": error,
        "rollout": [
            {"host": r.host, "ok": r.ok, "state": r.state, "detail": r.detail, "seconds": r.seconds}
            for r in rollout
        ],
        "checks": [c.to_json() for c in checks],
        "failed_checks": [c.name for c in checks if not c.ok],
        "timings": {k: round(v, 2) for k, v in (timings or {}).items()},
    }


def _mark(ok: bool) -> str:
    return "[green]ok[/]" if ok else "[bold red]FAIL[/]"


def render(data: dict[str, Any], out: TextIO = sys.stdout) -> None:
    console = Console(file=out, highlight=False, width=120)
    if data["rollout"]:
        t = Table(title=f"rollout of {data['net']} (run {data['run']})")
        for col in ("host", "", "state", "detail", "s"):
            t.add_column(col)
        for r in data["rollout"]:
            t.add_row(r["host"], _mark(r["ok"]), r["state"], r["detail"], f"{r['seconds']:.1f}")
        console.print(t)
    for check in data["checks"]:
        title = f"check {check['name']}: " + (
            f"skipped ({check['skipped']})"
            if check["skipped"]
            else "passed"
            if check["ok"]
            else f"FAILED, hosts: {', '.join(check['hosts']) or '-'}"
        )
        if check["skipped"]:
            console.print(f"[yellow]{title}[/]")
            continue
        t = Table(title=title)
        for col in ("", "what", "detail"):
            t.add_column(col)
        rows = sorted(check["rows"], key=lambda r: r["ok"])
        for r in rows[:MAX_ROWS]:
            t.add_row(_mark(r["ok"]), r["subject"], r["detail"])
        if len(rows) > MAX_ROWS:
            t.add_row(
                "",
                f"... {len(rows) - MAX_ROWS} more rows (all ok)"
                if rows[MAX_ROWS]["ok"]
                else f"... {len(rows) - MAX_ROWS} more rows",
                "",
            )
        console.print(t)
    if data["timings"]:
        console.print("timings: " + ", ".join(f"{k} {v:.1f}s" for k, v in data["timings"].items()))
    if data["error"]:
        console.print(f"[bold red]error:[/] {data['error']}")
    verdict = (
        "every check passed"
        if data["ok"]
        else (
            "failed: " + ", ".join(data["failed_checks"] or ["rollout"])
            if not data["error"]
            else "could not build"
        )
    )
    console.print(f"[bold]{data['net']}[/] ({data['mode']}): {verdict}")


def emit(data: dict[str, Any], as_json: bool) -> None:
    if as_json:
        json.dump(data, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        render(data)
