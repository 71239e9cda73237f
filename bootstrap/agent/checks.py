"""Post-apply checks reported in the status: does the host do what the spec asks?

They inform, they never roll back: libvirtd may take a moment after a restart, and a
host that is not listening yet is better reported than reverted.
"""

from __future__ import annotations

from collections.abc import Sequence

from bootstrap.engine.check import Check
from bootstrap.engine.probe import TcpProbe, wait_for_probe
from bootstrap.host.listeners import time_synchronised, wait_for_tls
from bootstrap.host.root import HostRoot
from bootstrap.model.spec import Spec


async def libvirt_listening(spec: Spec, window: float = 10.0) -> Check:
    """libvirtd answers in the spec's mode: a TLS handshake on ``tls_port`` (mode tls), a
    TCP connection on ``tcp_port`` (mode tcp); not checked when neither listens."""
    port = spec.libvirt.port
    if port is None:
        return Check("libvirt-listening", True, "listen_tcp is off: not checked")
    if spec.libvirt.mode == "tls":
        ok, why = await wait_for_tls("127.0.0.1", port, window)
        return Check("libvirt-listening", ok, f"tls {port}" + ("" if ok else f": {why}"))
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
        elif name == "time-synchronised" and spec.time is not None:
            checks.append(await time_synchronised())
    return checks
