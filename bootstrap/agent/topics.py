"""MQTT topics (contract section 2): names, validation, and mapping a topic back to a key.

A topic key (``roles/kvm``, ``hosts/kvm1.lab``) is what :meth:`Document.topic_key` returns,
so replay protection and the last-known-good cache speak the same language.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

DEFAULT_PREFIX = "cloudstack/bootstrap/v1"
HOST_RE = re.compile(r"^[a-z0-9][a-z0-9.-]{0,252}$")
ROLE_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
_WILD = ("+", "#")


def check_host(host: str) -> str:
    if not HOST_RE.match(host):
        raise ValueError(f"{host!r} is not a host name ([a-z0-9][a-z0-9.-]{{0,252}})")
    return host


def check_role(role: str) -> str:
    if not ROLE_RE.match(role):
        raise ValueError(f"{role!r} is not a role name ([a-z0-9][a-z0-9-]{{0,62}})")
    return role


def check_prefix(prefix: str) -> str:
    if not prefix or prefix != prefix.strip("/") or any(w in prefix for w in _WILD):
        raise ValueError(f"{prefix!r}: a prefix has no wildcards and no leading/trailing '/'")
    if "" in prefix.split("/"):
        raise ValueError(f"{prefix!r}: empty topic level")
    return prefix


@dataclass(frozen=True, slots=True)
class Topics:
    """Every topic one host's agent uses."""

    prefix: str
    host: str
    roles: tuple[str, ...] = ()

    def role_desired(self, role: str) -> str:
        return f"{self.prefix}/roles/{role}/desired"

    @property
    def host_desired(self) -> str:
        return f"{self.prefix}/hosts/{self.host}/desired"

    @property
    def status(self) -> str:
        return f"{self.prefix}/hosts/{self.host}/status"

    @property
    def events(self) -> str:
        return f"{self.prefix}/hosts/{self.host}/events"

    @property
    def subscriptions(self) -> list[str]:
        """Role topics in the host's role order, then the host overlay."""
        return [self.role_desired(r) for r in self.roles] + [self.host_desired]

    def key_of(self, topic: str) -> str | None:
        """``P/roles/kvm/desired`` -> ``roles/kvm``; None for a topic that is not ours."""
        head = f"{self.prefix}/"
        if not topic.startswith(head) or not topic.endswith("/desired"):
            return None
        parts = topic[len(head) : -len("/desired")].split("/")
        if len(parts) != 2:
            return None
        kind, name = parts
        if kind == "roles" and name in self.roles:
            return f"roles/{name}"
        if kind == "hosts" and name == self.host:
            return f"hosts/{name}"
        return None
