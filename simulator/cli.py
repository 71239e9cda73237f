"""``csboot-sim up|check|down|demo NET [--json]``: exit 0 every check passed, 1 a check
(or the rollout) failed, 2 the fleet could not be built. ``csboot-sim reboot HOST`` reboots
a host of a running fleet without our agent (0 booted, 1 ``ifup -a`` failed, 2 no such
host). ``csboot-sim csboot rollout|status ARGS`` runs the fleet tool as the run's operator
inside its broker namespace (its exit code).

``demo`` is up + rollout + check + report + down, and always downs. Nets with native-backend
hosts need 8021q; on a kernel without it, ``demo`` runs itself once inside the full-kernel VM
(simulator.vm) and says so; OVS-backend nets (netdev datapath) run natively anywhere.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

from bootstrap.errors import BootstrapError
from simulator.fleet import Sim, SimError, down_run, list_runs
from simulator.nets import load_net, needs_8021q
from simulator.report import emit, to_json

__all__ = ["kernel_has_8021q", "main"]

EXIT_OK, EXIT_FAILED, EXIT_BUILD = 0, 1, 2


def kernel_has_8021q() -> bool:
    """Loaded, built in, or loadable for the running kernel; nothing is loaded to find out."""
    if Path("/proc/net/vlan").exists() or Path("/sys/module/8021q").exists():
        return True
    mods = Path("/lib/modules") / platform.release()
    for index in ("modules.builtin", "modules.dep"):
        try:
            if "/8021q.ko" in (mods / index).read_text():
                return True
        except OSError:
            continue
    return False


def _say(msg: str, as_json: bool) -> None:
    print(f"csboot-sim: {msg}", file=sys.stderr if as_json else sys.stdout, flush=True)


def cmd_up(args: argparse.Namespace) -> int:
    try:
        sim = Sim.up(args.net)
    except (SimError, BootstrapError) as exc:
        emit(to_json(net=args.net, run="-", phase="up", error=str(exc)), args.json)
        return EXIT_BUILD
    rows = sim.rollout()
    emit(
        to_json(net=sim.net.name, run=sim.run_id, phase="up", rollout=rows, timings=sim.timings),
        args.json,
    )
    _say(f"run {sim.run_id} is up; `csboot-sim check`, then `csboot-sim down`", args.json)
    return EXIT_OK if all(r.ok for r in rows) else EXIT_FAILED


def cmd_check(args: argparse.Namespace) -> int:
    try:
        sim = Sim.attach(args.run)
    except (SimError, BootstrapError) as exc:
        emit(
            to_json(net=args.net or "-", run=args.run or "-", phase="check", error=str(exc)),
            args.json,
        )
        return EXIT_BUILD
    results = sim.check(args.only)
    emit(
        to_json(
            net=sim.net.name, run=sim.run_id, phase="check", checks=results, timings=sim.timings
        ),
        args.json,
    )
    return EXIT_OK if all(c.ok for c in results) else EXIT_FAILED


def cmd_down(args: argparse.Namespace) -> int:
    runs = list_runs() if args.all else [args.run]
    for run in runs:
        removed = down_run(run)
        _say(f"removed {len(removed)} namespace(s): {' '.join(removed) or '-'}", args.json)
    return EXIT_OK


def cmd_reboot(args: argparse.Namespace) -> int:
    """A host of a running fleet rebooted without our agent (``simulator/reboot.py``)."""
    from simulator.reboot import RebootError, reboot

    try:
        sim = Sim.attach(args.run)
        host = sim.hosts.get(args.host)
        if host is None:
            raise SimError(f"run {sim.run_id} has no host {args.host!r}")
    except (SimError, BootstrapError) as exc:
        emit(to_json(net="-", run=args.run or "-", phase="reboot", error=str(exc)), args.json)
        return EXIT_BUILD
    try:
        result = reboot(sim, host, fresh_ovsdb=args.fresh_ovsdb)
    except (RebootError, OSError) as exc:
        emit(to_json(net=sim.net.name, run=sim.run_id, phase="reboot", error=str(exc)), args.json)
        return EXIT_FAILED
    db = "an empty OVSDB" if result.fresh_ovsdb else "its OVSDB"
    _say(
        f"{host.name} rebooted without our agent ({len(result.removed_links)} link(s) "
        f"forgotten, OVS on {db}, ifup -a); `csboot-sim check` to judge it",
        args.json,
    )
    return EXIT_OK


def cmd_csboot(args: argparse.Namespace) -> int:
    """``csboot COMMAND ...`` in a running fleet's broker namespace as its operator."""
    try:
        sim = Sim.attach(args.run)
    except (SimError, BootstrapError) as exc:
        print(f"csboot-sim: {exc}", file=sys.stderr)
        return EXIT_BUILD
    proc = sim.csboot(args.tool_command, *args.tool_args, stdout=None, stderr=None)
    try:
        return proc.wait()
    except KeyboardInterrupt:
        proc.terminate()
        return proc.wait()


