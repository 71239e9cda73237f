"""The documents a host is told to run: intake, replay protection, and the merge order.

Pure bookkeeping, no I/O: the daemon feeds it raw MQTT payloads per topic key and asks
for the candidate set to converge. Rules (contract section 3):

- :meth:`Desired.offer` is total: any byte sequence gives a document, a
  :class:`Rejection` (with the field) or None, never an exception;
- a payload rejected last time on the same topic is ignored (retained redelivery on every
  reconnect or resubscribe is not reported twice); accepted payloads are never hidden by
  a digest, only by version and content, so a redelivery of something not yet applied
  still counts; one that we accepted once and that is now older than what we hold is
  ignored silently (a retained message redelivered after a newer one came unretained);
- a document equal to the one in force or pending is ignored silently; an older one (or
  the same version with other content) is rejected as a replay (:class:`StaleDocument`);
- a version that failed to apply is remembered as (version, content digest): the same
  content again (re-indented, re-signed, the next wave of a rollout) is ignored silently,
  and only a *newer* version is tried again (no apply loops, no repeated cuts);
- with trusted keys, unsigned or badly signed documents are rejected; signatures are
  bound to the topic prefix;
- a rejected document changes nothing and blocks nothing: it never enters ``pending``;
- pending is per document: an apply commits or fails exactly the documents it tried, so a
  document that arrived meanwhile stays pending and is applied next (no lost update);
- a document whose ``rollout`` selector does not list this host is not for us yet: the
  host keeps what it runs, silently. ``csboot rollout`` republishes the same version with
  more hosts wave by wave, so "the same document" means the same content, whatever the
  selector and its signature say.
"""

from __future__ import annotations

import collections
import hashlib
import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from bootstrap.agent.topics import DEFAULT_PREFIX
from bootstrap.errors import BootstrapError, InvalidDocument, StaleDocument
from bootstrap.model.document import Document, parse_document
from bootstrap.model.payload import MAX_BYTES
from bootstrap.model.signing import PublicKey, verify

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Rejection:
    """Why a payload on ``key`` was refused (the host keeps what it had)."""

    key: str
    version: int | None
    error: BootstrapError

    @property
    def replay(self) -> bool:
        """An older (or conflicting same-version) document: not an invalid one."""
        return isinstance(self.error, StaleDocument)

    @property
    def field(self) -> str:
        return self.error.field if isinstance(self.error, InvalidDocument) else "version"

    def describe(self) -> str:
        where = f"{self.key} v{self.version}" if self.version is not None else self.key
        return f"{where}: {self.error.message}"


@dataclass(frozen=True, slots=True)
class Failed:
    """A version that failed to apply on a topic, and what it asked for."""

    version: int
    digest: str


def stale_error(doc: Document, held: int, what: str = "in force") -> StaleDocument:
    return StaleDocument(f"version {doc.version} is not newer than version {held} {what} (replay)")


def _content(doc: Document) -> dict[str, Any]:
    """What a document asks for: all but the rollout selector and the signature."""
    data = doc.to_json()
    data.pop("rollout", None)
    data.pop("signature", None)
    return data


