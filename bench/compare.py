"""Our simulated fleet and Mininet's pingall, back to back at each size, in one run.

    sudo .venv/bin/python bench/compare.py [--sizes 10,50,100,200] [--repeat 1] [--write FILE]

For each size N: ``bench/sim_scale.py`` on ``nets/scale-100.yaml`` with N hosts (up, first
rollout, reach over every pair on every VLAN, isolation, ports, migration, cloudstack,
down), then ``mn --topo single,N --switch lxbr --controller none --arp --test pingall``.
Mininet runs inside a namespace of its own (``<run>-mininet``), so its switch and links
never touch the machine's namespace; there its raising of the machine's ARP table limit
fails, and a plain pingall of 50+ hosts crawls against the 1024-entry table (723 s at 100
hosts), so ``--arp`` (Mininet's own static ARP entries) gives Mininet its best time, the
one the ratio uses. ``--plain-upto N`` also runs the command exactly as the issue did for
sizes up to N. ``--repeat K`` runs each size K times, ours and Mininet alternating, and
judges by the medians: one run's seconds are a sample (the same work costs this machine up
to twice the CPU from one run to the next, and the first run after a quiet spell pays for
memory the virtual machine's balloon took back), so a ratio near 1.0 from one run says
little. Prints the tables; ``--write`` puts them into the marked section of
docs/benchmarks.md with the machine and the date.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from sim_scale import run, sized

from simulator.namespaces import Namespace, new_run_id, remove_all

BEGIN, END = "<!-- bench:compare:begin -->", "<!-- bench:compare:end -->"
PHASES = (
    "up",
    "settle",
    "rollout",
    "check.guests",
    "check.reach",
    "check.isolation",
    "check.ports",
    "check.migration",
    "check.cloudstack",
    "check",
    "down",
    "total",
)


def mininet(hosts: int, *, static_arp: bool = True) -> dict[str, Any]:
    """Mininet's pingall of ``hosts`` hosts on one Linux bridge, in a namespace of its own."""
    ns = Namespace.create(f"{new_run_id()}-mininet")
    argv = ["mn", "--topo", f"single,{hosts}", "--switch", "lxbr", "--controller", "none"]
    argv += ["--arp"] if static_arp else []
    t0 = time.monotonic()
    try:
        done = subprocess.run(
            ["ip", "netns", "exec", ns.name, *argv, "--test", "pingall"],
            capture_output=True,
            text=True,
            check=False,
            timeout=1800,
        )
    finally:
        wall = time.monotonic() - t0
        remove_all([ns])
    out = done.stdout + done.stderr
    dropped = re.search(r"Results: (\d+)% dropped \((\d+)/(\d+) received\)", out)
    completed = re.search(r"completed in ([\d.]+) seconds", out)
    return {
        "seconds": round(wall, 1),
        "completed_in": float(completed.group(1)) if completed else None,
        "received": f"{dropped.group(2)}/{dropped.group(3)}" if dropped else None,
        "dropped_pct": int(dropped.group(1)) if dropped else None,
        "exit": done.returncode,
        "tail": out.strip().splitlines()[-3:],
    }


def median_run(
    runs: list[dict[str, Any]], seconds: Callable[[dict[str, Any]], float]
) -> dict[str, Any]:
    """The run whose ``seconds(run)`` is the median (the lower middle for an even count):
    a real run, so its phases add up, not a mix of medians."""
    middle = statistics.median_low(seconds(r) for r in runs)
    return next(r for r in runs if seconds(r) == middle)


def repeated(pairs: list[tuple[dict[str, Any], dict[str, Any]]]) -> dict[str, Any]:
    """One size's row from its alternating (ours, Mininet) runs: each side's median run,
    and every run's seconds for the page."""
    ours = median_run([o for o, _ in pairs], lambda r: r["seconds"]["total"])
    mn = median_run([m for _, m in pairs], lambda r: r["seconds"])
    return {
        "ours": ours,
        "mininet": mn,
        "runs": [
            {"ours": o["seconds"]["total"], "ok": o["ok"], "mininet": m["seconds"]}
            for o, m in pairs
        ],
    }


