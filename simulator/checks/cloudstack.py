"""CloudStack's agent contract: would its KVM agent start on every host and find its devices?

Runs the checks of the real ``csboot check --cloudstack`` (``run_cloudstack_checks``)
inside each host namespace against the host's file root (agent.properties and
libvirtd.conf as the agent wrote them), its links and its OVSDB: two processes
(:mod:`simulator.checks.cloudstack_batch`) that enter the hosts' namespaces in turn, not
one ``csboot`` per host. The simulator runs no libvirtd: a stand-in listener holds the
port libvirtd.conf names while the check runs, so what is judged is the configuration, the
firewall and the devices, which is what the engine controls. One row per host and check.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from simulator.checks import CheckResult, Row
from simulator.hosts import SimHost

if TYPE_CHECKING:
    from simulator.fleet import Sim

__all__ = ["check_cloudstack"]

TIMEOUT = 600.0  # seconds for a batch; only a hung check hits it
PYTHONPATH = os.pathsep.join(
    p for p in (str(Path(__file__).resolve().parents[2]), os.environ.get("PYTHONPATH")) if p
)


BATCHES = 2  # processes (the machine has two cores)


def _rows(host: SimHost, answer: dict[str, Any] | None, code: int, err: str) -> list[Row]:
    if answer is None or "checks" not in answer:
        why = (answer or {}).get("error") or f"exited {code}: {err.strip()[-300:]}"
        return [Row(f"{host.name} agent contract", False, str(why), (host.name,), "cloudstack")]
    return [
        Row(f"{host.name} {c['name']}", bool(c["ok"]), c["detail"], (host.name,), c["name"])
        for c in answer["checks"]
    ]


async def _batch(hosts: list[SimHost]) -> list[list[Row]]:
    args: list[str] = []
    for host in hosts:
        spec = host.layout.spec
        port = spec.libvirt.tcp_port if spec.libvirt.listen_tcp else 0
        args += [host.ns.name, str(host.root), str(port)]
    argv = [sys.executable, "-m", "simulator.checks.cloudstack_batch", *args]
    proc = await asyncio.create_subprocess_exec(
        *argv,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": PYTHONPATH},
    )
    out, err = await asyncio.wait_for(proc.communicate(), TIMEOUT)
    answers: dict[str, dict[str, Any]] = {}
    for line in out.decode(errors="replace").splitlines():
        with contextlib.suppress(ValueError):
            data = json.loads(line)
            answers[data["ns"]] = data
    code = proc.returncode or 0
    text = err.decode(errors="replace")
    return [_rows(h, answers.get(h.ns.name), code, text) for h in hosts]


async def check_cloudstack(sim: Sim) -> CheckResult:
    result = CheckResult("cloudstack")
    hosts = list(sim.hosts.values())
    batches = [hosts[i::BATCHES] for i in range(BATCHES) if hosts[i::BATCHES]]
    done = await asyncio.gather(*map(_batch, batches))
    by_host = {
        h.name: rows
        for batch, rs in zip(batches, done, strict=True)
        for h, rows in zip(batch, rs, strict=True)
    }
    for host in hosts:
        result.rows += by_host[host.name]
    return result
