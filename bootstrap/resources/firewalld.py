"""Our ports opened through firewalld: a service of our own, added to one zone.

Ownership: firewalld's ports carry no comment, so we never add bare ports to a zone. We
define a permanent service ``cloudstack-bootstrap`` holding exactly our ports and add
*that* to the zone (or, with ``sources``, one rich rule per source naming the service).
Everything we touch is found by that name; the operator's services, ports and rich rules
are never read for modification, and a revert removes only ours.

Runtime and permanent: changes go to the permanent configuration, then ``firewall-cmd
--reload`` makes it the runtime one (a new service exists at runtime only after a
reload). A reload drops runtime-only changes someone made without ``--permanent``; that is
firewalld's documented meaning of reload, and the price of one consistent state.

The zone: the one the management bridge is bound to (``--get-zone-of-interface``), else
the default zone, which is where firewalld sends an interface bound to no zone.

The forward path (``host.security_groups`` only): with ``bridge-nf-call-iptables = 1``
every frame bridged between two guests passes firewalld's forward chain, which drops it
unless both sides are interfaces *bound* to a zone that allows intra-zone forwarding
(``<forward/>``, on in firewalld's stock zones since 1.0); an interface that merely falls
to the default zone does not count (tests/netns/test_fwmgr.py shows both). So our Linux
bridges are bound to the zone (``--add-interface``), unless the operator bound one to
another zone, which we leave. A zone without ``forward`` is the operator's choice: not
changed, and guests' bridged traffic stays dropped there.

Through ``firewall-cmd`` (firewalld's own D-Bus client): it honours
``DBUS_SYSTEM_BUS_ADDRESS`` like any D-Bus client, so a private bus works as the system one.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Any, ClassVar

from bootstrap.engine.resource import Change, Resource
from bootstrap.model.ports import Span
from bootstrap.resources.fwmanager import manager_tool

__all__ = ["SERVICE", "FirewalldResource", "FirewalldState", "desired_entries", "parse_zone"]

SERVICE = "cloudstack-bootstrap"
NAME = f"firewalld/{SERVICE}"
#: the zone holds our service itself (no sources)
IN_ZONE = "service"
_OURS = f'service name="{SERVICE}"'


@dataclass(frozen=True, slots=True)
class FirewalldState:
    """``ports``: our service's ports (``None``: no such service); ``permanent`` and
    ``runtime``: our entries in the zone (``service`` and our rich rules), sorted."""

    zone: str
    ports: tuple[str, ...] | None = None
    permanent: tuple[str, ...] = ()
    runtime: tuple[str, ...] = ()
    elsewhere: tuple[str, ...] = ()  # our bridges the operator bound to another zone


# ---------------------------------------------------------------- pure


def port_strings(spans: tuple[Span, ...]) -> tuple[str, ...]:
    return tuple(sorted(f"{a}/tcp" if a == b else f"{a}-{b}/tcp" for a, b in spans))


def rich_rule(cidr: str) -> str:
    """A rich rule as firewalld lists it back."""
    net = ipaddress.ip_network(cidr)
    family = "ipv4" if net.version == 4 else "ipv6"
    addr = str(net.network_address) if net.prefixlen == net.max_prefixlen else str(net)
    return f'rule family="{family}" source address="{addr}" {_OURS} accept'


def desired_entries(sources: tuple[str, ...]) -> tuple[str, ...]:
    if not sources:
        return (IN_ZONE,)
    return tuple(sorted(rich_rule(s) for s in sources))


def parse_zone(text: str, bridges: tuple[str, ...] = ()) -> tuple[str, ...]:
    """Our entries in ``firewall-cmd --zone=Z --list-all`` output."""
    entries: list[str] = []
    rich = False
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("interfaces:"):
            bound = stripped.removeprefix("interfaces:").split()
            entries += [f"interface {b}" for b in bridges if b in bound]
        if stripped.startswith("services:") and SERVICE in stripped[9:].split():
            entries.append(IN_ZONE)
        if stripped.startswith("rich rules:"):
            rich = True
            continue
        if rich and stripped.startswith("rule ") and _OURS in stripped:
            entries.append(stripped)
    return tuple(sorted(set(entries)))


def parse_service(text: str) -> tuple[str, ...]:
    """The ports of ``firewall-cmd --info-service`` output."""
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("ports:"):
            return tuple(sorted(stripped.removeprefix("ports:").split()))
    return ()


def describe(current: FirewalldState, target: FirewalldState) -> list[Change]:
    out: list[Change] = []
    if current.ports != target.ports:
        if target.ports is None:
            out.append(Change(NAME, "delete", "our service definition"))
        elif current.ports is None:
            out.append(Change(NAME, "create", f"service ports {' '.join(target.ports)}"))
        else:
            added = [p for p in target.ports if p not in current.ports]
            gone = [p for p in current.ports if p not in target.ports]
            words = [f"+ {p}" for p in added] + [f"- {p}" for p in gone]
            out.append(Change(NAME, "modify", "service ports " + ", ".join(words)))
    for kind in ("permanent", "runtime"):
        now, want = getattr(current, kind), getattr(target, kind)
        for entry in want:
            if entry not in now:
                out.append(Change(NAME, "create", f"zone {target.zone} ({kind}): {entry}"))
        for entry in now:
            if entry not in want:
                out.append(Change(NAME, "delete", f"zone {current.zone} ({kind}): {entry}"))
    return out


# ---------------------------------------------------------------- the host


def firewall_cmd(*args: str, ok: tuple[int, ...] = (0,)) -> tuple[int, str]:
    result = manager_tool("firewall-cmd", *args, resource=NAME, ok=ok)
    return result.returncode, result.stdout


def zone_for(interface: str | None) -> str:
    if interface is not None:
        rc, out = firewall_cmd(f"--get-zone-of-interface={interface}", ok=(0, 2))
        if rc == 0 and out.strip():
            return out.strip()
    return firewall_cmd("--get-default-zone")[1].strip()


class FirewalldResource(Resource[FirewalldState]):
    """Our service in the management interface's zone; ``ports=None`` removes it all."""

    network = True
    state_type: ClassVar[Any] = FirewalldState

    def __init__(
        self,
        ports: tuple[Span, ...] | None,
        sources: tuple[str, ...] = (),
        *,
        interface: str | None = None,
        bridges: tuple[str, ...] = (),
    ) -> None:
        self._ports = port_strings(ports) if ports is not None else None
        self._entries = desired_entries(sources) if ports is not None else ()
        self._interface = interface
        self._bridges = bridges if ports is not None else ()

    @property
    def name(self) -> str:
        return NAME

    async def observe(self) -> FirewalldState:
        zone = zone_for(self._interface)
        rc, info = firewall_cmd("--permanent", f"--info-service={SERVICE}", ok=(0, 101))
        ports = parse_service(info) if rc == 0 else None
        bridges = self._bridges
        permanent = parse_zone(
            firewall_cmd("--permanent", f"--zone={zone}", "--list-all")[1], bridges
        )
        runtime = parse_zone(firewall_cmd(f"--zone={zone}", "--list-all")[1], bridges)
        elsewhere = []
        for bridge in bridges:
            if f"interface {bridge}" in permanent:
                continue
            rc, out = firewall_cmd("--permanent", f"--get-zone-of-interface={bridge}", ok=(0, 2))
            if rc == 0 and out.strip() and out.strip() != zone:
                elsewhere.append(bridge)
        return FirewalldState(zone, ports, permanent, runtime, tuple(elsewhere))

    def target(self, current: FirewalldState) -> FirewalldState:
        bound = [f"interface {b}" for b in self._bridges if b not in current.elsewhere]
        entries = tuple(sorted([*self._entries, *bound]))
        return FirewalldState(current.zone, self._ports, entries, entries, current.elsewhere)

    def diff(self, current: FirewalldState, target: FirewalldState) -> list[Change]:
        return [] if current == target else describe(current, target)

    async def apply(self, current: FirewalldState, target: FirewalldState) -> None:
        # ``current`` is fresh: the plan's observation inside one transaction, or the
        # re-observation of a revert (each firewall-cmd call costs a Python start-up)
        now = current
        if now == target:
            return
        zone = f"--zone={target.zone}"
        # 1. our entries out of the zone, 2. the service as wanted, 3. entries in, 4. reload
        gone = [e for e in now.permanent if e not in target.permanent]
        if IN_ZONE in gone:
            firewall_cmd("--permanent", zone, f"--remove-service={SERVICE}")
        for entry in gone:
            if entry.startswith("interface "):
                firewall_cmd("--permanent", zone, f"--remove-interface={entry.split()[1]}")
        if rules := [e for e in gone if e.startswith("rule ")]:
            firewall_cmd("--permanent", zone, *[f"--remove-rich-rule={r}" for r in rules])
        if target.ports is None:
            if now.ports is not None:
                firewall_cmd("--permanent", f"--delete-service={SERVICE}")
        else:
            if now.ports is None:
                firewall_cmd("--permanent", f"--new-service={SERVICE}")
            have = now.ports or ()
            edits = [f"--remove-port={p}" for p in have if p not in target.ports]
            edits += [f"--add-port={p}" for p in target.ports if p not in have]
            if edits:
                firewall_cmd("--permanent", f"--service={SERVICE}", *edits)
        new = [e for e in target.permanent if e not in now.permanent]
        if IN_ZONE in new:
            firewall_cmd("--permanent", zone, f"--add-service={SERVICE}")
        for entry in new:
            if entry.startswith("interface "):
                firewall_cmd("--permanent", zone, f"--add-interface={entry.split()[1]}")
        if rules := [e for e in new if e.startswith("rule ")]:
            firewall_cmd("--permanent", zone, *[f"--add-rich-rule={r}" for r in rules])
        firewall_cmd("--reload")
