"""Every host-file resource of a spec, in apply order: security, libvirt, agent.properties.

Security first so libvirtd restarts unconfined; agent.properties last because the agent
reads libvirt's state when it starts.
"""

from __future__ import annotations

from typing import Any

from bootstrap.engine.resource import Resource
from bootstrap.host.root import HostRoot
from bootstrap.model.spec import Spec
from bootstrap.resources.libvirt import libvirt_resources
from bootstrap.resources.properties import AgentProperties
from bootstrap.resources.security import security_resources

__all__ = ["file_resources"]


def file_resources(spec: Spec, host: HostRoot) -> list[Resource[Any]]:
    """Raises InvalidDocument when ``agent.properties`` names a key the spec derives."""
    return [
        *security_resources(spec.security, host),
        *libvirt_resources(spec.libvirt, host),
        AgentProperties(spec, host),
    ]
