"""Documents, the typed spec, merging and signatures. Imports nothing else of ours.

The names below load on first use: ``bootstrap.model.names`` (constants ``csboot check``
needs) must not bring in pydantic.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from bootstrap.lazy import lazy_names

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


__getattr__ = lazy_names(__name__, _HOME)
