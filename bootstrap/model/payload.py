"""Bytes to plain data, bounded: the one place untrusted payloads are decoded.

Every bound is checked *before* the decoder that could blow up on it runs:

- size: at most ``max_bytes`` (default 1 MiB) before anything else;
- encoding: strict UTF-8 (invalid bytes are an error, never replaced), no lone surrogates;
- depth: JSON brackets are counted on the raw text, YAML nesting on the parser's event
  stream (no tree is built yet), both against :data:`MAX_DEPTH`;
- integers: at most :data:`MAX_INT_DIGITS` digits (Python refuses ``int()`` past 4300
  digits with a ``ValueError``; a bound this small also keeps versions JSON-safe);
- duplicate keys are an error naming the key (JSON and YAML alike), YAML aliases and
  tags beyond the plain JSON types are refused (no billion laughs, no objects:
  :mod:`bootstrap.model.payload_yaml`).

Whatever else goes wrong inside a decoder is mapped to :class:`InvalidDocument` here,
so a caller only ever sees our own error, with its field.
"""

from __future__ import annotations

import json
import re
from typing import Any

from bootstrap.errors import InvalidDocument, TooLarge

MAX_BYTES = 1024 * 1024
MAX_DEPTH = 32
MAX_INT_DIGITS = 19  # 2**63 has 19 digits

_TOKENS = re.compile(r'\\.|["\[\]{}]', re.DOTALL)


def bounded_int(text: str) -> int:
    digits = len(text.lstrip("+-").replace("_", ""))
    if digits > MAX_INT_DIGITS:
        raise TooLarge(f"an integer of {digits} digits (at most {MAX_INT_DIGITS})", field="")
    return int(text)


def _no_constant(name: str) -> Any:
    raise InvalidDocument(f"{name} is not JSON", field="")


def _json_object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise InvalidDocument(f"duplicate key {key!r}", field=key)
        out[key] = value
    return out


def _bracket_depth(text: str) -> int:
    """JSON nesting counted on the text (strings skipped), one linear pass, early exit."""
    if text.count("[") + text.count("{") <= MAX_DEPTH:
        return 0
    depth = 0
    in_string = False
    for match in _TOKENS.finditer(text):
        token = match.group()
        if token == '"':
            in_string = not in_string
        elif in_string or token[0] == "\\":
            continue
        elif token in "[{":
            depth += 1
            if depth > MAX_DEPTH:
                return depth
        else:
            depth -= 1
    return depth


def _decode_json(text: str) -> Any:
    if _bracket_depth(text) > MAX_DEPTH:
        raise TooLarge(f"nested deeper than {MAX_DEPTH}", field="")
    return json.loads(
        text,
        object_pairs_hook=_json_object,
        parse_int=bounded_int,
        parse_constant=_no_constant,
    )


def _check_strings(data: Any) -> None:
    """Every string (keys too) must encode back to UTF-8: no lone surrogates from ``\\ud800``."""
    stack = [data]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError as exc:
                raise InvalidDocument("a string is not valid Unicode", field="") from exc
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)


def decode(raw: bytes | str, *, max_bytes: int = MAX_BYTES) -> Any:
    """JSON, else YAML, within every bound above; :class:`InvalidDocument` otherwise."""
    size = len(raw)
    if size > max_bytes:
        raise TooLarge(f"payload of {size} bytes (at most {max_bytes})", field="")
    if isinstance(raw, bytes):
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise InvalidDocument(f"not UTF-8 (byte {exc.start})", field="") from exc
    else:
        text = raw
    try:
        try:
            data = _decode_json(text)
        except json.JSONDecodeError:
            # YAML's parser (~1.7 MiB) is loaded by the first payload that is not JSON
            from bootstrap.model import payload_yaml

            data = payload_yaml.decode(text)
        _check_strings(data)
    except InvalidDocument:
        raise
    except (RecursionError, MemoryError, ValueError, TypeError, OverflowError) as exc:
        raise InvalidDocument(f"unreadable: {type(exc).__name__}", field="") from exc
    return data
