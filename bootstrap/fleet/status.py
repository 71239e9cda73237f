"""``csboot status``: the fleet at a glance from retained statuses and rollout states.

Rows are computed purely (:func:`rows`, :func:`rollout_lines`); the command renders them
once as a table or JSON, or keeps a rich ``Live`` view up to date with ``--watch``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from datetime import datetime
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from bootstrap.fleet.connect import FleetConfig, client_id, connect
from bootstrap.fleet.state import parse_iso, utcnow
from bootstrap.fleet.view import FleetView, HostStatus
from bootstrap.wire.text import printable

STATE_STYLE = {
    "converged": "green",
    "applying": "yellow",
    "starting": "yellow",
    "failed": "red",
    "rolled_back": "red",
    "rejected": "magenta",
    "offline": "dim",
    "invalid": "bold red",
}


def _age(at: object, now: datetime) -> float | None:
    if not isinstance(at, str):
        return None
    try:
        return max(0.0, (now - parse_iso(at)).total_seconds())
    except ValueError:
        return None


def _row(host: str, seen: HostStatus, now: datetime) -> dict[str, Any]:
    st = seen.status
    if st is None:
        return {
            "host": printable(host, 253),
            "state": "invalid",
            "roles": {},
            "host_version": None,
            "at": None,
            "age": None,
            "checks_failed": [],
            "error": printable(seen.latest.invalid),
        }
    return {
        "host": printable(host, 253),
        "state": st.state,
        "roles": dict(st.applied.roles),
        "host_version": st.applied.host,
        "at": printable(st.at, 64),
        "age": _age(st.at, now),
        "checks_failed": [printable(c.name, 64) for c in st.checks if not c.ok],
        "error": printable(st.error.message) if st.error else None,
    }


def rows(view: FleetView, role: str | None, now: datetime) -> list[dict[str, Any]]:
    """One row per host, sorted by name, every string safe for a terminal; with ``role``
    only hosts reporting it, and every host whose status is invalid (it cannot say)."""
    out = []
    for host in sorted(view.statuses):
        seen = view.statuses[host]
        if role is not None and seen.status is not None and role not in seen.status.applied.roles:
            continue
        out.append(_row(host, seen, now))
    return out


def rollout_lines(view: FleetView, role: str | None) -> list[dict[str, Any]]:
    out = []
    for name, state in sorted(view.rollouts.items()):
        if role is not None and name != role:
            continue
        out.append(
            {
                "role": printable(name, 64),
                "id": printable(state.id, 64),
                "phase": state.phase,
                "version": state.version,
                "wave": min(state.wave + 1, len(state.waves)),
                "waves": len(state.waves),
                "done": len(state.done),
                "failed": sorted(printable(h, 253) for h in state.failed),
                "hosts": len(state.hosts),
                "controller": printable(state.controller),
                "heartbeat": printable(state.heartbeat, 64),
            }
        )
    return out


def _fmt_age(age: float | None) -> str:
    if age is None:
        return "?"
    if age < 120:
        return f"{age:.0f}s"
    return f"{age / 60:.0f}m" if age < 7200 else f"{age / 3600:.0f}h"


def render(view: FleetView, role: str | None, now: datetime) -> Group:
    """Cells are :class:`Text` (never markup): nothing a host wrote is interpreted."""
    table = Table(title=Text(f"fleet ({printable(view.prefix)})"), expand=False)
    for col in ("host", "state", "roles", "host v", "checks", "last change", "age"):
        table.add_column(col)
    for row in rows(view, role, now):
        roles = ", ".join(f"{r} v{v}" for r, v in row["roles"].items()) or "-"
        checks = "ok" if not row["checks_failed"] else "FAIL " + ",".join(row["checks_failed"])
        state = Text(str(row["state"]), style=STATE_STYLE.get(str(row["state"]), ""))
        if row["error"]:
            state.append(f" ({row['error'][:60]})", style="dim")
        cells = [row["host"], roles, str(row["host_version"] or "-"), checks, row["at"] or "?"]
        table.add_row(
            Text(cells[0]),
            state,
            *(Text(c) for c in cells[1:]),
            Text(_fmt_age(row["age"])),
        )
    parts: list[Table | Text] = [table]
    for r in rollout_lines(view, role):
        line = (
            f"rollout {r['id']} [{r['phase']}] v{r['version']}: wave {r['wave']}/"
            f"{r['waves']}, {r['done']}/{r['hosts']} converged"
        )
        if r["failed"]:
            line += f", failed: {', '.join(r['failed'])}"
        parts.append(Text(line, style="bold"))
    return Group(*parts)


async def _collect(config: FleetConfig, role: str | None, watch: bool, as_json: bool) -> int:
    view = FleetView(config.prefix)
    console = Console()
    async with connect(config, client_id("status")) as client:
        for topic in (
            view.topic("hosts", "+", "status"),
            view.topic("roles", "+", "desired"),
            view.topic("rollouts", "+"),
            view.topic("rollouts", "+", "sync", "+"),
        ):
            await client.subscribe(topic, qos=1)
        marker = client_id("status").rsplit("-", 1)[-1] + "s"
        await client.publish(view.topic("rollouts", "_", "sync", marker), b"", qos=1)

        async def reader() -> None:
            async for message in client.messages:
                payload = message.payload if isinstance(message.payload, bytes) else b""
                view.feed(str(message.topic), payload)

        task = asyncio.create_task(reader())
        try:
            deadline = asyncio.get_running_loop().time() + 3
            while marker not in view.synced and asyncio.get_running_loop().time() < deadline:
                await view.wait(0.2)
            if not watch:
                now = utcnow()
                if as_json:
                    print(
                        json.dumps(
                            {"hosts": rows(view, role, now), "rollouts": rollout_lines(view, role)},
                            indent=2,
                        )
                    )
                else:
                    console.print(render(view, role, now))
                return 0
            with Live(render(view, role, utcnow()), console=console, auto_refresh=False) as live:
                while True:
                    await view.wait(1.0)
                    live.update(render(view, role, utcnow()), refresh=True)
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


def show_status(config: FleetConfig, role: str | None, *, watch: bool, as_json: bool) -> int:
    try:
        return asyncio.run(_collect(config, role, watch, as_json))
    except KeyboardInterrupt:
        return 0
