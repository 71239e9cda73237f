"""Post-apply checks reported in the status: does the host do what the spec asks?

They inform, they never roll back: libvirtd may take a moment after a restart, and a
host that is not listening yet is better reported than reverted.
"""

from __future__ import annotations

from collections.abc import Sequence

from bootstrap.engine.probe import TcpProbe, wait_for_probe
from bootstrap.engine.transaction import Check
from bootstrap.host.root import HostRoot
from bootstrap.model.spec import Spec


async def libvirt_listening(spec: Spec, window: float = 10.0) -> Check:
    """Something accepts TCP on ``libvirt.tcp_port`` on this host (when listen_tcp is on)."""
    if not spec.libvirt.listen_tcp:
        return Check("libvirt-listening", True, "listen_tcp is off: not checked")
    port = spec.libvirt.tcp_port
    ok = await wait_for_probe(TcpProbe("127.0.0.1", port), window)
    return Check("libvirt-listening", ok, f"tcp {port}" + ("" if ok else ": nothing listens"))


async def cloudstack_agent(host: HostRoot) -> Check:
    """Would CloudStack's own KVM agent start here (``csboot check --cloudstack``)? One
    check: its failures, each naming the agent.properties key and the device."""
    from bootstrap.host.cloudstack import run_cloudstack_checks

    found = await run_cloudstack_checks(host)
    bad = [f"{c.name}: {c.detail}" for c in found if not c.ok]
    if bad:
        return Check("cloudstack-agent", False, "; ".join(bad))
    return Check("cloudstack-agent", True, f"{len(found)} checks pass")


async def run_checks(names: Sequence[str], spec: Spec, host: HostRoot | None = None) -> list[Check]:
    checks = []
    for name in names:
        if name == "libvirt-listening":
            checks.append(await libvirt_listening(spec))
        elif name == "cloudstack-agent":
            checks.append(await cloudstack_agent(host or HostRoot()))
    return checks
