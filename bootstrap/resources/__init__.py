"""One module per managed thing; ``resources_for`` lists them in apply order for a spec.

Order: packages first (CloudStack's repository, then the packages; never reverted), then the
network (links, then the management address, then the distro's own network configuration
that brings them back at boot: ``persist``), the firewall (our nftables table and the file
and unit that load it at boot, ``fwboot``, or our rules in firewalld / ufw: see
``fwmanager``), the kernel settings (``sysctl``), files (security,
libvirt, time, agent.properties) and the units the packages ship. The transaction reverts
in reverse order.
"""

from __future__ import annotations

from typing import Any

from bootstrap.engine.resource import Resource
from bootstrap.host.root import HostRoot
from bootstrap.model.spec import Spec

MODULES = (
    "bootstrap.resources.packages",
    "bootstrap.resources.native",
    "bootstrap.resources.openvswitch",
    "bootstrap.resources.persist",
    "bootstrap.resources.fwmanager",
    "bootstrap.resources.firewall",
    "bootstrap.resources.firewalld",
    "bootstrap.resources.fwboot",
    "bootstrap.resources.ufw",
    "bootstrap.resources.sysctl",
    "bootstrap.resources.files",
    "bootstrap.resources.address",
)
"""Every module :func:`resources_for` and the resources it makes import on the way (the
agent imports them once READY, so that its first apply does not)."""


def resources_for(
    spec: Spec, host: HostRoot, *, installs: bool = True, recovering: bool = False
) -> list[Resource[Any]]:
    """Every resource the spec manages; absent spec sections manage nothing.

    The packages (and their repository) come first; ``installs=False`` leaves them out, for
    planning the rest once they are installed (see ``converge``). ``recovering``: every
    firewall backend's resource, undetected (a crash recovery reverts whichever the journal
    names, even if a firewall manager started or stopped since).
    """
    from bootstrap.resources.packages import enable_resources, install_resources

    out: list[Resource[Any]] = install_resources(spec, host) if installs else []
    if spec.network is not None:
        if spec.network.backend == "openvswitch":
            from bootstrap.resources.openvswitch import openvswitch_resources

            out += openvswitch_resources(spec.network, host)
        else:
            from bootstrap.resources.native import native_resources

            out += native_resources(spec.network, host)
        from bootstrap.resources.persist import persist_resources

        out += persist_resources(spec.network, host)
    from bootstrap.resources.fwmanager import manager_resources

    # without a firewall section: only our boot file and unit, removed if ours were there
    out += manager_resources(spec, host, recovering=recovering)
    if spec.host is not None:
        from bootstrap.resources.sysctl import SysctlResource

        out.append(SysctlResource(spec.host, host))
    from bootstrap.resources.files import file_resources

    out += file_resources(spec, host)
    out += enable_resources(spec, host)
    return out
