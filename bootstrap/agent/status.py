"""The status document (contract section 4), built purely from what happened.

The document itself is :class:`bootstrap.wire.status.StatusDocument`, shared with the fleet
tools; this builder clips whatever it is given (messages, details, long lists) to that
model's bounds, so building a status never fails and never echoes a huge field.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from pydantic import ValidationError

from bootstrap import __version__
from bootstrap.engine.resource import Change
from bootstrap.engine.transaction import Check
from bootstrap.errors import BootstrapError, StaleDocument
from bootstrap.wire.status import MAX_ITEMS, MAX_TEXT, State, StatusDocument

__all__ = ["State", "encode", "error_json", "now", "status_document"]

log = logging.getLogger(__name__)
MAX_NAME = 253


def now() -> str:
    """UTC, ISO 8601 with milliseconds and ``Z``: two statuses in one second still differ."""
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def error_json(error: BootstrapError) -> dict[str, Any]:
    """``{code, message, field|resource}``; a replay names the ``version`` field."""
    data = error.to_json()
    if isinstance(error, StaleDocument):
        data["field"] = "version"
    return data


def _clip(value: object, limit: int = MAX_TEXT) -> str:
    text = value if isinstance(value, str) else str(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _error(error: BootstrapError | Mapping[str, Any] | None) -> dict[str, Any] | None:
    data = error_json(error) if isinstance(error, BootstrapError) else error
    if data is None:
        return None
    out: dict[str, Any] = {}
    for key, value in data.items():
        if key == "version" and isinstance(value, int) and not isinstance(value, bool):
            out[key] = value
        elif key in ("message", "resource"):
            out[key] = _clip(value)
        elif key in ("code", "field", "document") and value is not None:
            out[key] = _clip(value, MAX_NAME)
    out.setdefault("code", "error")
    return out


def _changes(changes: Sequence[Change]) -> tuple[dict[str, str], ...]:
    return tuple(
        {"resource": _clip(c.resource), "action": c.action, "detail": _clip(c.detail)}
        for c in changes[:MAX_ITEMS]
    )


def _checks(checks: Sequence[Check]) -> tuple[dict[str, Any], ...]:
    return tuple(
        {"name": _clip(c.name, MAX_NAME), "ok": bool(c.ok), "detail": _clip(c.detail)}
        for c in checks[:MAX_ITEMS]
    )


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
    """The status as a JSON-ready dict, validated against the shared model."""
    data: dict[str, Any] = {
        "apiVersion": "cloudstack-bootstrap/v1",
        "host": host,
        "state": state,
        "applied": {"roles": dict(applied.get("roles") or {}), "host": applied.get("host")},
        "changes": _changes(changes),
        "checks": _checks(checks),
        "error": _error(error),
        "at": at or now(),
        "agent": {"version": __version__},
        "drift": None if drift is None else _changes(drift),
    }
    try:
        return StatusDocument.model_validate(data).to_json()
    except ValidationError as exc:  # e.g. a version beyond MAX_VERSION: say so, never raise
        log.error("status not representable: %s", exc)
        data |= {
            "state": "failed",
            "applied": {"roles": {}, "host": None},
            "error": {"code": "invalid", "message": _clip(f"status not representable: {exc}")},
        }
        return StatusDocument.model_validate(data).to_json()


def encode(doc: Mapping[str, Any]) -> bytes:
    return json.dumps(doc, separators=(",", ":"), default=str).encode()
