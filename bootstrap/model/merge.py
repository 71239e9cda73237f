"""Merging role and host documents into one effective spec.

Maps merge deeply; scalars and lists are replaced by the later document.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any


def deep_merge(base: Mapping[str, Any], overlay: Mapping[str, Any]) -> dict[str, Any]:
    """A new dict: ``overlay`` on top of ``base``; neither input is changed."""
    merged: dict[str, Any] = dict(base)
    for key, value in overlay.items():
        old = merged.get(key)
        if isinstance(old, Mapping) and isinstance(value, Mapping):
            merged[key] = deep_merge(old, value)
        else:
            merged[key] = value
    return merged


def merge_all(specs: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """Merge in order: roles in the order the host lists them, then the host overlay."""
    merged: dict[str, Any] = {}
    for spec in specs:
        merged = deep_merge(merged, spec)
    return merged