def _runs_line(row: dict[str, Any]) -> list[str]:
    runs = row.get("runs") or []
    if len(runs) < 2:
        return []
    ours = ", ".join(f"{r['ours']:.1f}" + ("" if r["ok"] else " (failed)") for r in runs)
    mn = ", ".join(f"{r['mininet']:.1f}" for r in runs)
    each = ", ".join(f"{r['ours'] / r['mininet']:.2f}" for r in runs if r["mininet"])
    return [
        f"{len(runs)} runs, ours and Mininet alternating; the tables show each side's median "
        f"run. Ours: {ours} s; Mininet: {mn} s; each run's ratio: {each}.",
        "",
    ]


def machine() -> str:
    mem = Path("/proc/meminfo").read_text().split()[1]
    osr = dict(
        line.split("=", 1)
        for line in Path("/etc/os-release").read_text().splitlines()
        if "=" in line
    )
    return (
        f"{os.cpu_count()} cores, {int(mem) / 2**20:.0f} GiB, "
        f"{osr.get('PRETTY_NAME', '?').strip(chr(34))}, kernel {platform.release()}"
    )


def outcome(ours: dict[str, Any]) -> str:
    """Each check's verdict with its first failing rows; the rollout's failures when not
    every host converged (and the checks then did not run)."""
    parts = []
    for name, c in ours["checks"].items():
        text = f"{name} {'ok' if c['ok'] else 'FAIL'} ({c['rows']} rows)"
        if not c["ok"] and c.get("failed"):
            text += ": " + "; ".join(f"`{row}`" for row in c["failed"][:3])
        parts.append(text)
    if ours["converged"] < ours["hosts"]:
        failed = "; ".join(
            f"`{why}` ({n} host{'s' if n != 1 else ''})" for why, n in ours.get("failed") or []
        )
        parts.append(f"rollout failures: {failed or '?'}; checks not run")
    return ", ".join(parts)


def markdown(rows: list[dict[str, Any]], when: str) -> str:
    load = rows[0].get("load") if rows else None
    busy = f" (load average {load} at the start)" if load else ""
    out = [f"Measured {when} on {machine()}{busy}.", ""]
    for r in rows:
        ours, mn = r["ours"], r["mininet"]
        checked = bool(ours["checks"])
        ratio = ours["seconds"]["total"] / mn["seconds"] if mn["seconds"] else float("nan")
        shown_ratio = f"**{ratio:.2f}**" if checked else "— (no checks ran: not comparable)"
        checks = outcome(ours)
        out += [
            f"### {r['hosts']} hosts",
            "",
            "| phase | ours (s) |",
            "|---|---|",
            *(f"| {k} | {ours['seconds'][k]:.1f} |" for k in PHASES if k in ours["seconds"]),
            f"| **Mininet pingall `--arp`, wall** ({mn['received'] or '?'} received) | "
            f"**{mn['seconds']:.1f}** |",
            *(
                [
                    f"| Mininet pingall as the issue ran it (no `--arp`), wall "
                    f"({plain['received'] or '?'} received) | {plain['seconds']:.1f} |"
                ]
                if (plain := r.get("mininet_plain"))
                else []
            ),
            f"| **ratio ours / Mininet**{' (medians)' if len(r.get('runs') or []) > 1 else ''} "
            f"| {shown_ratio} |",
            "",
            *_runs_line(r),
            f"Ours: {ours['converged']}/{ours['hosts']} converged; {checks}. Mininet's own "
            f"`completed in`: {mn['completed_in']} s.",
            "",
            *_cpu_table(ours),
        ]
    sizes = [r["hosts"] for r in rows]
    out += ["### Scaling (ours, seconds per phase)", ""]
    out += ["| phase | " + " | ".join(map(str, sizes)) + " |", "|---|" + "---|" * len(sizes)]
    for k in PHASES:
        vals = [r["ours"]["seconds"].get(k) for r in rows]
        out.append(f"| {k} | " + " | ".join("-" if v is None else f"{v:.1f}" for v in vals) + " |")
    mns = " | ".join(f"{r['mininet']['seconds']:.1f}" for r in rows)
    out.append(f"| Mininet pingall `--arp` | {mns} |")
    return "\n".join(out) + "\n"


