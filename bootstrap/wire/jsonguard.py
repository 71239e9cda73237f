"""JSON from the wire with its size, nesting, numbers and keys bounded *before* parsing.

``json.loads`` recurses (a 100,000-deep array is a ``RecursionError``), turns 5,000-digit
numbers into a ``ValueError`` deep inside, and keeps the last of duplicate keys; here each
of these is refused up front, with the reason, as :class:`ValueError`.
"""

from __future__ import annotations

import json
import re
from typing import Any

__all__ = ["load_bounded"]

_STRINGS = re.compile(r'"(?:[^"\\]|\\.)*"', re.DOTALL)
_BRACKETS = re.compile(r"[\[\]{}]")
MAX_INT_DIGITS = 20


def _depth(text: str) -> int:
    deepest = depth = 0
    for match in _BRACKETS.finditer(_STRINGS.sub('""', text)):
        depth += 1 if match.group() in "[{" else -1
        deepest = max(deepest, depth)
    return deepest


def _int(digits: str) -> int:
    if len(digits.lstrip("-")) > MAX_INT_DIGITS:
        raise ValueError(f"a number of {len(digits)} digits")
    return int(digits)


def _constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"duplicate key {key!r}")
        out[key] = value
    return out


def load_bounded(payload: bytes, *, max_bytes: int, max_depth: int) -> Any:
    """Parse ``payload``; :class:`ValueError` names why it is refused."""
    if len(payload) > max_bytes:
        raise ValueError(f"{len(payload)} bytes, more than the {max_bytes} allowed")
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"not UTF-8 (byte {exc.start})") from None
    depth = _depth(text)
    if depth > max_depth:
        raise ValueError(f"nested {depth} deep, more than {max_depth}")
    try:
        return json.loads(
            text,
            parse_int=_int,
            parse_constant=_constant,
            object_pairs_hook=_no_duplicates,
        )
    except RecursionError:  # pragma: no cover - the depth check comes first
        raise ValueError("nested too deep") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"not JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
