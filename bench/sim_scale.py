"""Time a simulated fleet end to end: up, rollout, each check, down.

    sudo .venv/bin/python bench/sim_scale.py [nets/scale-100.yaml] [--hosts N] [--json]
        [--prefault GIB] [--counters]

Prints one table (phase, seconds) plus the fleet's size and whether everything passed,
the CPU seconds of each part per phase, and the fresh memory each phase took. The fleet
is always torn down. Exit 0 when the rollout converged and every check passed.

``--prefault GIB`` touches and frees that much memory just before the rollout (see
:func:`prefault`): the rollout then measures the fleet without this virtual machine's
cost of first touching memory its host took back.

``--counters`` also counts the work each host did in the rollout (:func:`work_by_host`):
its vswitchd's own counters and its agent's page faults and context switches. Work does
not move with the machine's load as seconds do (the same rollout's CPU moves by 40 % from
one run to the next here), so a change is judged by it first. Reading them costs a second's
wait and an ``ovs-appctl`` per host before and after the rollout, outside the rollout's
time and taken out of the total (their CPU shows as ``other`` in the up and check phases).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from simulator.fleet import Sim, SimError


@contextlib.contextmanager
def sized(net: str, hosts: int | None) -> Iterator[str]:
    """``net`` with ``hosts.count`` set to ``hosts`` (a temporary copy, removed after the
    block), or ``net`` itself."""
    if hosts is None:
        yield net
        return
    data = yaml.safe_load(Path(net).read_text())
    data["hosts"]["count"] = hosts
    data["name"] = f"{data['name'].rsplit('-', 1)[0]}-{hosts}"
    fd, path = tempfile.mkstemp(prefix=f"csboot-bench-{hosts}-", suffix=".yaml")
    try:
        with os.fdopen(fd, "w") as out:
            yaml.safe_dump(data, out)
        yield path
    finally:
        os.unlink(path)


TICK = os.sysconf("SC_CLK_TCK")


def _stat(pid: int) -> list[str]:
    """``/proc/PID/stat``'s fields after the command's name (index 0 is field 3, the
    state); OSError once the process is gone."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1].split()


def _cpu(pid: int, *, children: bool = False) -> float:
    """CPU seconds (user + system) a process has used so far; 0 once it is gone.
    ``children``: with those of its children it has reaped (an agent's workers)."""
    try:
        fields = _stat(pid)
    except (OSError, IndexError):
        return 0.0
    used = int(fields[11]) + int(fields[12])
    if children:
        used += int(fields[13]) + int(fields[14])
    return used / TICK


def _busy() -> float:
    """CPU seconds the whole machine has been busy so far (``/proc/stat``: all but idle)."""
    user, nice, system, _idle, _iowait, irq, softirq, steal = map(
        int, Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]
    )
    return (user + nice + system + irq + softirq + steal) / TICK


def cpu_before() -> dict[str, float]:
    """What :func:`cpu_by_part` counts from, taken before the fleet exists."""
    return {"simulator": _cpu(os.getpid()), "other": _busy() - _cpu(os.getpid())}


def cpu_by_part(fleet: Sim) -> dict[str, float]:
    """CPU seconds used so far by the fleet's parts: agents (with the workers they forked
    and reaped: bootstrap/agent/worker.py), host OVS daemons, the switch,
    the broker, this process (the simulator: publishing, waiting, probing), and ``other``:
    the rest of the machine's busy time (the checks' helper processes, QEMU, commands,
    interrupts; and whatever else runs on the machine, so measure on a quiet one)."""
    parts = {"agents": 0.0, "host ovs": 0.0, "switch": 0.0, "broker": 0.0}
    for host in fleet.hosts.values():
        if host.agent is not None:
            parts["agents"] += _cpu(host.agent.pid, children=True)
        if host.ovs is not None:
            parts["host ovs"] += sum(_cpu(p.pid) for p in host.ovs._procs.values())
    if fleet.fabric is not None and fleet.fabric.ovs is not None:
        parts["switch"] = sum(_cpu(p.pid) for p in fleet.fabric.ovs._procs.values())
    if fleet.broker is not None and fleet.broker.mosquitto is not None:
        proc = fleet.broker.mosquitto.process
        parts["broker"] = _cpu(proc.pid) if proc is not None else 0.0
    if fleet.zygote is not None:  # the agents' shared imports (simulator/zygote.py)
        parts["agents"] += _cpu(fleet.zygote.proc.pid)
    parts["simulator"] = _cpu(os.getpid())
    parts["other"] = _busy() - sum(parts.values())
    return parts


