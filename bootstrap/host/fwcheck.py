"""``csboot check``: do the host's firewall manager's *running* rules open our ports?

What we wrote (ufw's rules, firewalld's permanent service) is not what filters packets:
ufw may be enabled in its file but not loaded, firewalld may have been reloaded or changed
at runtime. So the check reads each manager's running state (``ufw status``; firewalld's
runtime zone and service) and reports every port of ours that it does not open, naming
the port and the manager.

Why not a TCP connect from the host to itself: a connection to one's own address goes
through the loopback interface, and every manager accepts loopback before any port rule
(ufw's ``before.rules``: ``-A ufw-before-input -i lo -j ACCEPT``; firewalld: ``iifname "lo"
accept``), so it would report a port the manager drops as open (tests/netns/test_fwmgr.py
shows it). The wire check comes from another host: the simulator's ``ports`` check, and
the netns tests' peer.

``gather`` is the shell; ``evaluate`` is pure.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from bootstrap.engine.check import Check
from bootstrap.errors import BootstrapError
from bootstrap.host.root import HostRoot
from bootstrap.model.ports import Span

__all__ = ["ManagerFacts", "evaluate", "gather", "run_firewall_checks", "ufw_running"]

NAME = "firewall-ports"


@dataclass(frozen=True, slots=True)
class ManagerFacts:
    """``configured``: our ports in the manager's saved configuration; ``running``: our
    ports its running firewall opens. ``error``: why the manager could not be read."""

    managers: tuple[str, ...] = ()
    active: bool = False
    configured: tuple[Span, ...] = ()
    running: tuple[Span, ...] = ()
    where: str = ""
    error: str | None = None


def _text(spans: tuple[Span, ...] | list[Span]) -> str:
    return ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in spans)


def _covered(span: Span, spans: tuple[Span, ...]) -> bool:
    return any(a <= span[0] and span[1] <= b for a, b in spans)


def evaluate(facts: ManagerFacts) -> list[Check]:
    if facts.error is not None:
        return [Check(NAME, False, facts.error)]
    if not facts.managers:
        return [Check(NAME, True, "no firewall manager active: our nftables table decides")]
    if len(facts.managers) > 1:
        return [
            Check(
                NAME,
                False,
                "both firewalld and ufw are active: each rejects what the other accepts",
            )
        ]
    manager = facts.managers[0]
    if not facts.configured:
        return [
            Check(
                NAME,
                False,
                f"{manager} is active and opens none of our ports "
                "(csboot apply with firewall.backend auto opens them)",
            )
        ]
    if not facts.active:
        return [
            Check(
                NAME,
                False,
                f"tcp {_text(facts.configured)}: allowed in {manager}'s "
                f"configuration, but {manager}'s firewall is not loaded",
            )
        ]
    closed = [s for s in facts.configured if not _covered(s, facts.running)]
    if closed:
        return [
            Check(
                NAME,
                False,
                f"tcp {_text(closed)}: allowed in {manager}'s "
                f"configuration but closed in its running firewall"
                f"{' (' + facts.where + ')' if facts.where else ''}",
            )
        ]
    return [
        Check(
            NAME,
            True,
            f"{manager} opens tcp {_text(facts.configured)}"
            f"{' in ' + facts.where if facts.where else ''}",
        )
    ]


# ---------------------------------------------------------------- shell

_UFW_PORT = re.compile(r"^(\d+)(?::(\d+))?/tcp$")


def _span(text: str, sep: str) -> Span | None:
    first, _, last = text.removesuffix("/tcp").partition(sep)
    if not first.isdigit() or (last and not last.isdigit()):
        return None
    return (int(first), int(last or first))


def ufw_running(iptables_save: str) -> tuple[Span, ...]:
    """TCP ports ufw's *loaded* user chain accepts (``iptables-save -t filter``): what
    ``ufw status`` cannot tell, since it prints ufw's files, not the kernel's rules."""
    spans: list[Span] = []
    for line in iptables_save.splitlines():
        words = line.split()
        if words[:2] != ["-A", "ufw-user-input"] or words[-2:] != ["-j", "ACCEPT"]:
            continue
        if "tcp" not in words:
            continue
        for flag in ("--dport", "--dports"):
            if flag in words and (span := _span(words[words.index(flag) + 1], ":")):
                spans.append(span)
    return tuple(sorted(set(spans)))


def _ufw_facts() -> ManagerFacts:
    import shutil
    import subprocess

    from bootstrap.resources.ufw import parse_added, run_ufw

    configured: list[Span] = []
    for rule in parse_added(run_ufw("show", "added")).ours:
        words = rule.split()
        if words[0] == "allow" and (m := _UFW_PORT.match(words[1])):
            configured.append((int(m[1]), int(m[2] or m[1])))
        elif "port" in words and (span := _span(words[words.index("port") + 1], ":")):
            configured.append(span)
    status = run_ufw("status").splitlines()
    active = bool(status) and status[0].strip() == "Status: active"
    save = shutil.which("iptables-save")
    if save is None:
        return ManagerFacts(
            error="ufw is active but iptables-save is missing: cannot read its running rules"
        )
    loaded = subprocess.run(
        [save, "-t", "filter"], capture_output=True, text=True, timeout=60, check=False
    ).stdout
    return ManagerFacts(
        ("ufw",), active, tuple(sorted(set(configured))), ufw_running(loaded), "ufw-user-input"
    )


def zone_opens(listing: str, service_ports: dict[str, tuple[str, ...]]) -> tuple[Span, ...]:
    """TCP ports a zone's runtime listing opens to everyone: its ports and its services'."""
    spans: list[Span] = []
    for line in listing.splitlines():
        key, _, value = line.strip().partition(":")
        words = value.split()
        if key == "ports":
            spans += [s for w in words if w.endswith("/tcp") and (s := _span(w, "-"))]
        elif key == "services":
            for name in words:
                ports = service_ports.get(name, ())
                spans += [s for w in ports if w.endswith("/tcp") and (s := _span(w, "-"))]
    return tuple(sorted(set(spans)))


def _firewalld_facts(host: HostRoot) -> ManagerFacts:
    from bootstrap.resources.firewalld import SERVICE, firewall_cmd, parse_service, zone_for
    from bootstrap.resources.properties import parse

    try:
        props = parse(host.path("/etc/cloudstack/agent/agent.properties").read_text()).mapping()
    except OSError:
        props = {}
    zone = zone_for(props.get("private.network.device"))
    rc, saved = firewall_cmd("--permanent", f"--info-service={SERVICE}", ok=(0, 101))
    configured = [s for p in parse_service(saved) if (s := _span(p, "-"))] if rc == 0 else []
    listing = firewall_cmd(f"--zone={zone}", "--list-all")[1]
    services: dict[str, tuple[str, ...]] = {}
    for line in listing.splitlines():
        key, _, value = line.strip().partition(":")
        if key == "services":
            for name in value.split():
                rc, info = firewall_cmd(f"--info-service={name}", ok=(0, 101))
                services[name] = parse_service(info) if rc == 0 else ()
    running = zone_opens(listing, services)
    # with sources our service sits in rich rules: open to those sources only
    if f'service name="{SERVICE}"' in listing:
        found, live = firewall_cmd(f"--info-service={SERVICE}", ok=(0, 101))
        sourced = [s for p in parse_service(live) if (s := _span(p, "-"))] if found == 0 else []
        running = tuple(sorted({*running, *sourced}))
    return ManagerFacts(("firewalld",), True, tuple(sorted(configured)), running, f"zone {zone}")


def gather(host: HostRoot) -> ManagerFacts:
    from bootstrap.resources.fwmanager import detect

    try:
        detected = detect(host)
        if len(detected.active) != 1:
            return ManagerFacts(detected.active)
        if detected.ufw:
            return _ufw_facts()
        return _firewalld_facts(host)
    except BootstrapError as exc:
        return ManagerFacts(error=exc.message)


def run_firewall_checks(host: HostRoot) -> list[Check]:
    return evaluate(gather(host))
