"""Broker settings for the fleet tools (``csboot rollout`` / ``status``), as agent.toml has them.

A controller TOML (``-c``) takes ``broker``/``brokers``, ``prefix``, ``[tls]`` and ``[auth]``
exactly like agent.toml; command-line flags override it. The client tries each broker in
turn, MQTT 5 first.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import socket
import ssl
import tomllib
from collections.abc import AsyncIterator
from pathlib import Path

import aiomqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from bootstrap.agent.config import Auth, Broker, Tls
from bootstrap.agent.topics import DEFAULT_PREFIX, check_prefix
from bootstrap.errors import ConfigError

UNSUPPORTED_PROTOCOL = (1, 132)  # MQTT 3.1.1 CONNACK rc / MQTT 5 reason code
MAX_PACKET = 4 * 1024 * 1024  # what a fleet tool accepts from the broker at all


class FleetConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")

    brokers: tuple[Broker, ...] = Field(min_length=1)
    prefix: str = DEFAULT_PREFIX
    tls: Tls = Tls()
    auth: Auth | None = None
    password: str | None = None  # from --password-file, read once
    inventory: Path | None = None  # the controller TOML's ``inventory = "FILE"``


def config_from_args(args: argparse.Namespace) -> FleetConfig:
    data: dict[str, object] = {}
    if args.config:
        try:
            data = tomllib.loads(Path(args.config).read_text())
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"{args.config}: {exc}") from exc
    urls = args.broker or data.get("brokers") or data.get("broker") or "mqtt://127.0.0.1:1883"
    if isinstance(urls, str):
        urls = [urls]
    try:
        brokers = tuple(Broker.parse(str(u)) for u in urls)  # type: ignore[union-attr]
        prefix = check_prefix(args.prefix or str(data.get("prefix", DEFAULT_PREFIX)))
        tls = Tls.model_validate(data.get("tls") or {})
        tls = Tls(ca=args.ca or tls.ca, cert=args.cert or tls.cert, key=args.key or tls.key)
        auth_data = dict(data.get("auth") or {})  # type: ignore[call-overload]
        if args.username:
            auth_data["username"] = args.username
        if args.password_file:
            auth_data["password_file"] = args.password_file
        auth = Auth.model_validate(auth_data) if auth_data else None
    except (ValueError, ValidationError) as exc:
        raise ConfigError(f"broker settings: {exc}") from exc
    inventory = data.get("inventory")
    return FleetConfig(
        inventory=Path(str(inventory)) if inventory else None,
        brokers=brokers,
        prefix=prefix,
        tls=tls,
        auth=auth,
        password=auth.password() if auth else None,
    )


def client_id(kind: str) -> str:
    return f"csboot-{kind}-{socket.gethostname()[:40]}-{os.getpid()}"


def _tls(config: FleetConfig) -> ssl.SSLContext:
    try:
        ctx = ssl.create_default_context(cafile=str(config.tls.ca) if config.tls.ca else None)
        if config.tls.cert and config.tls.key:
            ctx.load_cert_chain(str(config.tls.cert), str(config.tls.key))
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"tls: {exc}") from exc
    return ctx


async def _open(config: FleetConfig, broker: Broker, identifier: str) -> aiomqtt.Client:
    """MQTT 5 first; a broker that refuses the protocol version gets 3.1.1."""
    for protocol in (aiomqtt.ProtocolVersion.V5, aiomqtt.ProtocolVersion.V311):
        properties = None
        if protocol is aiomqtt.ProtocolVersion.V5:
            # the broker drops, rather than sends us, anything larger (MQTT 5 only)
            properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
            properties.MaximumPacketSize = MAX_PACKET
        client = aiomqtt.Client(
            broker.host,
            broker.port,
            properties=properties,
            identifier=identifier,
            protocol=protocol,
            username=config.auth.username if config.auth else None,
            password=config.password,
            tls_context=_tls(config) if broker.tls else None,
            timeout=10,
        )
        try:
            await client.__aenter__()
        except aiomqtt.MqttCodeError as exc:
            if protocol is aiomqtt.ProtocolVersion.V5 and exc.rc in UNSUPPORTED_PROTOCOL:
                continue
            raise
        return client
    raise aiomqtt.MqttError("no protocol version accepted")


@contextlib.asynccontextmanager
async def connect(config: FleetConfig, identifier: str) -> AsyncIterator[aiomqtt.Client]:
    """A connected client on the first broker that answers."""
    errors: list[str] = []
    for broker in config.brokers:
        try:
            client = await _open(config, broker, identifier)
        except aiomqtt.MqttError as exc:
            errors.append(f"{broker.url}: {exc}")
            continue
        try:
            yield client
        finally:
            with contextlib.suppress(aiomqtt.MqttError):
                await client.__aexit__(None, None, None)
        return
    raise ConfigError("no broker reachable: " + "; ".join(errors))
