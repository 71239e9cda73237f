"""The one protocol every managed thing answers: observe, diff, apply, verify, revert.

A resource holds its desired state and knows how to read the host (``observe``), what it
wants given what is there (``target``, pure), how to describe the difference (``diff``,
pure) and how to move the host from one state to another (``apply``). Verify and revert
follow from those: verify re-observes and diffs against the target; revert applies the
snapshot taken before the change, so the revert is computed from data, not hand-written.
"""

from __future__ import annotations

import functools
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar, Generic, Literal, TypeVar

from pydantic import TypeAdapter

Action = Literal["create", "modify", "delete", "restart", "adopt"]
S = TypeVar("S")


@dataclass(frozen=True, slots=True)
class Change:
    """One line of a plan: what would change, and how, in words an operator reads."""

    resource: str
    action: Action
    detail: str = ""

    def to_json(self) -> dict[str, str]:
        return {"resource": self.resource, "action": self.action, "detail": self.detail}

    def __str__(self) -> str:
        sign = {"create": "+", "delete": "-", "modify": "~", "restart": "↻", "adopt": "@"}[
            self.action
        ]
        if self.action == "adopt":
            return f"@ adopt {self.resource}" + (f": {self.detail}" if self.detail else "")
        return f"{sign} {self.resource}" + (f": {self.detail}" if self.detail else "")


class Resource(ABC, Generic[S]):
    """Base of every managed resource. ``S`` is its observed/desired state type.

    ``S`` must be JSON-serialisable through pydantic (dataclasses, tuples, str, None...)
    because snapshots are written to the crash journal.
    """

    #: the state type, for (de)serialising snapshots in the journal
    state_type: ClassVar[Any]
    #: services that read this resource and must restart when it changes
    restarts: frozenset[str] = frozenset()
    #: changing it can cut a network path (links, addresses, the firewall): only then are
    #: the transaction's probes waited for after the change
    network: ClassVar[bool] = False
    #: what the plan must say although nothing changes (e.g. nothing to persist into)
    warnings: tuple[str, ...] = ()

    @property
    @abstractmethod
    def name(self) -> str:
        """Stable identity, e.g. ``file/etc/libvirt/libvirtd.conf`` or ``bridge/cloudbr0``."""

    @abstractmethod
    async def observe(self) -> S:
        """Read the host's current state of this resource."""

    @abstractmethod
    def target(self, current: S) -> S:
        """Pure: the state we want, given the current one (files keep what we don't own)."""

    @abstractmethod
    def diff(self, current: S, target: S) -> list[Change]:
        """Pure: the changes that take ``current`` to ``target``; empty when equal."""

    @abstractmethod
    async def apply(self, current: S, target: S) -> None:
        """Move the host from ``current`` to ``target``; idempotent."""

    async def verify(self, target: S) -> list[Change]:
        """Re-observe; what still differs from ``target`` (empty = verified)."""
        return self.diff(await self.observe(), target)

    async def revert(self, snapshot: S) -> None:
        """Return to a snapshot taken by ``observe`` before the change."""
        await self.apply(await self.observe(), snapshot)

    def dump(self, state: S) -> Any:
        return _adapter(self.state_type).dump_python(state, mode="json")

    def load(self, data: Any) -> S:
        loaded: S = _adapter(self.state_type).validate_python(data)
        return loaded


def prepare_adapters() -> None:
    """The snapshot adapter of every resource class imported so far, built now (the
    agent's warm-up): its first apply then compiles no schema (5 state types, 10-45 ms of
    a loaded machine's CPU inside the rollout)."""
    classes: list[type] = [Resource]
    while classes:
        cls = classes.pop()
        classes.extend(cls.__subclasses__())
        if "state_type" in cls.__dict__:
            _adapter(cls.__dict__["state_type"])


@functools.cache
def _adapter(state_type: Any) -> TypeAdapter[Any]:
    """One adapter per state type: building one compiles its schema (a millisecond each,
    for every resource of every apply)."""
    return TypeAdapter(state_type)