def _cpu_table(ours: dict[str, Any]) -> list[str]:
    """Where the time goes: CPU seconds each part of the fleet used in each phase."""
    cpu: dict[str, dict[str, float]] = ours.get("cpu") or {}
    if not cpu:
        return []
    parts = list(next(iter(cpu.values())))
    out = [
        "| CPU seconds | " + " | ".join(parts) + " |",
        "|---|" + "---|" * len(parts),
        *(
            f"| {phase} | " + " | ".join(f"{v.get(p, 0):.1f}" for p in parts) + " |"
            for phase, v in cpu.items()
        ),
    ]
    at = ours.get("converged_at") or {}
    if at:
        line = (
            f"Hosts converged after {at.get('median')} s (median), {at.get('p90')} s (p90), "
            f"{at.get('last')} s (last) from the publish"
        )
        if at.get("applying_median") is not None:
            line += (
                f"; a host started applying after {at['applying_median']} s and took "
                f"{at.get('apply_median')} s from there to `converged` (medians)"
            )
        out += ["", line + "."]
    return [*out, ""]


def write(path: Path, text: str) -> None:
    doc = path.read_text()
    if BEGIN not in doc:
        doc += f"\n{BEGIN}\n{END}\n"
    head, rest = doc.split(BEGIN, 1)
    _old, tail = rest.split(END, 1)
    path.write_text(f"{head}{BEGIN}\n{text}{END}{tail}")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--net", default="nets/scale-100.yaml")
    p.add_argument("--sizes", default="10,50,100,200")
    p.add_argument("--write", metavar="FILE", help="update FILE's marked section")
    p.add_argument("--json", metavar="FILE", help="also dump the raw results")
    p.add_argument("--from-json", metavar="FILE", help="render earlier results, run nothing")
    p.add_argument("--when", help="the date of --from-json results")
    p.add_argument(
        "--plain-upto", type=int, default=50, help="also Mininet without --arp up to N hosts"
    )
    p.add_argument(
        "--repeat", type=int, default=1, help="runs per size, alternating; judged by medians"
    )
    args = p.parse_args()
    if args.from_json:
        rows = json.loads(Path(args.from_json).read_text())
        text = markdown(rows, args.when or "earlier")
        print(text)
        if args.write:
            write(Path(args.write), text)
        return 0
    rows = []
    load = " / ".join(Path("/proc/loadavg").read_text().split()[:3])
    for n in (int(x) for x in args.sizes.split(",")):
        pairs = []
        for i in range(1, max(1, args.repeat) + 1):
            print(f"== {n} hosts, run {i}: ours", file=sys.stderr, flush=True)
            with sized(args.net, n) as net:
                ours = run(net)
            print(f"   {json.dumps(ours['seconds'])} ok={ours['ok']}", file=sys.stderr)
            print(f"== {n} hosts, run {i}: Mininet", file=sys.stderr, flush=True)
            mn = mininet(n)
            print(f"   {mn['seconds']} s, {mn['received']} received", file=sys.stderr)
            pairs.append((ours, mn))
        row = {"hosts": n, **repeated(pairs), "load": load}
        if n <= args.plain_upto:
            row["mininet_plain"] = plain = mininet(n, static_arp=False)
            print(f"   without --arp: {plain['seconds']} s", file=sys.stderr)
        rows.append(row)
    when = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    text = markdown(rows, when)
    print(text)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    if args.write:
        write(Path(args.write), text)
    ok = all(each["ok"] for r in rows for each in r["runs"])
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
