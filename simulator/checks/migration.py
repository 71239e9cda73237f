"""Live migration: a real QEMU guest moves from host A to host B over the management network.

The destination listens with ``-incoming tcp:<B mgmt>:<port>`` on a port of the migration
range (49152-49216); the source is told ``migrate`` over QMP and polled with
``query-migrate`` until ``completed``. The same migration to a port outside the range must
fail when the role's firewall policy is ``drop``: the firewall, not luck, decides.
The guests are tiny (no disk, 32 MiB, TCG), so this takes seconds.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from simulator.checks import CheckResult, Row
from simulator.checks.ports import expected_firewall

if TYPE_CHECKING:
    from simulator.fleet import Sim
    from simulator.hosts import SimHost

__all__ = ["check_migration"]

QEMU = "qemu-system-x86_64"


class Qmp:
    """Just enough QMP: greeting, capabilities, commands (events are skipped)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def connect(
        cls, path: Path, proc: subprocess.Popen[bytes], timeout: float = 180.0
    ) -> Qmp:
        """QEMU's QMP socket once it listens. A TCG QEMU inside the emulated VM on a busy
        machine takes long to start: the deadline only ends a hung one; an exited QEMU is
        reported at once, with its log."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                reader, writer = await asyncio.open_unix_connection(str(path))
                break
            except OSError as exc:
                if proc.poll() is not None:
                    log = path.with_suffix(".log")
                    tail = log.read_text(errors="replace")[-300:] if log.exists() else ""
                    raise RuntimeError(f"QEMU exited {proc.returncode}: {tail.strip()}") from exc
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.05)
        qmp = cls(reader, writer)
        await qmp._read()  # greeting
        await qmp.command("qmp_capabilities")
        return qmp

    async def _read(self) -> dict[str, Any]:
        while True:
            line = await asyncio.wait_for(self.reader.readline(), 30)
            if not line:
                raise ConnectionError("QMP closed")
            msg: dict[str, Any] = json.loads(line)
            if "event" not in msg:
                return msg

    async def command(self, name: str, **arguments: Any) -> Any:
        msg: dict[str, Any] = {"execute": name}
        if arguments:
            msg["arguments"] = arguments
        self.writer.write(json.dumps(msg).encode() + b"\n")
        await self.writer.drain()
        reply = await self._read()
        if "error" in reply:
            raise RuntimeError(f"{name}: {reply['error'].get('desc')}")
        return reply.get("return")

    def close(self) -> None:
        self.writer.close()


def _qemu(host: SimHost, tag: str, *extra: str) -> tuple[subprocess.Popen[bytes], Path]:
    run = host.root / "run/qemu"
    run.mkdir(parents=True, exist_ok=True)
    sock = run / f"{tag}.qmp"
    sock.unlink(missing_ok=True)
    argv = [
        QEMU,
        "-machine",
        "pc",
        "-nodefaults",
        "-display",
        "none",
        "-m",
        "32",
        "-accel",
        "tcg",
        "-qmp",
        f"unix:{sock},server=on,wait=off",
        *extra,
    ]
    log = (run / f"{tag}.log").open("wb")
    proc = host.ns.popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
    log.close()
    return proc, sock


async def migrate(src: SimHost, dst: SimHost, port: int, *, timeout: float) -> tuple[bool, str]:
    """One migration attempt; (completed, detail)."""
    address = str(dst.layout.mgmt.ip)
    dproc, dsock = _qemu(dst, f"dst{port}", "-incoming", f"tcp:{address}:{port}")
    sproc, ssock = _qemu(src, f"src{port}")
    qs = qd = None
    try:
        qd = await Qmp.connect(dsock, dproc)
        qs = await Qmp.connect(ssock, sproc)
        await qs.command("migrate", uri=f"tcp:{address}:{port}")
        deadline = time.monotonic() + timeout
        status = "?"
        while time.monotonic() < deadline:
            info = await qs.command("query-migrate")
            status = info.get("status", "?")
            if status == "completed":
                dst_status = (await qd.command("query-status")).get("status")
                return True, f"completed in {info.get('total-time', '?')} ms (dest {dst_status})"
            if status in ("failed", "cancelled"):
                return False, f"{status}: {info.get('error-desc', '')}".strip()
            await asyncio.sleep(0.1)
        await qs.command("migrate_cancel")
        return False, f"still {status} after {timeout:g}s"
    except (OSError, RuntimeError, ConnectionError, TimeoutError) as exc:
        return False, f"error: {exc}"
    finally:
        for q in (qs, qd):
            if q is not None:
                q.close()
        for p in (sproc, dproc):
            p.kill()
            p.wait()


async def check_migration(sim: Sim) -> CheckResult:
    result = CheckResult("migration")
    spec = sim.net.expect.migration
    names = list(sim.hosts)
    if spec is None or len(names) < 2:
        result.skipped = "no migration expected" if spec is None else "needs two hosts"
        return result
    if shutil.which(QEMU) is None:
        result.skipped = f"{QEMU} is not installed"
        return result
    src = sim.hosts[spec.source or names[0]]
    dst = sim.hosts[spec.target or next(n for n in names if n != src.name)]
    both = (src.name, dst.name)
    ok, detail = await migrate(src, dst, spec.port, timeout=30)
    result.rows.append(
        Row(f"{src.name} -> {dst.name} tcp/{spec.port} (in range)", ok, detail, both, "in-range")
    )
    fw = expected_firewall(sim, dst.name)
    if fw is not None and fw.policy == "drop":
        ok2, detail2 = await migrate(src, dst, spec.blocked_port, timeout=5)
        result.rows.append(
            Row(
                f"{src.name} -> {dst.name} tcp/{spec.blocked_port} (outside, policy drop)",
                not ok2,
                ("blocked: " if not ok2 else "NOT blocked: ") + detail2,
                both,
                "outside",
            )
        )
    return result
