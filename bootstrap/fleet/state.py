"""The rollout's own state, retained on ``P/rollouts/{role}`` (an extension of the contract).

It is the controller's journal and its lock at once: a controller that dies is restarted
with the same command and resumes from it; a second controller sees a fresh heartbeat and
refuses. Pure model and decisions; publishing is the controller's job.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from bootstrap.model.document import API_VERSION
from bootstrap.wire.text import printable

Phase = Literal["running", "aborting", "completed", "aborted", "failed"]
ACTIVE: frozenset[str] = frozenset({"running", "aborting"})
STALE_AFTER = 3  # heartbeats missed before a lock may be taken over


def utcnow() -> datetime:
    return datetime.now(UTC)


def iso(moment: datetime) -> str:
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def parse_iso(text: str) -> datetime:
    """An ISO 8601 time with a zone; :class:`ValueError` otherwise (never a naive one,
    which would not compare with ours)."""
    moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if moment.tzinfo is None:
        raise ValueError(f"{text!r} has no time zone")
    return moment


def spec_digest(spec: Mapping[str, Any]) -> str:
    """Identifies the spec being rolled out, so a restart resumes only the same rollout."""
    canonical = json.dumps(spec, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(canonical).hexdigest()[:16]


class Previous(BaseModel):
    model_config = ConfigDict(frozen=True)

    version: int
    spec: dict[str, Any]


class RolloutState(BaseModel):
    model_config = ConfigDict(populate_by_name=True)

    api_version: str = Field(default=API_VERSION, alias="apiVersion")
    kind: Literal["Rollout"] = "Rollout"
    id: str
    role: str
    version: int
    digest: str
    previous: Previous | None = None
    abort_version: int | None = None
    waves: list[list[str]]
    wave: int = 0
    admitted: dict[str, str] = Field(default_factory=dict)  # host -> when handed the version
    done: list[str] = Field(default_factory=list)
    failed: dict[str, str] = Field(default_factory=dict)  # host -> why
    reverted: list[str] = Field(default_factory=list)
    phase: Phase = "running"
    reason: str | None = None
    controller: str
    heartbeat: str
    heartbeat_interval: float
    started: str

    @field_validator("admitted")
    @classmethod
    def _admitted_times(cls, admitted: dict[str, str]) -> dict[str, str]:
        """Each host's admission time is what its timeout counts from: a state whose
        time does not parse is not a rollout to resume (a resumed controller would fail
        on it at its first judgement)."""
        for when in admitted.values():
            parse_iso(when)
        return admitted

    def to_json(self) -> dict[str, Any]:
        return self.model_dump(by_alias=True, mode="json")

    @property
    def hosts(self) -> list[str]:
        return [h for wave in self.waves for h in wave]

    def stale(self, now: datetime) -> bool:
        """No heartbeat for 3 intervals (an unreadable heartbeat holds no lock)."""
        try:
            age = (now - parse_iso(self.heartbeat)).total_seconds()
        except ValueError:
            return True
        return age > STALE_AFTER * self.heartbeat_interval

    def selector_hosts(self) -> list[str]:
        """Hosts the published version names: every host handed it, in rollout order."""
        return [h for h in self.hosts if h in self.admitted]


def lock_holder(state: RolloutState | None, me: str, now: datetime) -> str | None:
    """Who else holds the role's rollout lock (None: free, ours, finished, or stale)."""
    if state is None or state.phase not in ACTIVE or state.controller == me:
        return None
    return None if state.stale(now) else state.controller


def resumable(state: RolloutState | None, digest: str) -> bool:
    """An interrupted rollout of this same spec: pick it up instead of starting anew."""
    return state is not None and state.phase in ACTIVE and state.digest == digest


def summarize(state: RolloutState) -> list[str]:
    lines = [f"rollout {state.id}: {state.phase} (role {state.role}, version {state.version})"]
    lines.append(f"  converged: {len(state.done)}/{len(state.hosts)}")
    if state.failed:
        lines.append("  failed hosts:")
        failed = sorted(state.failed.items())
        lines += [f"    {printable(host)}: {printable(why)}" for host, why in failed]
    if state.reason:
        lines.append(f"  reason: {printable(state.reason, 10_000)}")
    if state.phase == "aborted" and state.abort_version is not None:
        back = sorted(state.reverted)
        lines.append(f"  restored previous spec as v{state.abort_version} on: {', '.join(back)}")
        missing = sorted(set(state.admitted) - set(back))
        if missing:
            lines.append(f"  NOT restored: {', '.join(missing)}")
    untouched = [h for h in state.hosts if h not in state.admitted]
    if untouched:
        lines.append(f"  never handed v{state.version}: {len(untouched)} host(s)")
    return lines
