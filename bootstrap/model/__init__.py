"""Documents, the typed spec, merging and signatures. Imports nothing else of ours.

The names below load on first use: ``bootstrap.model.names`` (constants ``csboot check``
needs) must not bring in pydantic.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from bootstrap.model.document import Document, effective_spec, parse_document, validate_spec
    from bootstrap.model.spec import Spec

__all__ = ["Document", "Spec", "effective_spec", "parse_document", "validate_spec"]

_HOME = {
    "Document": "document",
    "effective_spec": "document",
    "parse_document": "document",
    "validate_spec": "document",
    "Spec": "spec",
}


def __getattr__(name: str) -> Any:
    if name not in _HOME:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{_HOME[name]}"), name)
    globals()[name] = value
    return value
