"""Whole-file and symlink resources: the shared shell of every host-file resource.

A file's state is its bytes (``None`` when absent). Subclasses only say how to edit the
text (``edit``, pure) and how to describe an edit in words (``describe``); observing,
diffing, atomic writes with a backup, deleting and reverting are the same for all of them.
Paths are host paths (``/etc/...``) mapped through :class:`HostRoot`, so ``--root`` works.
"""

from __future__ import annotations

import contextlib
import logging
import os
from abc import abstractmethod
from dataclasses import dataclass
from pathlib import Path

from pydantic import Base64Bytes

from bootstrap.engine.resource import Action, Change, Resource
from bootstrap.files import atomic_write, read_bytes
from bootstrap.host.root import HostRoot

log = logging.getLogger(__name__)

BACKUP_SUFFIX = ".csboot.bak"


@dataclass(frozen=True, slots=True)
class FileState:
    """A file's bytes, or ``None`` when it does not exist (base64 in the journal)."""

    data: Base64Bytes | None = None


def backup_path(path: Path) -> Path:
    return path.with_name(path.name + BACKUP_SUFFIX)


class FileResource(Resource[FileState]):
    """A file we edit in place, keeping what we do not own."""

    state_type = FileState

    def __init__(self, host: HostRoot, path: str) -> None:
        self.host = host
        self.host_path = path
        self.path = host.path(path)

    @property
    def name(self) -> str:
        return f"file{self.host_path}"

    async def observe(self) -> FileState:
        return FileState(read_bytes(self.path))

    def target(self, current: FileState) -> FileState:
        return FileState(self.edit(current.data))

    @abstractmethod
    def edit(self, data: bytes | None) -> bytes | None:
        """Pure: the bytes we want, given the current ones (``None`` = absent)."""

    def describe(self, old: bytes | None, new: bytes | None) -> str:
        """Pure: the edit in words; subclasses that understand the format say more."""
        if new is None:
            return f"remove ({len(old or b'')} bytes)"
        if old is None:
            return f"{len(new)} bytes"
        return f"{len(old)} -> {len(new)} bytes"

    def diff(self, current: FileState, target: FileState) -> list[Change]:
        if current.data == target.data:
            return []
        action: Action
        if target.data is None:
            action = "delete"
        elif current.data is None:
            action = "create"
        else:
            action = "modify"
        return [Change(self.name, action, self.describe(current.data, target.data))]

    async def apply(self, current: FileState, target: FileState) -> None:
        """Write ``target`` atomically; the replaced version is kept as ``*.csboot.bak``.

        Reads the disk again rather than trusting ``current``, so the backup is what was
        really there. Deleting keeps no backup: we only delete files we created ourselves.
        """
        on_disk = read_bytes(self.path)
        if on_disk == target.data:
            return
        if target.data is None:
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()
            return
        if on_disk is not None:  # the backup is as private as the file it keeps
            mode = self.path.stat().st_mode & 0o7777
            atomic_write(backup_path(self.path), on_disk, mode=mode)
        atomic_write(self.path, target.data)


class WholeFile(FileResource):
    """A file whose whole content is ours (e.g. a systemd drop-in); ``None`` removes it."""

    def __init__(
        self,
        host: HostRoot,
        path: str,
        content: bytes | None,
        *,
        restarts: frozenset[str] = frozenset(),
    ) -> None:
        super().__init__(host, path)
        self.content = content
        self.restarts = restarts

    def edit(self, data: bytes | None) -> bytes | None:
        return self.content


@dataclass(frozen=True, slots=True)
class LinkState:
    """Where a symlink points (``None`` = no link). ``blocked``: a non-link file is there."""

    points_to: str | None = None
    blocked: bool = False


class Symlink(Resource[LinkState]):
    """A symlink such as ``systemctl enable`` or ``ln -s`` makes; ``points_to`` is a host path.

    A regular file in the link's place is left alone: it is someone else's decision.
    ``after_apply`` lets a subclass act on the running system once the link is right.
    """

    state_type = LinkState

    def __init__(
        self,
        host: HostRoot,
        path: str,
        points_to: str | None,
        *,
        restarts: frozenset[str] = frozenset(),
    ) -> None:
        self.host = host
        self.host_path = path
        self.path = host.path(path)
        self.points_to = points_to
        self.restarts = restarts

    @property
    def name(self) -> str:
        return f"link{self.host_path}"

    async def observe(self) -> LinkState:
        if self.path.is_symlink():
            return LinkState(str(self.path.readlink()))
        return LinkState(None, blocked=self.path.exists())

    def target(self, current: LinkState) -> LinkState:
        if current.blocked:
            return current
        return LinkState(self.points_to)

    def diff(self, current: LinkState, target: LinkState) -> list[Change]:
        if current == target:
            return []
        if target.points_to is None:
            return [Change(self.name, "delete", f"unlink (was -> {current.points_to})")]
        if current.points_to is None:
            return [Change(self.name, "create", f"-> {target.points_to}")]
        return [Change(self.name, "modify", f"{current.points_to} -> {target.points_to}")]

    async def apply(self, current: LinkState, target: LinkState) -> None:
        if target.blocked:
            return
        now = await self.observe()
        if now.blocked:
            log.warning("%s: a regular file is in the way; left alone", self.name)
            return
        if now.points_to != target.points_to:
            if target.points_to is None:
                with contextlib.suppress(FileNotFoundError):
                    self.path.unlink()
            else:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                tmp = self.path.with_name(f".{self.path.name}.csboot-tmp")
                with contextlib.suppress(FileNotFoundError):
                    tmp.unlink()
                tmp.symlink_to(target.points_to)
                os.replace(tmp, self.path)
        await self.after_apply(target)

    async def after_apply(self, target: LinkState) -> None:
        """Hook for effects on the running system (only ever on the real root)."""
