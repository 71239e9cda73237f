"""The error tree. Every error carries what it is about, so shells can report it.

BootstrapError
├── InvalidDocument (ValueError)   a document or spec is invalid; ``field`` names where
│   ├── SignatureError             unsigned / badly signed where trusted keys are set
│   ├── TooLarge                   over a size, depth or number bound (checked before decoding)
│   └── InvalidStatus              a status a host published is unreadable (fleet tools)
├── StaleDocument                  version not newer than the one in force (replay)
├── ResourceError                  applying a resource failed; ``resource`` names it
│   ├── VerifyError                re-observation after apply still shows a diff
│   └── InternalError              an unexpected exception inside a transaction, mapped here
├── ProbeError                     the management path was lost after a change
├── ConfigError (ValueError)       agent.toml / command-line settings are invalid
└── RolloutError                   a rollout cannot go on (bad input, no broker)
    └── RolloutLocked              another controller holds the role's lock

Messages are clipped (:data:`MAX_MESSAGE`): an error echoes what it is about, and what it
is about may be an attacker's 50 MB field; status documents, events and log lines carry
the clipped text only.
"""

from __future__ import annotations

from typing import Any

MAX_MESSAGE = 512  # characters of a message (and of a field path) that are ever echoed


def clip(text: str, limit: int = MAX_MESSAGE) -> str:
    """``text`` cut to ``limit`` characters, saying how much was left out."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... ({len(text) - limit} more characters)"


class BootstrapError(Exception):
    """Base of every error this project raises on purpose."""

    code = "error"

    def __init__(self, message: str) -> None:
        message = clip(message)
        super().__init__(message)
        self.message = message

    def to_json(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message}


class InvalidDocument(BootstrapError, ValueError):
    """A desired document (or the merged spec) is invalid; ``field`` is a dotted path."""

    code = "invalid"

    def __init__(self, message: str, *, field: str) -> None:
        field, message = clip(field, 200), clip(message)
        super().__init__(f"{field}: {message}" if field else message)
        self.field = field
        self.reason = message

    def to_json(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message, "field": self.field}


class SignatureError(InvalidDocument):
    code = "signature"


class TooLarge(InvalidDocument):
    """Over a bound that is checked before the payload is decoded (bytes, depth, digits)."""

    code = "too_large"


class StaleDocument(BootstrapError):
    """Not newer than the version in force, pending or failed on its topic: a replay."""

    code = "stale"


class ConfigError(BootstrapError, ValueError):
    code = "config"


class ResourceError(BootstrapError):
    """Applying (or observing) one managed resource failed."""

    code = "apply"

    def __init__(self, message: str, *, resource: str) -> None:
        resource = clip(resource, 200)
        super().__init__(f"{resource}: {message}")
        self.resource = resource

    def to_json(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message, "resource": self.resource}


class VerifyError(ResourceError):
    code = "verify"


class InternalError(ResourceError):
    """An exception we did not raise on purpose, caught inside a transaction (a bug, or
    the host doing something unexpected); the transaction still reverts."""

    code = "internal"


class ProbeError(BootstrapError):
    """A probe that passed before the change failed after it."""

    code = "probe"

    def __init__(self, message: str, *, probe: str) -> None:
        super().__init__(f"{probe}: {message}")
        self.probe = probe

    def to_json(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message, "resource": f"probe/{self.probe}"}


class InvalidStatus(InvalidDocument):
    """A status a host published is unreadable or invalid (``field`` names where); the
    fleet tools show that host as ``invalid`` instead of believing or crashing on it."""

    code = "invalid_status"


class RolloutError(BootstrapError):
    """A rollout cannot go on (bad input, no broker)."""

    code = "rollout"


class RolloutLocked(RolloutError):
    """Another controller holds the role's rollout lock."""

    code = "locked"
