"""The documents a host is told to run: intake, replay protection, and the merge order.

Pure bookkeeping, no I/O: the daemon feeds it raw MQTT payloads per topic key and asks
for the candidate set to converge. Rules (contract section 3):

- a payload seen last time on the same topic is ignored (retained redelivery on every
  reconnect or resubscribe);
- a document equal to the one in force is ignored silently; an older one (or the same
  version with other content) is rejected as a replay;
- with trusted keys, unsigned or badly signed documents are rejected;
- a rejected document changes nothing and blocks nothing: it never enters ``pending``;
- a document whose ``rollout`` selector does not list this host is not for us yet: the
  host keeps what it runs, silently. ``csboot rollout`` republishes the same version with
  more hosts wave by wave, so "the same document" means the same content, whatever the
  selector and its signature say.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from bootstrap.errors import BootstrapError, InvalidDocument, StaleDocument
from bootstrap.model.document import Document, parse_document
from bootstrap.model.signing import verify

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Rejection:
    """Why a payload on ``key`` was refused (the host keeps what it had)."""

    key: str
    version: int | None
    error: BootstrapError

    def describe(self) -> str:
        where = f"{self.key} v{self.version}" if self.version is not None else self.key
        return f"{where}: {self.error.message}"


def stale_error(doc: Document, in_force: int) -> StaleDocument:
    return StaleDocument(
        f"version {doc.version} is not newer than version {in_force} in force (replay)"
    )


def _content(doc: Document) -> dict[str, Any]:
    """What a document asks for: all but the rollout selector and the signature."""
    data = doc.to_json()
    data.pop("rollout", None)
    data.pop("signature", None)
    return data


class Desired:
    """Documents in force (last converged) and pending (accepted, not yet applied)."""

    def __init__(self, roles: Sequence[str], host: str, trusted: Mapping[str, Ed25519PublicKey]):
        self.host = host
        self.keys = [f"roles/{r}" for r in roles] + [f"hosts/{host}"]
        self.trusted = dict(trusted)
        self.in_force: dict[str, Document] = {}
        self.pending: dict[str, Document] = {}
        self._seen: dict[str, bytes] = {}

    def offer(self, key: str, payload: bytes) -> Document | Rejection | None:
        """Take one payload from ``key``; None when it is silently ignored."""
        if key not in self.keys or not payload:
            return None  # not ours, or a cleared retained message: keep what we have
        digest = hashlib.sha256(payload).digest()
        if self._seen.get(key) == digest:
            return None
        self._seen[key] = digest
        version: int | None = None
        try:
            doc = parse_document(payload)
            version = doc.version
            if doc.topic_key() != key:
                raise InvalidDocument(
                    f"a {doc.kind} document named {doc.name!r} does not belong on {key}",
                    field="name",
                )
            verify(doc, self.trusted)
        except InvalidDocument as exc:
            return Rejection(key, version, exc)
        if not doc.applies_to(self.host):
            return None  # a rollout has not reached this host yet: keep what it runs
        for held in (self.in_force.get(key), self.pending.get(key)):
            if held is None:
                continue
            if doc.version == held.version and _content(doc) == _content(held):
                return None  # the same version again (a rollout's next wave, a re-signing)
            if doc.version <= held.version:
                return Rejection(key, doc.version, stale_error(doc, held.version))
        self.pending[key] = doc
        return doc

    def roles_missing(self) -> list[str]:
        """Roles this host lists that have no document, in force or pending."""
        have = self.candidate()
        return [k for k in self.keys if k.startswith("roles/") and k not in have]

    def candidate(self) -> dict[str, Document]:
        """What the host would run if the pending documents were applied."""
        return {**self.in_force, **self.pending}

    def ordered(self, docs: Mapping[str, Document] | None = None) -> list[Document]:
        """Roles in the host's role order, then the host overlay (the merge order)."""
        docs = self.in_force if docs is None else docs
        return [docs[k] for k in self.keys if k in docs]

    def commit(self, docs: Mapping[str, Document]) -> None:
        self.in_force = {k: v for k, v in docs.items() if k in self.keys}
        self.pending = {}

    def drop_pending(self) -> None:
        """After a failed apply: retrying needs a newer version (no apply loops)."""
        self.pending = {}

    def versions(self, docs: Mapping[str, Document] | None = None) -> dict[str, Any]:
        """``{"roles": {"kvm": 7}, "host": 3}`` as the status document reports it."""
        docs = self.in_force if docs is None else docs
        roles = {d.name: d.version for d in self.ordered(docs) if d.kind == "Role"}
        host = next((d.version for d in docs.values() if d.kind == "Host"), None)
        return {"roles": roles, "host": host}
