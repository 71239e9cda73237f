"""The status document (contract section 4): one typed, bounded model for both ends.

The agent builds it (:mod:`bootstrap.agent.status`), the fleet tools parse it
(:func:`parse_status`) from bytes a host wrote, so they trust nothing: the payload is
capped before decoding, its nesting is bounded before parsing, every field is strictly
typed (``"checks": [1]`` or ``"ok": "yes"`` are refused, not coerced) and every string and
list is bounded. A payload that is not a valid status raises :class:`InvalidStatus`
naming the field; fleet tools show such a host as ``invalid`` with that reason.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError

from bootstrap.errors import InvalidStatus
from bootstrap.wire.jsonguard import load_bounded

__all__ = [
    "API_VERSION",
    "MAX_ITEMS",
    "MAX_STATUS_BYTES",
    "MAX_TEXT",
    "MAX_VERSION",
    "STATES",
    "AgentInfo",
    "Applied",
    "ChangeItem",
    "CheckItem",
    "State",
    "StatusDocument",
    "StatusError",
    "parse_status",
]

API_VERSION = "cloudstack-bootstrap/v1"
MAX_STATUS_BYTES = 256 * 1024  # refused before decoding
MAX_DEPTH = 8  # the document itself nests 4 deep
MAX_TEXT = 1024  # messages and details (the agent clips to this)
MAX_NAME = 253
MAX_ITEMS = 200  # changes, checks, drift (the agent keeps the first ones)
MAX_ROLES = 64
MAX_VERSION = 2**63 - 1

State = Literal[
    "starting", "applying", "converged", "failed", "rolled_back", "rejected", "stale", "offline"
]
STATES: tuple[str, ...] = get_args(State)

HostName = Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9.-]{0,252}$")]
RoleName = Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9-]{0,62}$")]
Name = Annotated[str, StringConstraints(max_length=MAX_NAME)]
Text = Annotated[str, StringConstraints(max_length=MAX_TEXT)]
Version = Annotated[int, Field(ge=0, le=MAX_VERSION)]


class _Wire(BaseModel):
    """Strict types, bounded, frozen; unknown keys ignored (the contract grows additively)."""

    model_config = ConfigDict(strict=True, frozen=True, extra="ignore", populate_by_name=True)


class StatusError(_Wire):
    """``{code, message, field|resource}``; ``document``/``version`` name a rejected one."""

    code: Name
    message: Text = ""
    field: Name | None = None
    resource: Text | None = None
    document: Name | None = None  # e.g. "roles/kvm": the document a rejection is about
    version: Version | None = None  # its version, when it had a readable one
    suppressed: Annotated[int, Field(ge=0, le=2**31)] | None = None  # refusals folded in


class Applied(_Wire):
    roles: Annotated[dict[RoleName, Version], Field(max_length=MAX_ROLES)] = {}
    host: Version | None = None


class ChangeItem(_Wire):
    resource: Text
    action: Literal["create", "delete", "modify", "restart", "adopt"]
    detail: Text = ""


class CheckItem(_Wire):
    name: Name
    ok: bool
    detail: Text = ""


class AgentInfo(_Wire):
    version: Name


class StatusDocument(_Wire):
    api_version: Literal["cloudstack-bootstrap/v1"] = Field(alias="apiVersion")
    host: HostName
    state: State
    applied: Applied
    changes: Annotated[tuple[ChangeItem, ...], Field(max_length=MAX_ITEMS)] = ()
    checks: Annotated[tuple[CheckItem, ...], Field(max_length=MAX_ITEMS)] = ()
    error: StatusError | None = None
    at: Annotated[str, StringConstraints(max_length=64)]
    agent: AgentInfo | None = None
    drift: Annotated[tuple[ChangeItem, ...], Field(max_length=MAX_ITEMS)] | None = None
    warnings: Annotated[tuple[Text, ...], Field(max_length=MAX_ITEMS)] | None = None

    def to_json(self) -> dict[str, Any]:
        """The wire form: ``error`` always present (null), ``drift`` only when set."""
        data = self.model_dump(mode="json", by_alias=True)
        if data["error"] is not None:
            data["error"] = {k: v for k, v in data["error"].items() if v is not None}
        if data["drift"] is None:
            del data["drift"]
        if data["agent"] is None:
            del data["agent"]
        if not data["warnings"]:
            del data["warnings"]
        return data

    def role_version(self, role: str) -> int | None:
        return self.applied.roles.get(role)


def _field(error: ValidationError) -> tuple[str, str]:
    """Where the first problem is, and what (saying how many more there are)."""
    problems = error.errors(include_url=False)
    where = ".".join(str(p) for p in problems[0]["loc"])
    more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
    return where, str(problems[0]["msg"]) + more


def parse_status(payload: bytes, *, host: str | None = None) -> StatusDocument:
    """A status a host published, or :class:`InvalidStatus` naming what is wrong.

    ``host``: the host named by the topic; the document must name the same one.
    """
    try:
        data = load_bounded(payload, max_bytes=MAX_STATUS_BYTES, max_depth=MAX_DEPTH)
    except ValueError as exc:
        raise InvalidStatus(str(exc), field="") from None
    if not isinstance(data, dict):
        raise InvalidStatus(f"a status is a JSON object, not {type(data).__name__}", field="")
    try:
        doc = StatusDocument.model_validate_json(payload)
    except ValidationError as exc:
        where, why = _field(exc)
        raise InvalidStatus(why, field=where) from None
    if host is not None and doc.host != host:
        raise InvalidStatus(f"names host {doc.host!r}, published for {host!r}", field="host")
    return doc
