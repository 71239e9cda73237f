"""One module per managed thing; ``resources_for`` lists them in apply order for a spec.

Order: network first (links, then the management address), then the firewall, then files
(security, libvirt, agent.properties). The transaction reverts in the reverse order.
"""

from __future__ import annotations

from typing import Any

from bootstrap.engine.resource import Resource
from bootstrap.host.root import HostRoot
from bootstrap.model.spec import Spec


def resources_for(spec: Spec, host: HostRoot) -> list[Resource[Any]]:
    """Every resource the spec manages; absent spec sections manage nothing."""
    out: list[Resource[Any]] = []
    if spec.network is not None:
        if spec.network.backend == "openvswitch":
            from bootstrap.resources.openvswitch import openvswitch_resources

            out += openvswitch_resources(spec.network, host)
        else:
            from bootstrap.resources.native import native_resources

            out += native_resources(spec.network, host)
    if spec.firewall is not None:
        from bootstrap.resources.firewall import FirewallResource

        out.append(FirewallResource(spec.firewall))
    from bootstrap.resources.files import file_resources

    out += file_resources(spec, host)
    return out