def content_digest(doc: Document) -> str:
    canonical = json.dumps(_content(doc), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


class Desired:
    """Documents in force (last converged) and pending (accepted, not yet applied)."""

    def __init__(
        self,
        roles: Sequence[str],
        host: str,
        trusted: Mapping[str, PublicKey],
        *,
        prefix: str = DEFAULT_PREFIX,
        max_bytes: int = MAX_BYTES,
    ) -> None:
        self.host = host
        self.keys = [f"roles/{r}" for r in roles] + [f"hosts/{host}"]
        self.trusted = dict(trusted)
        self.prefix = prefix
        self.max_bytes = max_bytes
        self.in_force: dict[str, Document] = {}
        self.pending: dict[str, Document] = {}
        self.failed: dict[str, Failed] = {}
        self._rejected: dict[str, bytes] = {}
        self._accepted: dict[str, collections.deque[bytes]] = {}

    def check(self, key: str, doc: Document) -> None:
        """Topic and signature of a parsed document; :class:`InvalidDocument` if wrong."""
        if doc.topic_key() != key:
            raise InvalidDocument(
                f"a {doc.kind} document named {doc.name!r} does not belong on {key}",
                field="name",
            )
        verify(doc, self.trusted, prefix=self.prefix)

    def _parse(self, key: str, payload: bytes) -> Document | Rejection:
        version: int | None = None
        try:
            doc = parse_document(payload, max_bytes=self.max_bytes)
            version = doc.version
            self.check(key, doc)
        except InvalidDocument as exc:
            return Rejection(key, version, exc)
        except Exception as exc:  # parse_document is total; this is the last line of defence
            log.exception("unexpected error reading a document on %s", key)
            error = InvalidDocument(f"unreadable: {type(exc).__name__}", field="")
            return Rejection(key, version, error)
        return doc

    def offer(self, key: str, payload: bytes) -> Document | Rejection | None:
        """Take one payload from ``key``; None when it is silently ignored."""
        if key not in self.keys or not payload:
            return None  # not ours, or a cleared retained message: keep what we have
        digest = hashlib.sha256(payload).digest()
        if self._rejected.get(key) == digest:
            return None  # rejected and reported already
        accepted = self._accepted.setdefault(key, collections.deque(maxlen=8))
        result = self._judge(key, payload)
        if isinstance(result, Rejection) and result.replay and digest in accepted:
            return None  # our own earlier document, redelivered: not a replay attack
        if isinstance(result, Rejection):
            self._rejected[key] = digest
        else:
            self._rejected.pop(key, None)
        if isinstance(result, Document):
            self.pending[key] = result
            accepted.append(digest)
        return result

    def _judge(self, key: str, payload: bytes) -> Document | Rejection | None:
        doc = self._parse(key, payload)
        if isinstance(doc, Rejection):
            return doc
        if not doc.applies_to(self.host):
            return None  # a rollout has not reached this host yet: keep what it runs
        failed = self.failed.get(key)
        if failed is not None and doc.version <= failed.version:
            if doc.version == failed.version and content_digest(doc) == failed.digest:
                return None  # the failed version again, whatever its bytes: not retried
            return Rejection(key, doc.version, stale_error(doc, failed.version, "that failed"))
        for held in (self.in_force.get(key), self.pending.get(key)):
            if held is None:
                continue
            if doc.version == held.version and _content(doc) == _content(held):
                return None  # the same version again (a rollout's next wave, a re-signing)
            if doc.version <= held.version:
                return Rejection(key, doc.version, stale_error(doc, held.version))
        return doc

    def roles_missing(self) -> list[str]:
        """Roles this host lists that have no document, in force or pending."""
        have = self.candidate()
        return [k for k in self.keys if k.startswith("roles/") and k not in have]

    def complete(self) -> bool:
        """Every document this host reads (each role's and its own overlay) arrived anew and
        waits to be applied: a burst has nothing left to bring."""
        return all(k in self.pending for k in self.keys)

    def candidate(self) -> dict[str, Document]:
        """What the host would run if the pending documents were applied."""
        return {**self.in_force, **self.pending}

    def ordered(self, docs: Mapping[str, Document] | None = None) -> list[Document]:
        """Roles in the host's role order, then the host overlay (the merge order)."""
        docs = self.in_force if docs is None else docs
        return [docs[k] for k in self.keys if k in docs]

    def commit(self, docs: Mapping[str, Document]) -> None:
        """``docs`` converged: they are in force; what arrived meanwhile stays pending."""
        self.in_force = {k: v for k, v in docs.items() if k in self.keys}
        self.pending = {k: v for k, v in self.pending.items() if docs.get(k) != v}

    def fail(self, docs: Mapping[str, Document]) -> None:
        """Applying ``docs`` failed: the pending ones among them are remembered as failed
        (retrying needs a newer version); documents that arrived meanwhile stay pending."""
        for key, doc in docs.items():
            if self.in_force.get(key) == doc:
                continue
            self.failed[key] = Failed(doc.version, content_digest(doc))
            if self.pending.get(key) == doc:
                del self.pending[key]

    def drop_pending(self) -> None:
        """Forget every pending document (they stay unapplied)."""
        self.pending = {}

    def versions(self, docs: Mapping[str, Document] | None = None) -> dict[str, Any]:
        """``{"roles": {"kvm": 7}, "host": 3}`` as the status document reports it."""
        docs = self.in_force if docs is None else docs
        roles = {d.name: d.version for d in self.ordered(docs) if d.kind == "Role"}
        host = next((d.version for d in docs.values() if d.kind == "Host"), None)
        return {"roles": roles, "host": host}