def run_demo(net_path: str, as_json: bool) -> int:
    """up + rollout + check + report, then down whatever happened."""
    t0 = time.monotonic()
    try:
        sim = Sim.up(net_path)
    except (SimError, BootstrapError) as exc:
        emit(to_json(net=net_path, run="-", phase="demo", error=str(exc)), as_json)
        return EXIT_BUILD
    rows, results = [], []
    try:
        rows = sim.rollout()
        if all(r.ok for r in rows):
            results = sim.check()
    finally:
        sim.down()
    sim.timings["total"] = time.monotonic() - t0
    emit(
        to_json(
            net=sim.net.name,
            run=sim.run_id,
            phase="demo",
            rollout=rows,
            checks=results,
            timings=sim.timings,
            mode="vm" if os.environ.get("CSBOOT_FULLKERNEL") else "native",
        ),
        as_json,
    )
    ok = all(r.ok for r in rows) and bool(results) and all(c.ok for c in results)
    return EXIT_OK if ok else EXIT_FAILED


def cmd_demo(args: argparse.Namespace) -> int:
    try:
        net = load_net(args.net)
    except BootstrapError as exc:
        emit(to_json(net=args.net, run="-", phase="demo", error=str(exc)), args.json)
        return EXIT_BUILD
    in_vm = os.environ.get("CSBOOT_FULLKERNEL") == "1"
    if needs_8021q(net) and not in_vm and not args.native and not kernel_has_8021q():
        _say(
            f"{net.name} has native-backend hosts, which need 8021q; this kernel "
            f"({platform.release()}) has none, so the whole demo runs inside one "
            "full-kernel VM (virtme-ng)",
            args.json,
        )
        from simulator.vm import run_in_vm, unavailable

        why = unavailable()
        if why is not None:
            emit(
                to_json(
                    net=net.name,
                    run="-",
                    phase="demo",
                    mode="vm",
                    error=f"needs 8021q and no full-kernel VM can run here: {why}",
                ),
                args.json,
            )
            return EXIT_BUILD
        argv = [sys.executable, "-m", "simulator.cli", "demo", str(Path(args.net).resolve())]
        if args.json:
            argv.append("--json")
        t0 = time.monotonic()
        code: int = run_in_vm(argv, timeout=args.vm_timeout)
        _say(f"full-kernel VM finished in {time.monotonic() - t0:.0f}s (exit {code})", args.json)
        return code if code in (EXIT_OK, EXIT_FAILED, EXIT_BUILD) else EXIT_BUILD
    where = "inside the full-kernel VM" if in_vm else "natively"
    _say(f"{net.name}: running {where}", args.json)
    return run_demo(args.net, args.json)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="csboot-sim", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="build the fleet and roll the nets file's documents out")
    up.add_argument("net")
    up.set_defaults(handler=cmd_up)
    ck = sub.add_parser("check", help="run the checks against a running fleet")
    ck.add_argument("net", nargs="?")
    ck.add_argument("--run", help="run id (default: the latest)")
    ck.add_argument("--only", action="append", choices=["reach", "isolation", "ports", "migration"])
    ck.set_defaults(handler=cmd_check)
    dn = sub.add_parser("down", help="remove a run: namespaces, daemons, files")
    dn.add_argument("net", nargs="?")
    dn.add_argument("--run", help="run id (default: the latest)")
    dn.add_argument("--all", action="store_true", help="every recorded run")
    dn.set_defaults(handler=cmd_down)
    de = sub.add_parser("demo", help="up + rollout + check + report + down")
    de.add_argument("net")
    de.add_argument("--native", action="store_true", help="never use the full-kernel VM")
    de.add_argument("--vm-timeout", type=float, default=900.0)
    de.set_defaults(handler=cmd_demo)
    rb = sub.add_parser(
        "reboot", help="reboot a host without our agent: the distro's ifup -a over its files"
    )
    rb.add_argument("host")
    rb.add_argument("--run", help="run id (default: the latest)")
    rb.add_argument("--fresh-ovsdb", action="store_true", help="boot OVS on an empty database")
    rb.add_argument("--json", action="store_true", help="machine-readable report")
    rb.set_defaults(handler=cmd_reboot)
    cs = sub.add_parser(
        "csboot", help="run `csboot rollout|status ...` in a fleet's broker namespace as operator"
    )
    cs.add_argument("--run", help="run id (default: the latest)")
    cs.add_argument("tool_command", metavar="COMMAND", choices=["rollout", "status"])
    cs.add_argument("tool_args", metavar="ARGS", nargs=argparse.REMAINDER)
    cs.set_defaults(handler=cmd_csboot)
    for sp in (up, ck, dn, de):
        sp.add_argument("--json", action="store_true", help="machine-readable report")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if os.geteuid() != 0:
        print("csboot-sim: needs root (it creates network namespaces)", file=sys.stderr)
        return EXIT_BUILD
    code: int = args.handler(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
