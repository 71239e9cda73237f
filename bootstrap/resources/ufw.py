"""Our ports opened through ufw: rules tagged ``comment 'cloudstack-bootstrap'``.

ufw keeps its rules itself (``/etc/ufw/user*.rules``, loaded at boot) and applies an
``allow`` at once on an active firewall, so one ``ufw`` command is both runtime and
persistent. We list rules with ``ufw show added`` (the commands that would re-create them),
and own exactly the ones carrying our comment: a revert deletes those and nothing else.

An operator's rule with the same match but no comment already opens the port; adding ours
would only put our comment on *their* rule (ufw answers "Rule updated"), and a revert
would then delete it. So such ports are left to the operator's rule.

The forward path: with ``host.security_groups`` bridged frames go through iptables' FORWARD
chain (``bridge-nf-call-iptables = 1``), where ufw's ``DEFAULT_FORWARD_POLICY="DROP"``
(Debian and Ubuntu's default) drops guests' traffic. We add ``ufw route allow in on BR out
on BR`` for each of our Linux bridges (frames bridged within the bridge) rather than
changing the default forward policy, which is the operator's and would also open routing
between every interface. Without security groups bridged frames never reach iptables and
no route rule is written.
"""

from __future__ import annotations

import ipaddress
import shlex
from dataclasses import dataclass
from typing import Any, ClassVar

from bootstrap.engine.resource import Change, Resource
from bootstrap.model.ports import Span
from bootstrap.resources.fwmanager import manager_tool

__all__ = ["TAG", "UfwResource", "UfwState", "desired_rules", "parse_added"]

TAG = "cloudstack-bootstrap"
NAME = "ufw/cloudstack-bootstrap"
_SUFFIX = f" comment '{TAG}'"


@dataclass(frozen=True, slots=True)
class UfwState:
    """``ours``: our rules as ``ufw show added`` prints them (without the leading ``ufw``),
    sorted; ``others``: every other rule without its comment (to find equivalents)."""

    ours: tuple[str, ...] = ()
    others: tuple[str, ...] = ()


# ---------------------------------------------------------------- pure


def _port(span: Span) -> str:
    return str(span[0]) if span[0] == span[1] else f"{span[0]}:{span[1]}"


def _source(cidr: str) -> str:
    net = ipaddress.ip_network(cidr)
    return str(net.network_address) if net.prefixlen == net.max_prefixlen else str(net)


def _bare(rule: str) -> str:
    """A rule without its comment: what ufw compares to find an existing rule."""
    head, sep, _ = rule.partition(" comment '")
    return head if sep else rule


def desired_rules(
    ports: tuple[Span, ...], sources: tuple[str, ...], bridges: tuple[str, ...]
) -> tuple[str, ...]:
    """Our rules, written exactly as ``ufw show added`` lists them back."""
    rules: list[str] = []
    for span in ports:
        if not sources:
            rules.append(f"allow {_port(span)}/tcp{_SUFFIX}")
        for cidr in sources:
            rules.append(f"allow from {_source(cidr)} to any port {_port(span)} proto tcp{_SUFFIX}")
    rules += [f"route allow in on {br} out on {br}{_SUFFIX}" for br in bridges]
    return tuple(sorted(rules))


def parse_added(text: str) -> UfwState:
    """``ufw show added`` -> our rules and the others (comments dropped)."""
    ours: list[str] = []
    others: list[str] = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line.startswith("ufw "):
            continue
        rule = line.removeprefix("ufw ")
        if rule.endswith(_SUFFIX):
            ours.append(rule)
        else:
            others.append(_bare(rule))
    return UfwState(tuple(sorted(set(ours))), tuple(sorted(set(others))))


def target_state(current: UfwState, wanted: tuple[str, ...]) -> UfwState:
    """Ours = wanted minus what an operator's rule already does; others as they are."""
    taken = set(current.others)
    return UfwState(tuple(r for r in wanted if _bare(r) not in taken), current.others)


def rule_changes(current: UfwState, target: UfwState) -> tuple[list[str], list[str]]:
    """(rules to delete, rules to add): only ours."""
    delete = [r for r in current.ours if r not in target.ours]
    add = [r for r in target.ours if r not in current.ours]
    return delete, add


def delete_args(rule: str) -> list[str]:
    """``ufw delete RULE``; a route rule is deleted as ``ufw route delete RULE``."""
    words = shlex.split(rule)
    if words[0] == "route":
        return ["route", "delete", *words[1:]]
    return ["delete", *words]


# ---------------------------------------------------------------- the host


def run_ufw(*args: str) -> str:
    return manager_tool("ufw", *args, resource=NAME).stdout


class UfwResource(Resource[UfwState]):
    """Our rules in ufw; an empty ``wanted`` removes every rule of ours."""

    network = True
    state_type: ClassVar[Any] = UfwState

    def __init__(self, wanted: tuple[str, ...]) -> None:
        self._wanted = wanted

    @property
    def name(self) -> str:
        return NAME

    async def observe(self) -> UfwState:
        return parse_added(run_ufw("show", "added"))

    def target(self, current: UfwState) -> UfwState:
        return target_state(current, self._wanted)

    def diff(self, current: UfwState, target: UfwState) -> list[Change]:
        delete, add = rule_changes(current, target)
        return [Change(NAME, "delete", "ufw " + shlex.join(delete_args(r))) for r in delete] + [
            Change(NAME, "create", f"ufw {r}") for r in add
        ]

    async def apply(self, current: UfwState, target: UfwState) -> None:
        now = await self.observe()  # what is there now, not what a plan saw earlier
        delete, add = rule_changes(now, target)
        for rule in delete:
            run_ufw(*delete_args(rule))
        for rule in add:
            run_ufw(*shlex.split(rule))
