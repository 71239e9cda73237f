"""Desired documents (contract section 3): parse, validate, merge into an effective spec."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, StrictInt, ValidationError, field_validator

from bootstrap.errors import InvalidDocument
from bootstrap.model.merge import merge_all
from bootstrap.model.payload import MAX_BYTES, decode
from bootstrap.model.spec import FieldError, MissingField, Spec

API_VERSION = "cloudstack-bootstrap/v1"
ROLE_NAME = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
HOST_NAME = re.compile(r"^[a-z0-9][a-z0-9.-]{0,252}$")
MAX_VERSION = 2**53 - 1  # a JSON integer every client reads exactly


class Signature(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    key_id: str = Field(alias="keyId", min_length=1, max_length=128)
    ed25519: str = Field(min_length=1, max_length=256)


class RolloutSelector(BaseModel):
    """Set by ``csboot rollout``: only the listed hosts take this version (the current waves).

    Hosts not listed keep the version they run; a later publication of the same version
    with more hosts extends the rollout wave by wave.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._-]+$")
    hosts: tuple[str, ...] = ()

    @field_validator("hosts")
    @classmethod
    def _host_names(cls, hosts: tuple[str, ...]) -> tuple[str, ...]:
        for host in hosts:
            if not HOST_NAME.match(host):
                raise ValueError(f"{host!r} is not a valid host name")
        return hosts


class Document(BaseModel):
    """One desired document: a role's spec, or a host's overlay.

    ``spec`` stays a plain mapping here: a single document may be partial, and only the
    merged result has to be a complete, valid :class:`Spec`.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    api_version: Literal["cloudstack-bootstrap/v1"] = Field(alias="apiVersion")
    kind: Literal["Role", "Host"]
    name: str
    version: StrictInt = Field(ge=1, le=MAX_VERSION)  # 2.0, true and "2" are errors
    spec: dict[str, Any] = Field(default_factory=dict)
    rollout: RolloutSelector | None = None
    signature: Signature | None = None

    @field_validator("name")
    @classmethod
    def _name(cls, name: str) -> str:
        if not (ROLE_NAME.match(name) or HOST_NAME.match(name)):
            raise ValueError(f"{name!r} is not a valid role or host name")
        return name

    def to_json(self) -> dict[str, Any]:
        return self.model_dump(by_alias=True, exclude_none=True, mode="json")

    def applies_to(self, host: str) -> bool:
        """False while a rollout has not reached ``host`` yet."""
        return self.rollout is None or host in self.rollout.hosts

    def topic_key(self) -> str:
        """Identifies the topic this document lives on, for replay protection."""
        return f"{self.kind.lower()}s/{self.name}"


def _location(loc: Sequence[str | int], error: Mapping[str, Any]) -> str:
    path = list(loc)
    ctx_error = (error.get("ctx") or {}).get("error")
    if isinstance(ctx_error, FieldError):
        path.extend(ctx_error.path)
    # drop pydantic's tags for union members / function validators
    path = [p for p in path if not (isinstance(p, str) and ("[" in p or p.startswith("function-")))]
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _missing(error: Mapping[str, Any]) -> bool:
    """A required field absent, or a rule that another document may still satisfy."""
    ctx_error = (error.get("ctx") or {}).get("error")
    return error["type"] == "missing" or isinstance(ctx_error, MissingField)


def _message(error: Mapping[str, Any]) -> str:
    msg = str(error["msg"])
    return msg.removeprefix("Value error, ")


def invalid_from(
    exc: ValidationError, prefix: str = "", *, partial: bool = False
) -> InvalidDocument | None:
    """The first pydantic error as an :class:`InvalidDocument` naming a dotted field path.

    With ``partial``, missing required fields are not errors (None if nothing else is).
    """
    errors = [e for e in exc.errors() if not (partial and _missing(e))]
    if not errors:
        return None
    first = errors[0]
    field = _location(first["loc"], first)
    if prefix:
        field = f"{prefix}.{field}" if field else prefix
    return InvalidDocument(_message(first), field=field)


def parse_document(raw: bytes | str | Mapping[str, Any], *, max_bytes: int = MAX_BYTES) -> Document:
    """Parse JSON or YAML (or an already-decoded mapping) into a validated document.

    Total: whatever the input, the result is a :class:`Document` or an
    :class:`InvalidDocument` naming the field (bounds are checked before decoding, see
    :mod:`bootstrap.model.payload`). The document's own spec is validated too (as if it
    stood alone), so an invalid field is reported against the document that carries it.
    """
    data: object = raw if isinstance(raw, Mapping) else decode(raw, max_bytes=max_bytes)
    if not isinstance(data, Mapping):
        raise InvalidDocument("a desired document is a JSON object", field="")
    try:
        doc = validated(Document, data)
        if doc.kind == "Role" and not ROLE_NAME.match(doc.name):
            raise InvalidDocument(f"{doc.name!r} is not a valid role name", field="name")
        check_partial_spec(doc.spec, prefix="spec")
    except InvalidDocument:
        raise
    except (RecursionError, MemoryError, ValueError, TypeError, OverflowError) as exc:
        raise InvalidDocument(f"unreadable: {type(exc).__name__}", field="") from exc
    return doc


M = TypeVar("M", bound=BaseModel)


def validated(model: type[M], data: object, *, prefix: str = "") -> M:
    """``model.model_validate(data)``, its first error as :class:`InvalidDocument`."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        error = invalid_from(exc, prefix)
        assert error is not None  # a ValidationError always carries an error
        raise error from exc


def check_partial_spec(raw: Mapping[str, Any], *, prefix: str = "spec") -> None:
    """Validate one document's spec on its own: everything but fields another may supply.

    A role may leave the management address to each host's overlay, and an overlay may
    carry nothing but that address; the merged spec is then validated whole.
    """
    try:
        Spec.model_validate(raw)
    except ValidationError as exc:
        error = invalid_from(exc, prefix, partial=True)
        if error is not None:
            raise error from exc


def validate_spec(raw: Mapping[str, Any], *, prefix: str = "spec") -> Spec:
    return validated(Spec, raw, prefix=prefix)


def effective_spec(documents: Sequence[Document]) -> Spec:
    """Roles in the order given, then host overlays; the result validated as a whole."""
    ordered = [d for d in documents if d.kind == "Role"] + [
        d for d in documents if d.kind == "Host"
    ]
    return validate_spec(merge_all(d.spec for d in ordered))
