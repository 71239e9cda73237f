"""Documents, the typed spec, merging and signatures. Imports nothing else of ours."""

from bootstrap.model.document import Document, effective_spec, parse_document, validate_spec
from bootstrap.model.spec import Spec

__all__ = ["Document", "Spec", "effective_spec", "parse_document", "validate_spec"]
