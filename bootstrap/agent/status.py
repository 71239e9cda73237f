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
from bootstrap.engine.check import Check
from bootstrap.engine.resource import Change
from bootstrap.errors import BootstrapError, StaleDocument
from bootstrap.wire.status import MAX_ITEMS, MAX_STATUS_BYTES, MAX_TEXT, State, StatusDocument

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
        if key in ("version", "suppressed") and type(value) is int:
            out[key] = value
        elif key in ("message", "resource"):
            out[key] = _clip(value)
        elif key in ("code", "field", "document") and value is not None:
            out[key] = _clip(value, MAX_NAME)
    out.setdefault("code", "error")
    return out


def _changes(changes: Sequence[Change]) -> list[dict[str, str]]:
    return [
        {"resource": _clip(c.resource), "action": c.action, "detail": _clip(c.detail)}
        for c in changes
    ]


def _checks(checks: Sequence[Check]) -> list[dict[str, Any]]:
    return [
        {"name": _clip(c.name, MAX_NAME), "ok": bool(c.ok), "detail": _clip(c.detail)}
        for c in checks[:MAX_ITEMS]
    ]


def _fit(data: dict[str, Any]) -> None:
    """Cut ``changes``/``drift`` (ending them with a line saying how many are left out)
    and ``checks`` until the encoded status fits the wire bounds (items and bytes)."""
    full = {name: data[name] for name in ("changes", "drift") if data[name] is not None}
    keep = {name: min(len(items), MAX_ITEMS - 1) for name, items in full.items()}
    checks = data["checks"]
    keep_checks = len(checks)
    while True:
        for name, items in full.items():
            data[name] = items[: keep[name]]
            if keep[name] < len(items):
                left = len(items) - keep[name]
                data[name].append({"resource": "…", "action": "modify", "detail": f"{left} more"})
        data["checks"] = checks[:keep_checks]
        if len(encode(data)) <= MAX_STATUS_BYTES - 4096:
            return
        if keep_checks == 0 and not any(keep.values()):
            return  # nothing left to cut; validation has the last word
        sizes = {name: len(encode({"x": data[name]})) for name in full}
        sizes["checks"] = len(encode({"x": data["checks"]}))
        longest = max(sizes, key=lambda name: sizes[name])
        if longest == "checks":
            keep_checks //= 2
        else:
            keep[longest] //= 2


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
    warnings: Sequence[str] = (),
) -> dict[str, Any]:
    """The status as a JSON-ready dict, validated against the shared model."""
    data: dict[str, Any] = {
        "apiVersion": "cloudstack-bootstrap/v1",
        "host": host,
        "state": state,
        "applied": {"roles": dict(applied.get("roles") or {}), "host": applied.get("host")},
        "changes": _changes(changes),  # cut to the bounds by _fit
        "checks": _checks(checks),
        "error": _error(error),
        "at": at or now(),
        "agent": {"version": __version__},
        "drift": None if drift is None else _changes(drift),
    }
    if warnings:
        data["warnings"] = tuple(_clip(w) for w in warnings[:MAX_ITEMS])
    _fit(data)
    for name in ("changes", "checks", "drift"):
        if data[name] is not None:
            data[name] = tuple(data[name])
    try:
        return StatusDocument.model_validate(data).to_json()
    except ValidationError as exc:  # e.g. a version beyond MAX_VERSION: say so, never raise
        log.error("status not representable: %s", exc)
        data.pop("warnings", None)
        data |= {
            "state": "failed",
            "applied": {"roles": {}, "host": None},
            "error": {"code": "invalid", "message": _clip(f"status not representable: {exc}")},
        }
        return StatusDocument.model_validate(data).to_json()


def encode(doc: Mapping[str, Any]) -> bytes:
    return json.dumps(doc, separators=(",", ":"), default=str).encode()
