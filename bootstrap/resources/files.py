"""Every host-file resource of a spec, in apply order: security, libvirt, agent.properties.

Security first so libvirtd restarts unconfined; agent.properties last because the agent
reads libvirt's state when it starts.
"""

from __future__ import annotations

from typing import Any

from bootstrap.engine.resource import Resource
from bootstrap.host.root import HostRoot
from bootstrap.model.spec import Spec
from bootstrap.resources.handoff import CLOUDSTACK_KEYS, handed_off
from bootstrap.resources.libvirt import libvirt_resources
from bootstrap.resources.properties import AgentProperties
from bootstrap.resources.security import security_resources
from bootstrap.resources.timesync import time_resources

__all__ = ["file_resources"]


def file_resources(spec: Spec, host: HostRoot) -> list[Resource[Any]]:
    """Raises InvalidDocument when ``agent.properties`` names a key the spec derives."""
    released = handed_off(spec, host)
    return [
        *security_resources(spec.security, host),
        *libvirt_resources(spec.libvirt, host, handed_off=released),
        *time_resources(spec, host),
        AgentProperties(spec, host, released=CLOUDSTACK_KEYS if released else frozenset()),
    ]
