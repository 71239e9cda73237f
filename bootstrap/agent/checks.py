"""Post-apply checks reported in the status: does the host do what the spec asks?

They inform, they never roll back: libvirtd may take a moment after a restart, and a
host that is not listening yet is better reported than reverted.
"""

from __future__ import annotations

from collections.abc import Sequence

from bootstrap.engine.check import Check
from bootstrap.engine.probe import TcpProbe, wait_for_probe
from bootstrap.model.spec import Spec


async def libvirt_listening(spec: Spec, window: float = 10.0) -> Check:
    """Something accepts TCP on ``libvirt.tcp_port`` on this host (when listen_tcp is on)."""
    if not spec.libvirt.listen_tcp:
        return Check("libvirt-listening", True, "listen_tcp is off: not checked")
    port = spec.libvirt.tcp_port
    ok = await wait_for_probe(TcpProbe("127.0.0.1", port), window)
    return Check("libvirt-listening", ok, f"tcp {port}" + ("" if ok else ": nothing listens"))


async def run_checks(names: Sequence[str], spec: Spec) -> list[Check]:
    checks = []
    for name in names:
        if name == "libvirt-listening":
            checks.append(await libvirt_listening(spec))
    return checks
