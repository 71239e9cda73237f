"""The crash journal: snapshots written (and fsynced) before the first change.

If the process dies mid-apply, the journal is still there at the next start, and the
host is reverted to the snapshots: it ends either fully applied or fully reverted.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bootstrap.files import atomic_write


@dataclass(frozen=True, slots=True)
class JournalEntry:
    spec: Mapping[str, Any]
    snapshots: Mapping[str, Any]


class Journal:
    def __init__(self, path: Path) -> None:
        self.path = path

    def begin(self, spec: Mapping[str, Any], snapshots: Mapping[str, Any]) -> None:
        payload = json.dumps({"spec": spec, "snapshots": snapshots}, sort_keys=True)
        atomic_write(self.path, payload.encode(), mode=0o600)

    def pending(self) -> JournalEntry | None:
        try:
            data = json.loads(self.path.read_bytes())
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            # a torn journal is impossible (atomic write); anything unreadable is dropped
            return None
        return JournalEntry(spec=data.get("spec", {}), snapshots=data.get("snapshots", {}))

    def clear(self) -> None:
        try:
            self.path.unlink()
        except FileNotFoundError:
            return
        dir_fd = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
