"""The host a run acts on: its file root (``--root``) and where our own state lives."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath


@dataclass(frozen=True, slots=True)
class HostRoot:
    """Maps absolute host paths under a file root, so one machine can hold many hosts."""

    root: Path = field(default_factory=lambda: Path("/"))

    def path(self, absolute: str | PurePosixPath) -> Path:
        rel = str(absolute).lstrip("/")
        return self.root / rel if rel else self.root

    @property
    def is_real(self) -> bool:
        """True when acting on the machine's own files (``--root /``)."""
        return self.root.resolve() == Path("/")

    @property
    def ovsdb_socket(self) -> Path:
        return self.path("/var/run/openvswitch/db.sock")

    @property
    def state_dir(self) -> Path:
        return self.path("/var/lib/cloudstack-bootstrap")

    @property
    def journal_path(self) -> Path:
        """The crash journal: present while a transaction is open (or was interrupted)."""
        return self.state_dir / "journal.json"
