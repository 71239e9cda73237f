"""The hand-off: once CloudStack has added the host, what its setup manages is no longer ours.

Adding a KVM host runs ``cloudstack-setup-agent`` on it. Its ``cloudAgentConfig.configAgent``
(python/lib/cloudutils/serviceConfig.py) writes ``host``, ``zone``, ``pod``, ``cluster``,
``hypervisor.type``, ``port``, the private/public/guest device keys, ``guid``,
``local.storage.uuid`` and ``resource`` into agent.properties; ``keystore-setup``
(scripts/util/keystore-setup) adds ``keystore.passphrase``; ``configureLibvirtConfig`` and
``libvirtConfigRedhat/Ubuntu`` write libvirtd.conf's listen keys, qemu.conf, the daemon's
``-l`` and mask the libvirtd sockets. From then on we neither report those as drift nor
write them back.

The host counts as handed off when the spec says so (``agent.handed_off: true``) or when
agent.properties carries a ``guid`` (the shipped file has none; setup writes it).
"""

from __future__ import annotations

from bootstrap.host.root import HostRoot
from bootstrap.model.spec import Spec
from bootstrap.resources.properties import AGENT_PROPERTIES, parse

CLOUDSTACK_KEYS = frozenset(
    {
        "host",
        "port",
        "zone",
        "pod",
        "cluster",
        "guid",
        "local.storage.uuid",
        "resource",
        "hypervisor.type",
        "private.network.device",
        "public.network.device",
        "guest.network.device",
        "keystore.passphrase",
    }
)
"""agent.properties keys CloudStack's setup writes when it adds the host."""

CLOUDSTACK_FILES = (
    "/etc/libvirt/libvirtd.conf: listen_tls, listen_tcp, tcp_port, tls_port, auth_tcp, "
    "auth_tls (and its certificate paths)",
    "/etc/libvirt/qemu.conf: vnc_listen (and security_driver, user, group)",
    "/etc/sysconfig/libvirtd, /etc/default/libvirtd, /etc/default/libvirt-bin: the listen flag",
    "/etc/systemd/system/libvirtd*.socket: the masks",
    "/etc/cloudstack/agent/cloud.*: the keystore and certificates",
)


def detected(host: HostRoot) -> bool:
    """agent.properties names a ``guid``: CloudStack's setup has run on this host."""
    try:
        text = host.path(AGENT_PROPERTIES).read_bytes().decode("latin-1")
    except FileNotFoundError:
        return False
    return bool(parse(text).mapping().get("guid", "").strip())


def handed_off(spec: Spec, host: HostRoot) -> bool:
    return spec.agent.handed_off or detected(host)


def ownership(spec: Spec, host: HostRoot) -> list[str]:
    """In words, for ``csboot plan``: what CloudStack manages now and what stays ours."""
    if not handed_off(spec, host):
        return []
    why = "agent.handed_off" if spec.agent.handed_off else "agent.properties has a guid"
    lines = [f"handed off to CloudStack ({why}); CloudStack's setup now manages:"]
    lines.append("  agent.properties: " + ", ".join(sorted(CLOUDSTACK_KEYS)))
    lines += [f"  {item}" for item in CLOUDSTACK_FILES]
    from bootstrap.resources import resources_for

    lines.append("still ours:")
    for resource in resources_for(spec, host):
        owned = getattr(resource, "owned", None)
        lines.append(f"  {resource.name}" + (f": {owned()}" if callable(owned) else ""))
    return lines
