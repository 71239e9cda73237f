"""Last known good: the documents in force after the last converged apply.

Kept under the host's state dir so a reboot without a reachable broker still re-applies
what the host last ran. Written atomically; a damaged cache is ignored, never fatal.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping

from bootstrap.agent.desired import Failed
from bootstrap.errors import InvalidDocument
from bootstrap.files import atomic_write, read_bytes
from bootstrap.host.root import HostRoot
from bootstrap.model.document import Document, parse_document

log = logging.getLogger(__name__)


class LastKnownGood:
    def __init__(self, host: HostRoot) -> None:
        self.path = host.state_dir / "agent" / "last-known-good.json"
        self.failed_path = host.state_dir / "agent" / "failed.json"

    def save_failed(self, failed: Mapping[str, Failed]) -> None:
        """Versions that failed, so a restart does not try them again either."""
        data = {key: {"version": f.version, "digest": f.digest} for key, f in failed.items()}
        atomic_write(self.failed_path, json.dumps(data, indent=2).encode() + b"\n", mode=0o600)

    def load_failed(self) -> dict[str, Failed]:
        raw = read_bytes(self.failed_path)
        if raw is None:
            return {}
        try:
            data = json.loads(raw)
            return {str(k): Failed(int(v["version"]), str(v["digest"])) for k, v in data.items()}
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            log.warning("ignoring damaged failed-versions file %s: %s", self.failed_path, exc)
            return {}

    def save(self, docs: Mapping[str, Document]) -> None:
        data = {"documents": {key: doc.to_json() for key, doc in sorted(docs.items())}}
        atomic_write(self.path, json.dumps(data, indent=2).encode() + b"\n", mode=0o600)

    def load(self) -> dict[str, Document]:
        raw = read_bytes(self.path)
        if raw is None:
            return {}
        try:
            stored = json.loads(raw)["documents"]
            docs = {str(key): parse_document(value) for key, value in stored.items()}
        except (ValueError, KeyError, TypeError, AttributeError, InvalidDocument) as exc:
            log.warning("ignoring damaged last-known-good cache %s: %s", self.path, exc)
            return {}
        return {key: doc for key, doc in docs.items() if doc.topic_key() == key}