COVERAGE_LAG = 1.1
"""vswitchd adds each thread's counts to the totals that ``coverage/show`` prints once a
second: a reading waits that long after the work it counts."""

WORK = ("bridge_reconfigure", "xlate_actions", "netdev_received")
"""A host's vswitchd counters read by :func:`work_by_host`: how often it reconfigured its
bridges (each database change, each change of one of its links), how many flows it
translated, how many frames its datapath received (a flood reaches every host)."""


def coverage_totals(shown: str, keys: tuple[str, ...]) -> dict[str, int]:
    """The totals of ``keys`` in ``ovs-appctl coverage/show``'s text (a line a counter:
    ``name  rates...  total: N``); a counter that never counted is not shown: left out."""
    totals: dict[str, int] = {}
    for line in shown.splitlines():
        key, _, rest = line.partition(" ")
        if key in keys and "total:" in rest:
            totals[key] = int(rest.rsplit("total:", 1)[1])
    return totals


def work_by_host(fleet: Sim) -> dict[str, dict[str, int]]:
    """Each host's work so far: its vswitchd's :data:`WORK` counters (``coverage/show``)
    and its agent's minor page faults (its own and its reaped workers': a forked worker
    copies the pages it writes) and context switches (each wake-up: a message, an event,
    a line from its worker). It first waits :data:`COVERAGE_LAG`."""
    time.sleep(COVERAGE_LAG)  # vswitchd's totals lag its work by up to a second
    out: dict[str, dict[str, int]] = {}
    for name, host in fleet.hosts.items():
        counts = dict.fromkeys(WORK, 0)
        if host.ovs is not None:
            counts |= coverage_totals(host.ovs.appctl("ovs-vswitchd", "coverage/show"), WORK)
        if host.agent is not None:
            try:
                fields = _stat(host.agent.pid)
                counts["agent faults"] = int(fields[7])  # minflt
                counts["worker faults"] = int(fields[8])  # cminflt: its reaped children's
                status = Path(f"/proc/{host.agent.pid}/status").read_text()
                counts["agent wake-ups"] = sum(
                    int(line.split()[1])
                    for line in status.splitlines()
                    if line.startswith(("voluntary_ctxt_switches", "nonvoluntary_ctxt_switches"))
                )
            except (OSError, IndexError, ValueError):
                pass  # the agent is gone: its counters are left out
        out[name] = counts
    return out


