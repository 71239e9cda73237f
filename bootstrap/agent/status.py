"""The status document (contract section 4), built purely from what happened."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, Literal

from bootstrap import __version__
from bootstrap.engine.check import Check
from bootstrap.engine.resource import Change
from bootstrap.errors import BootstrapError, StaleDocument
from bootstrap.model.document import API_VERSION

State = Literal["starting", "applying", "converged", "failed", "rolled_back", "rejected", "offline"]


def now() -> str:
    """UTC, ISO 8601 with milliseconds and ``Z``: two statuses in one second still differ."""
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def error_json(error: BootstrapError) -> dict[str, Any]:
    """``{code, message, field|resource}``; a replay names the ``version`` field."""
    data = error.to_json()
    if isinstance(error, StaleDocument):
        data["field"] = "version"
    return data


def status_document(
    *,
    host: str,
    state: State,
    applied: Mapping[str, Any],
    changes: Sequence[Change] = (),
    checks: Sequence[Check] = (),
    error: BootstrapError | Mapping[str, Any] | None = None,
    drift: Sequence[Change] | None = None,
    at: str | None = None,
) -> dict[str, Any]:
    err = error_json(error) if isinstance(error, BootstrapError) else error
    doc: dict[str, Any] = {
        "apiVersion": API_VERSION,
        "host": host,
        "state": state,
        "applied": dict(applied),
        "changes": [c.to_json() for c in changes],
        "checks": [c.to_json() for c in checks],
        "error": dict(err) if err is not None else None,
        "at": at or now(),
        "agent": {"version": __version__},
    }
    if drift is not None:
        doc["drift"] = [c.to_json() for c in drift]
    return doc


def encode(doc: Mapping[str, Any]) -> bytes:
    return json.dumps(doc, separators=(",", ":"), default=str).encode()
