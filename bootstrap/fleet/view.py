"""What the broker says about the fleet: retained statuses, role documents, rollout states.

Fed message by message (pure bookkeeping). Nothing read here is trusted: a status is
parsed by the shared, bounded model (:func:`bootstrap.wire.status.parse_status`) and one
that is not valid is kept as an *invalid* reading with its reason; role documents and
rollout states (which only operators may publish) are size- and depth-checked too. Every
reading gets a sequence number so the controller can tell a status published after it
handed a host a version from an old one.

What hosts say about themselves never decides who is in a rollout nor which version the
controller signs: :meth:`FleetView.published_hosts` and :meth:`FleetView.published_version`
read only what the controller side published (the role's retained document and rollout
state).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass, field

from pydantic import ValidationError

from bootstrap.agent.topics import HOST_RE
from bootstrap.errors import InvalidDocument, InvalidStatus
from bootstrap.fleet.state import RolloutState
from bootstrap.model.document import Document, parse_document
from bootstrap.wire.jsonguard import load_bounded
from bootstrap.wire.status import StatusDocument, parse_status
from bootstrap.wire.text import printable

log = logging.getLogger(__name__)

MAX_DOCUMENT_BYTES = 1024 * 1024  # a role document or a rollout state
MAX_DOCUMENT_DEPTH = 64


@dataclass(frozen=True, slots=True)
class Reading:
    """One status message: the parsed document, or why it is not one."""

    status: StatusDocument | None
    invalid: str | None
    seq: int
    received: float  # time.monotonic()

    @property
    def state(self) -> str:
        return self.status.state if self.status is not None else "invalid"

    def is_rejection_of_other(self, role: str, version: int) -> bool:
        """A ``rejected`` status about anything but ``roles/{role}`` at ``version``: a
        replay (``stale``), another document, another version. It says nothing about
        whether the host applied what it was handed."""
        st = self.status
        if st is None or st.state != "rejected":
            return False
        err = st.error
        if err is None or err.code == "stale":
            return True
        if err.document is not None and err.document != f"roles/{role}":
            return True
        return err.version is not None and err.version != version


@dataclass(slots=True)
class HostStatus:
    """The latest reading of a host, and the latest that was not a ``rejected`` one."""

    latest: Reading
    settled: Reading | None = None

    @property
    def status(self) -> StatusDocument | None:
        return self.latest.status

    @property
    def state(self) -> str:
        return self.latest.state

    @property
    def seq(self) -> int:
        return self.latest.seq

    def for_judging(self, role: str, version: int) -> Reading | None:
        """What a rollout judges the host by: rejections of other documents or versions
        (replays) are skipped, so they neither fail the host nor hide its result."""
        if self.latest.is_rejection_of_other(role, version):
            return self.settled
        return self.latest


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
        status, invalid = None, None
        if not HOST_RE.match(host):
            invalid = "the topic does not name a valid host"
        else:
            try:
                status = parse_status(payload, host=host)
            except InvalidStatus as exc:
                invalid = exc.message
        reading = Reading(status, invalid, self.seq, time.monotonic())
        if invalid is not None:
            log.debug("invalid status of %s: %s", printable(host), printable(invalid))
        before = self.statuses.get(host)
        settled = before.latest if before and before.latest.state != "rejected" else None
        if settled is None and before is not None:
            settled = before.settled
        self.statuses[host] = HostStatus(reading, settled)

    def _role_doc(self, role: str, payload: bytes) -> None:
        if not payload:
            self.role_docs.pop(role, None)
            return
        try:
            load_bounded(payload, max_bytes=MAX_DOCUMENT_BYTES, max_depth=MAX_DOCUMENT_DEPTH)
            self.role_docs[role] = parse_document(payload)
        except (InvalidDocument, ValueError, RecursionError) as exc:
            why = exc.message if isinstance(exc, InvalidDocument) else str(exc)
            log.warning("ignoring the document on roles/%s: %s", printable(role), printable(why))

    def _rollout(self, role: str, payload: bytes) -> None:
        if not payload:
            self.rollouts.pop(role, None)
            return
        try:
            load_bounded(payload, max_bytes=MAX_DOCUMENT_BYTES, max_depth=MAX_DOCUMENT_DEPTH)
            self.rollouts[role] = RolloutState.model_validate_json(payload)
        except (ValidationError, ValueError) as exc:
            log.warning("ignoring the rollout state of %s: %s", printable(role), printable(exc))

    def published_hosts(self, role: str) -> list[str]:
        """Hosts the controller side named for ``role``: the retained rollout state's waves
        and the retained document's selector. Never what hosts say about themselves."""
        hosts: set[str] = set()
        state = self.rollouts.get(role)
        if state is not None and state.role == role:
            hosts.update(state.hosts)
        doc = self.role_docs.get(role)
        if doc is not None and doc.rollout is not None:
            hosts.update(doc.rollout.hosts)
        return sorted(h for h in hosts if HOST_RE.match(h))

    def published_version(self, role: str) -> int:
        """The highest version of ``role`` the controller side published: the retained
        document's, and the retained rollout state's (its version and abort version)."""
        versions = [0]
        doc = self.role_docs.get(role)
        if doc is not None:
            versions.append(doc.version)
        state = self.rollouts.get(role)
        if state is not None and state.role == role:
            versions += [state.version, state.abort_version or 0]
        return max(versions)

    async def wait(self, timeout: float) -> None:
        """Until something new arrives, or ``timeout``."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.changed.wait(), timeout)
        self.changed.clear()
