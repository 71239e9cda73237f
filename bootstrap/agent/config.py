"""``agent.toml`` (contract section 6) as a typed, validated configuration.

Parsing is pure (:func:`parse_config` takes the decoded TOML table); :func:`load_config`
reads the file. Every error is a :class:`ConfigError` naming the offending key, so an
operator sees ``tls.ca: ...`` rather than a traceback.

``trusted_keys`` entries are ``"KEYID:BASE64"``: the key id a signature names
(``signature.keyId``) and the base64 of the 32 raw Ed25519 public-key bytes, exactly what
``csboot keygen`` prints.
"""

from __future__ import annotations

import json
import socket
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from bootstrap.agent.topics import DEFAULT_PREFIX, check_host, check_prefix, check_role
from bootstrap.errors import ConfigError, SignatureError
from bootstrap.model.payload import MAX_BYTES
from bootstrap.model.signing import PublicKey, load_public_key

KNOWN_CHECKS = ("libvirt-listening", "time-synchronised", "cloudstack-agent")
"""Post-apply checks; ``time-synchronised`` only when the spec has ``time``."""


class Broker(BaseModel):
    """One broker endpoint parsed from ``mqtt://host:port`` or ``mqtts://host:port``."""

    model_config = ConfigDict(frozen=True)

    host: str
    port: int
    tls: bool

    @classmethod
    def parse(cls, url: str) -> Broker:
        parts = urlsplit(url.strip())
        if parts.scheme not in ("mqtt", "mqtts") or not parts.hostname:
            raise ValueError(f"{url!r} is not mqtt://HOST[:PORT] or mqtts://HOST[:PORT]")
        if parts.path not in ("", "/") or parts.query or parts.username:
            raise ValueError(f"{url!r}: only scheme, host and port are allowed")
        try:
            port = parts.port
        except ValueError as exc:
            raise ValueError(f"{url!r}: bad port") from exc
        tls = parts.scheme == "mqtts"
        return cls(host=parts.hostname, port=port or (8883 if tls else 1883), tls=tls)

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{'mqtts' if self.tls else 'mqtt'}://{host}:{self.port}"


