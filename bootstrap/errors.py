"""The error tree. Every error carries what it is about, so shells can report it.

BootstrapError
├── InvalidDocument (ValueError)   a document or spec is invalid; ``field`` names where
│   └── SignatureError             unsigned / badly signed where trusted keys are set
├── StaleDocument                  version not newer than the one in force (replay)
├── ResourceError                  applying a resource failed; ``resource`` names it
│   └── VerifyError                re-observation after apply still shows a diff
├── ProbeError                     the management path was lost after a change
└── ConfigError (ValueError)       agent.toml / command-line settings are invalid
"""

from __future__ import annotations

from typing import Any


class BootstrapError(Exception):
    """Base of every error this project raises on purpose."""

    code = "error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def to_json(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message}


class InvalidDocument(BootstrapError, ValueError):
    """A desired document (or the merged spec) is invalid; ``field`` is a dotted path."""

    code = "invalid"

    def __init__(self, message: str, *, field: str) -> None:
        super().__init__(f"{field}: {message}" if field else message)
        self.field = field
        self.reason = message

    def to_json(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message, "field": self.field}


class SignatureError(InvalidDocument):
    code = "signature"


class StaleDocument(BootstrapError):
    code = "stale"


class ConfigError(BootstrapError, ValueError):
    code = "config"


class ResourceError(BootstrapError):
    """Applying (or observing) one managed resource failed."""

    code = "apply"

    def __init__(self, message: str, *, resource: str) -> None:
        super().__init__(f"{resource}: {message}")
        self.resource = resource

    def to_json(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message, "resource": self.resource}


class VerifyError(ResourceError):
    code = "verify"


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