def work_medians(
    after: dict[str, dict[str, int]], before: dict[str, dict[str, int]]
) -> dict[str, float]:
    """Per host, the median of each counter's growth between the two readings."""
    grown: dict[str, list[int]] = {}
    for name, counts in after.items():
        for key, value in counts.items():
            if key in before.get(name, {}):
                grown.setdefault(key, []).append(value - before[name][key])
    return {k: sorted(v)[len(v) // 2] for k, v in grown.items() if v}


def _delta(after: dict[str, float], before: dict[str, float]) -> dict[str, float]:
    return {k: round(after[k] - before.get(k, 0.0), 1) for k in after}


def anon_mib() -> float:
    """The machine's anonymous memory in MiB (``/proc/meminfo`` AnonPages)."""
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("AnonPages:"):
            return int(line.split()[1]) / 1024
    return 0.0


PREFAULT = """\
import sys
b = bytearray(int(float(sys.argv[1]) * 2**30))
b[::4096] = b"\\1" * len(b[::4096])  # one byte a page: every page touched
"""


def prefault(gib: float) -> float:
    """Touch ``gib`` GiB of fresh memory in a child process and free it; its seconds.

    This machine is a virtual machine whose balloon reports freed memory back to its host
    (virtio-balloon free page reporting, feature bit 5 in
    ``/sys/bus/virtio/devices/*/features``). Touching such a page again costs the host's
    fault on top of the guest's: 2.5 ms a MiB against 0.5 for a page the host still backs
    (measured 2026-12-05). A fleet that needs more fresh memory than the machine used
    recently pays that inside its rollout; right after this, the memory it takes is
    backed again.
    """
    t = time.monotonic()
    subprocess.run([sys.executable, "-c", PREFAULT, str(gib)], check=True)
    return time.monotonic() - t


def agents_idle(fleet: Sim, window: float = 0.5, limit: float = 120.0) -> float:
    """Seconds until the agents went quiet: every agent warms up (imports its engine)
    once READY, and a rollout measures agents that are running, not starting. Quiet =
    the agents together used less than 0.5 % CPU each over one ``window``."""
    t0 = time.monotonic()
    pids = [h.agent.pid for h in fleet.hosts.values() if h.agent is not None]
    before = sum(map(_cpu, pids))
    while time.monotonic() - t0 < limit:
        time.sleep(window)  # a measuring window, not a wait for an event
        after = sum(map(_cpu, pids))
        if after - before < 0.005 * window * len(pids) + 1.0 / TICK:
            break
        before = after
    return time.monotonic() - t0


def run(net: str, *, prefault_gib: float = 0.0, counters: bool = False) -> dict[str, Any]:
    """Up, rollout, every check, down: the summary (seconds per phase, checks, ok), the
    CPU seconds each part of the fleet used per phase (where the time goes) and the fresh
    anonymous memory each phase took (MiB). ``prefault_gib``: see :func:`prefault`;
    ``counters``: the work each host did in the rollout (:func:`work_by_host`)."""
    t0 = time.monotonic()
    before = cpu_before()
    m0 = anon_mib()
    fleet = Sim.up(net)
    up = time.monotonic() - t0
    settle = agents_idle(fleet)
    results = []
    cpu: dict[str, dict[str, float]] = {}
    memory: dict[str, float] = {}
    extra: dict[str, float] = {}
    work: dict[str, float] = {}
    reading = 0.0  # seconds spent reading the counters: not the fleet's
    try:
        m1 = anon_mib()
        memory["up"] = round(m1 - m0)
        if prefault_gib:
            extra["prefault"] = prefault(prefault_gib)
        if counters:
            t = time.monotonic()
            w0 = work_by_host(fleet)
            reading += time.monotonic() - t
        c0 = cpu_by_part(fleet)
        cpu["up"] = _delta(c0, before)
        rows = fleet.rollout()
        c1 = cpu_by_part(fleet)
        if counters:
            t = time.monotonic()
            work = work_medians(work_by_host(fleet), w0)
            reading += time.monotonic() - t
        cpu["rollout"] = _delta(c1, c0)
        m2 = anon_mib()
        memory["rollout"] = round(m2 - m1)
        converged = sum(r.ok for r in rows)
        if converged == len(rows):
            results = fleet.check()
            cpu["check"] = _delta(cpu_by_part(fleet), c1)
            memory["check"] = round(anon_mib() - m2)
        slowest = sorted(r.seconds for r in rows)
        started = sorted(r.applying for r in rows if r.applying is not None)
        engine = sorted(r.seconds - r.applying for r in rows if r.applying is not None)
    finally:
        fleet.down()
    total = time.monotonic() - t0 - reading
    phases = {
        "up": up,
        "settle": settle,
        **extra,
        **{k: v for k, v in fleet.timings.items() if k not in ("fabric", "hosts")},
    }
    phases["total"] = total
    ok = converged == len(rows) and bool(results) and all(r.ok for r in results)
    return {
        "net": fleet.net.name,
        "hosts": len(fleet.layout.hosts),
        "converged": converged,
        "checks": {
            r.name: {
                "ok": r.ok,
                "rows": len(r.rows),
                "hosts": r.hosts,
                "failed": [f"{x.subject}: {x.detail}" for x in r.failed[:5]],
            }
            for r in results
        },
        "seconds": {k: round(v, 1) for k, v in phases.items()},
        "cpu": cpu,
        "fresh_mib": memory,
        "work_per_host": work,
        "converged_at": {
            "median": slowest[len(slowest) // 2] if slowest else None,
            "p90": slowest[int(len(slowest) * 0.9)] if slowest else None,
            "last": slowest[-1] if slowest else None,
            "applying_median": started[len(started) // 2] if started else None,
            "apply_median": round(engine[len(engine) // 2], 2) if engine else None,
        },
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
    p.add_argument(
        "--prefault",
        type=float,
        default=0.0,
        metavar="GIB",
        help="touch and free this much memory just before the rollout",
    )
    p.add_argument(
        "--counters",
        action="store_true",
        help="count each host's work in the rollout (vswitchd, page faults, wake-ups)",
    )
    args = p.parse_args()
    # SIGTERM (timeout, kill) tears the fleet down like Ctrl-C does, through run()'s finally
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        with sized(args.net, args.hosts) as net:
            summary = run(net, prefault_gib=args.prefault, counters=args.counters)
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
    print("CPU seconds per phase:", json.dumps(summary["cpu"]))
    print("fresh anonymous memory per phase (MiB):", json.dumps(summary["fresh_mib"]))
    print("host converged after (s):", json.dumps(summary["converged_at"]))
    if summary["work_per_host"]:
        print("work per host in the rollout (medians):", json.dumps(summary["work_per_host"]))
    for what, n in summary["failed"]:
        print(f"  {n} host(s) {what}")
    return 0 if summary["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
