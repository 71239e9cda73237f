"""What the broker says about the fleet: retained statuses, role documents, rollout states.

Fed message by message (pure bookkeeping); every status gets a sequence number so the
controller can tell a status published after it handed a host a version from an old one.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from bootstrap.errors import InvalidDocument
from bootstrap.fleet.state import RolloutState
from bootstrap.model.document import Document, parse_document

log = logging.getLogger(__name__)


@dataclass(slots=True)
class HostStatus:
    doc: dict[str, Any]
    seq: int
    received: float  # time.monotonic()

    @property
    def state(self) -> str:
        return str(self.doc.get("state", "?"))

    def role_version(self, role: str) -> int | None:
        applied = self.doc.get("applied") or {}
        roles = applied.get("roles") if isinstance(applied, Mapping) else None
        value = roles.get(role) if isinstance(roles, Mapping) else None
        return value if isinstance(value, int) else None

    def roles(self) -> dict[str, int]:
        applied = self.doc.get("applied") or {}
        roles = applied.get("roles") if isinstance(applied, Mapping) else None
        return dict(roles) if isinstance(roles, Mapping) else {}


@dataclass
class FleetView:
    prefix: str
    statuses: dict[str, HostStatus] = field(default_factory=dict)
    role_docs: dict[str, Document] = field(default_factory=dict)
    rollouts: dict[str, RolloutState] = field(default_factory=dict)
    seq: int = 0
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    synced: set[str] = field(default_factory=set)

    def topic(self, *parts: str) -> str:
        return "/".join((self.prefix, *parts))

    def feed(self, topic: str, payload: bytes) -> None:
        head = self.prefix + "/"
        if not topic.startswith(head):
            return
        parts = topic[len(head) :].split("/")
        self.seq += 1
        if len(parts) == 3 and parts[0] == "hosts" and parts[2] == "status":
            self._status(parts[1], payload)
        elif len(parts) == 3 and parts[0] == "roles" and parts[2] == "desired":
            self._role_doc(parts[1], payload)
        elif len(parts) == 2 and parts[0] == "rollouts":
            self._rollout(parts[1], payload)
        elif len(parts) == 4 and parts[0] == "rollouts" and parts[2] == "sync":
            self.synced.add(parts[3])
        self.changed.set()

    def _status(self, host: str, payload: bytes) -> None:
        if not payload:
            self.statuses.pop(host, None)
            return
        try:
            doc = json.loads(payload)
        except ValueError:
            log.warning("ignoring a status of %s that is not JSON", host)
            return
        if isinstance(doc, dict):
            self.statuses[host] = HostStatus(doc, self.seq, time.monotonic())

    def _role_doc(self, role: str, payload: bytes) -> None:
        if not payload:
            self.role_docs.pop(role, None)
            return
        try:
            self.role_docs[role] = parse_document(payload)
        except InvalidDocument as exc:
            log.warning("ignoring the invalid document on roles/%s: %s", role, exc.message)

    def _rollout(self, role: str, payload: bytes) -> None:
        if not payload:
            self.rollouts.pop(role, None)
            return
        try:
            self.rollouts[role] = RolloutState.model_validate_json(payload)
        except ValidationError as exc:
            log.warning("ignoring an unreadable rollout state for %s: %s", role, exc)

    def role_hosts(self, role: str) -> list[str]:
        """Hosts whose last status says they run ``role``."""
        return sorted(h for h, s in self.statuses.items() if role in s.roles())

    def in_force_version(self, role: str) -> int:
        doc = self.role_docs.get(role)
        versions = [doc.version] if doc else []
        versions += [v for s in self.statuses.values() if (v := s.role_version(role))]
        return max(versions, default=0)

    async def wait(self, timeout: float) -> None:
        """Until something new arrives, or ``timeout``."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.changed.wait(), timeout)
        self.changed.clear()
