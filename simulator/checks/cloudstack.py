"""CloudStack's agent contract: would its KVM agent start on every host and find its devices?

Runs the real ``csboot check --cloudstack`` inside each host namespace against the host's
file root (agent.properties and libvirtd.conf as the agent wrote them), its links and its
OVSDB. The simulator runs no libvirtd: a stand-in listener holds the port libvirtd.conf
names while the check runs, so what is judged is the configuration, the firewall and the
devices, which is what the engine controls. One row per host and CloudStack check.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from simulator.checks import CheckResult, Row, gather_limited, run_in
from simulator.hosts import SimHost

if TYPE_CHECKING:
    from simulator.fleet import Sim

__all__ = ["check_cloudstack"]

HELPER = Path(__file__).with_name("helper.py")


async def _one(host: SimHost) -> list[Row]:
    spec = host.layout.spec
    listener: subprocess.Popen[bytes] | None = None
    if spec.libvirt.listen_tcp:
        listener = host.ns.popen(
            [sys.executable, str(HELPER), "listen", str(spec.libvirt.tcp_port)],
            stdout=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
        )
        assert listener.stdout is not None
        listener.stdout.readline()  # "ready"
    try:
        csboot = str(Path(sys.executable).with_name("csboot"))
        code, out, err = await run_in(
            host.ns,
            "env",
            *(f"{k}={v}" for k, v in host.env().items() if k.startswith("OVS_")),
            csboot,
            "check",
            "--cloudstack",
            "--json",
            "--root",
            str(host.root),
            timeout=120,
        )
    finally:
        if listener is not None:
            listener.terminate()
            listener.wait()
    try:
        checks = json.loads(out)["checks"]
    except (ValueError, KeyError):
        detail = f"csboot check --cloudstack exited {code}: {(err or out).strip()[-300:]}"
        return [Row(f"{host.name} agent contract", False, detail, (host.name,), "cloudstack")]
    return [
        Row(f"{host.name} {c['name']}", bool(c["ok"]), c["detail"], (host.name,), c["name"])
        for c in checks
    ]


async def check_cloudstack(sim: Sim) -> CheckResult:
    result = CheckResult("cloudstack")
    for rows in await gather_limited([_one(h) for h in sim.hosts.values()], limit=8):
        result.rows += rows
    return result