class _Table(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Tls(_Table):
    ca: Path | None = None
    cert: Path | None = None
    key: Path | None = None

    @model_validator(mode="after")
    def _pair(self) -> Tls:
        if (self.cert is None) != (self.key is None):
            raise ValueError("cert and key go together")
        return self


class Auth(_Table):
    username: str = Field(min_length=1)
    password_file: Path | None = None

    def password(self) -> str | None:
        """Read at connect time, so a rotated password needs no restart."""
        if self.password_file is None:
            return None
        try:
            return self.password_file.read_text().rstrip("\r\n")
        except OSError as exc:
            raise ConfigError(f"auth.password_file: cannot read: {exc.strerror}") from exc


class Mqtt(_Table):
    """``[mqtt] protocol``: "5", "3.1.1", or "auto" (5 first, then 3.1.1 when the broker
    refuses MQTT 5 or closes the connection on its CONNECT, as RabbitMQ 3.10 does)."""

    protocol: Literal["auto", "5", "3.1.1"] = "auto"


class Drift(_Table):
    interval: float = Field(default=300.0, gt=0)
    heal: bool = False


class Reconnect(_Table):
    initial: float = Field(default=1.0, gt=0)
    max: float = Field(default=60.0, gt=0)


class AgentConfig(_Table):
    """The whole agent configuration; see ``docs/agent.md`` for every key."""

    brokers: tuple[Broker, ...] = Field(min_length=1)
    host: str = Field(default_factory=lambda: socket.getfqdn().lower())
    roles: tuple[str, ...] = ()
    prefix: str = DEFAULT_PREFIX
    root: Path = Path("/")
    rollback_window: float = Field(default=30.0, gt=0)
    trusted_keys: tuple[str, ...] = ()
    tls: Tls | None = None
    auth: Auth | None = None
    allow_plaintext_auth: bool = False
    mqtt: Mqtt = Mqtt()
    max_payload: int = Field(default=MAX_BYTES, ge=1024, le=64 * 1024 * 1024)
    reject_interval: float = Field(default=1.0, ge=0.05, le=3600)
    drift: Drift = Drift()
    reconnect: Reconnect = Reconnect()
    debounce: float = Field(default=0.5, ge=0)
    keepalive: int = Field(default=30, ge=5, le=65535)
    session_expiry: int = Field(default=7 * 24 * 3600, ge=0)
    checks: (
        tuple[Literal["libvirt-listening", "time-synchronised", "cloudstack-agent"], ...] | None
    ) = None

    @field_validator("host")
    @classmethod
    def _host(cls, value: str) -> str:
        return check_host(value)

    @field_validator("roles")
    @classmethod
    def _roles(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for role in value:
            check_role(role)
        if len(set(value)) != len(value):
            raise ValueError("a role is listed twice")
        return value

    @field_validator("prefix")
    @classmethod
    def _prefix(cls, value: str) -> str:
        return check_prefix(value)

    @field_validator("trusted_keys")
    @classmethod
    def _keys(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        ids = [_split_key(entry)[0] for entry in value]
        twice = sorted({i for i in ids if ids.count(i) > 1})
        if twice:
            raise ValueError(f"key id {twice[0]!r} is listed twice")
        return value

    @model_validator(mode="after")
    def _secure(self) -> AgentConfig:
        plain = [b for b in self.brokers if not b.tls]
        if self.tls is not None and plain:
            raise ValueError(
                f"tls: [tls] is set but {plain[0].url} is plain MQTT; use mqtts://"
                " (or remove [tls])"
            )
        if self.auth is not None and plain and not self.allow_plaintext_auth:
            raise ValueError(
                f"auth: [auth] would send the password in clear to {plain[0].url}; use mqtts://"
                " or set allow_plaintext_auth = true"
            )
        return self

    def warnings(self) -> list[str]:
        """Insecure settings that are allowed, said loudly at start and in every status."""
        out = []
        if not self.trusted_keys:
            out.append("trusted_keys is empty: unsigned documents are applied")
        if self.auth is not None and any(not b.tls for b in self.brokers):
            out.append("allow_plaintext_auth: the MQTT password is sent in clear")
        return out

    @property
    def enabled_checks(self) -> tuple[str, ...]:
        """Post-apply checks: by default only on the machine's own root (a real libvirtd)."""
        if self.checks is not None:
            return self.checks
        return KNOWN_CHECKS if self.root == Path("/") else ()

    def trusted(self) -> dict[str, PublicKey]:
        return dict(_split_key(entry) for entry in self.trusted_keys)


def _split_key(entry: str) -> tuple[str, PublicKey]:
    key_id, sep, text = entry.partition(":")
    if not sep or not key_id.strip():
        raise ValueError(f"{entry[:20]!r}...: a trusted key is 'KEYID:BASE64'")
    try:
        return key_id.strip(), load_public_key(text)
    except SignatureError as exc:
        raise ValueError(f"key {key_id!r}: {exc.reason}") from exc


def parse_config(data: Mapping[str, Any]) -> AgentConfig:
    """The TOML table as an :class:`AgentConfig`; ``broker`` and ``brokers`` both accepted."""
    raw = dict(data)
    if "broker" in raw and "brokers" in raw:
        raise ConfigError("broker: give either broker or brokers, not both")
    urls = raw.pop("brokers", None) if "brokers" in raw else raw.pop("broker", None)
    key = "brokers" if "brokers" in data else "broker"
    if urls is None:
        raise ConfigError("broker: missing (mqtt://HOST:PORT)")
    if isinstance(urls, str):
        urls = [urls]
    if not isinstance(urls, list) or not all(isinstance(u, str) for u in urls):
        raise ConfigError(f"{key}: a URL or a list of URLs")
    try:
        raw["brokers"] = tuple(Broker.parse(u) for u in urls)
    except ValueError as exc:
        raise ConfigError(f"{key}: {exc}") from exc
    try:
        return AgentConfig.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(p) for p in first["loc"])
        message = str(first["msg"]).removeprefix("Value error, ")
        raise ConfigError(f"{field}: {message}" if field else message) from exc


def load_config(path: Path) -> AgentConfig:
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from exc
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not TOML: {exc}") from exc
    return parse_config(data)


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str | Path):
        return json.dumps(str(value))  # JSON string escapes are valid TOML basic strings
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {type(value).__name__} as TOML")


def dump_config(config: AgentConfig) -> str:
    """TOML text that :func:`load_config` reads back to an equal configuration."""
    lines = [
        "# cloudstack-bootstrap agent configuration (see docs/agent.md)",
        f"brokers = {_toml_value([b.url for b in config.brokers])}",
        f"host = {_toml_value(config.host)}",
        f"roles = {_toml_value(config.roles)}",
        f"prefix = {_toml_value(config.prefix)}",
        f"root = {_toml_value(config.root)}",
        f"rollback_window = {_toml_value(config.rollback_window)}",
        f"trusted_keys = {_toml_value(config.trusted_keys)}",
        f"debounce = {_toml_value(config.debounce)}",
        f"keepalive = {_toml_value(config.keepalive)}",
        f"session_expiry = {_toml_value(config.session_expiry)}",
        f"max_payload = {_toml_value(config.max_payload)}",
        f"reject_interval = {_toml_value(config.reject_interval)}",
    ]
    if config.allow_plaintext_auth:
        lines.append("allow_plaintext_auth = true")
    if config.checks is not None:
        lines.append(f"checks = {_toml_value(config.checks)}")
    tables: list[tuple[str, BaseModel | None]] = [
        ("tls", config.tls),
        ("auth", config.auth),
        ("drift", config.drift),
        ("reconnect", config.reconnect),
        ("mqtt", config.mqtt),
    ]
    for name, table in tables:
        if table is None:
            continue
        values = {k: v for k, v in table.model_dump().items() if v is not None}
        if not values:
            continue
        lines += ["", f"[{name}]"] + [f"{k} = {_toml_value(v)}" for k, v in values.items()]
    return "\n".join(lines) + "\n"
