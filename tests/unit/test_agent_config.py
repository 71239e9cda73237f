"""agent.toml parsing: every contract key, defaults, and errors that name the key."""

from __future__ import annotations

import socket
import tomllib
from pathlib import Path

import pytest

from bootstrap.agent.config import Broker, dump_config, load_config, parse_config
from bootstrap.errors import ConfigError
from bootstrap.model.signing import generate_key, public_key_text


def key_entry(key_id: str = "ops-2026") -> str:
    return f"{key_id}:{public_key_text(generate_key().verify_key)}"


def test_contract_example_and_defaults(tmp_path: Path) -> None:
    path = tmp_path / "agent.toml"
    path.write_text(
        'broker = "mqtts://127.0.0.1:8883"\nhost = "kvm1.lab.example.org"\nroles = ["kvm"]\n'
        'prefix = "cloudstack/bootstrap/v1"\nroot = "/"\nrollback_window = 30\n'
        'trusted_keys = []\n[tls]\n[auth]\nusername = "kvm1"\n'
    )
    config = load_config(path)
    assert config.brokers == (Broker(host="127.0.0.1", port=8883, tls=True),)
    assert config.roles == ("kvm",) and config.root == Path("/")
    assert config.rollback_window == 30 and config.trusted() == {}
    assert config.enabled_checks == (  # the real root
        "libvirt-listening",
        "time-synchronised",
        "cloudstack-agent",
    )
    assert config.auth is not None and config.auth.password() is None
    default = parse_config({"broker": "mqtts://broker.lab", "root": str(tmp_path)})
    assert default.brokers[0] == Broker(host="broker.lab", port=8883, tls=True)
    assert default.host == socket.getfqdn().lower()
    assert default.prefix == "cloudstack/bootstrap/v1"
    assert default.enabled_checks == ()  # a simulated root has no libvirtd
    assert default.drift.heal is False and default.debounce == 0.5
    assert default.mqtt.protocol == "auto" and default.max_payload == 1024 * 1024
    assert default.warnings() == ["trusted_keys is empty: unsigned documents are applied"]


def test_several_brokers_and_trusted_keys() -> None:
    entry = key_entry()
    config = parse_config(
        {"brokers": ["mqtt://a:1", "mqtts://[fd00::1]:8884"], "trusted_keys": [entry], "host": "h1"}
    )
    assert [b.url for b in config.brokers] == ["mqtt://a:1", "mqtts://[fd00::1]:8884"]
    assert list(config.trusted()) == ["ops-2026"]


def test_round_trip_through_toml(tmp_path: Path) -> None:
    config = parse_config(
        {
            "brokers": ["mqtts://a:8883", "mqtts://b:8883"],
            "host": "kvm2",
            "roles": ["kvm", "base"],
            "root": str(tmp_path),
            "trusted_keys": [key_entry("k1")],
            "tls": {"ca": "/etc/ca.pem", "cert": "/etc/c.pem", "key": "/etc/k.pem"},
            "auth": {"username": "kvm2", "password_file": "/etc/pw"},
            "drift": {"interval": 60, "heal": True},
            "checks": ["libvirt-listening"],
            "mqtt": {"protocol": "3.1.1"},
            "max_payload": 65536,
        }
    )
    text = dump_config(config)
    tomllib.loads(text)
    path = tmp_path / "agent.toml"
    path.write_text(text)
    assert load_config(path) == config


@pytest.mark.parametrize(
    ("data", "key"),
    [
        ({}, "broker"),
        ({"broker": "http://x"}, "broker"),
        ({"broker": "mqtt://x", "brokers": ["mqtt://y"]}, "broker"),
        ({"brokers": [1]}, "brokers"),
        ({"broker": "mqtt://x", "host": "Bad_Host"}, "host"),
        ({"broker": "mqtt://x", "roles": ["kvm", "a/b"]}, "roles"),
        ({"broker": "mqtt://x", "prefix": "a/#"}, "prefix"),
        ({"broker": "mqtt://x", "rollback_window": 0}, "rollback_window"),
        ({"broker": "mqtt://x", "trusted_keys": ["nokeyid"]}, "trusted_keys"),
        ({"broker": "mqtt://x", "trusted_keys": ["k:bm90IGEga2V5"]}, "trusted_keys"),
        ({"broker": "mqtts://x", "tls": {"cert": "/c"}}, "tls"),
        ({"broker": "mqtt://x", "tls": {"ca": "/ca.pem"}}, "tls"),
        ({"brokers": ["mqtts://x", "mqtt://y"], "tls": {}}, "tls"),
        ({"broker": "mqtt://x", "auth": {"username": "u"}}, "auth"),
        ({"broker": "mqtt://x", "trusted_keys": [key_entry("a"), key_entry("a")]}, "trusted_keys"),
        ({"broker": "mqtt://x", "mqtt": {"protocol": "4"}}, "mqtt.protocol"),
        ({"broker": "mqtt://x", "max_payload": 10}, "max_payload"),
        ({"broker": "mqtt://x", "auth": {"password_file": "/p"}}, "auth.username"),
        ({"broker": "mqtt://x", "drift": {"interval": -1}}, "drift.interval"),
        ({"broker": "mqtt://x", "checks": ["nonsense"]}, "checks"),
        ({"broker": "mqtt://x", "surprise": 1}, "surprise"),
    ],
)
def test_bad_config_names_the_key(data: dict[str, object], key: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(data)
    assert info.value.message.startswith(key), info.value.message


def test_unreadable_or_not_toml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "missing.toml")
    (tmp_path / "bad.toml").write_text("broker = \n")
    with pytest.raises(ConfigError, match="not TOML"):
        load_config(tmp_path / "bad.toml")


def test_plaintext_auth_only_when_allowed_and_then_loudly() -> None:
    data = {"broker": "mqtt://x", "host": "h1", "auth": {"username": "kvm1"}}
    with pytest.raises(ConfigError, match="in clear"):
        parse_config(data)
    config = parse_config({**data, "allow_plaintext_auth": True, "trusted_keys": [key_entry()]})
    assert config.warnings() == ["allow_plaintext_auth: the MQTT password is sent in clear"]
    assert parse_config({**data, "broker": "mqtts://x"}).auth is not None  # TLS: fine


def test_a_bad_trusted_key_names_the_key_and_the_field_once() -> None:
    identity = "AQ" + "A" * 41 + "="  # base64 of 1 then 31 zero bytes: a point of small order
    with pytest.raises(ConfigError) as info:
        parse_config({"broker": "mqtt://x", "trusted_keys": [f"ops:{identity}"]})
    message = info.value.message
    assert message.startswith("trusted_keys: key 'ops': not an Ed25519 public key"), message
    assert message.count("trusted_keys") == 1, message
