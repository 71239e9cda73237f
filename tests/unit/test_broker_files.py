"""``csboot broker-acl`` output as files: modes a stock mosquitto can read, listeners that
bind client ids to user names, no client-id patterns in the ACL."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from bootstrap.errors import ConfigError
from bootstrap.fleet.acl import Listener, acl_text, auth_conf, parse_inventory, write_broker_files

INV = parse_inventory(
    {"hosts": {"kvm1": {"roles": ["kvm"], "password": "p"}, "kvm2": {}}, "operators": ["ops"]}
)


def test_listeners_parse_and_each_binds_client_ids_to_user_names(tmp_path: Path) -> None:
    assert Listener.parse("1883") == Listener(1883)
    assert Listener.parse("127.0.0.1:8883") == Listener(8883, "127.0.0.1")
    assert Listener.parse("[::1]:1883") == Listener(1883, "::1")
    for bad in ("0", "70000", "host:", "x"):
        with pytest.raises(ConfigError):
            Listener.parse(bad)
    tls = Listener(8883, cafile=Path("ca"), certfile=Path("c"), keyfile=Path("k"))
    text = auth_conf(tmp_path, [Listener(1883, "127.0.0.1"), tls])
    blocks = text.split("\n\n")[1:]
    assert blocks[0].splitlines() == ["listener 1883 127.0.0.1", "use_username_as_clientid true"]
    assert blocks[1].startswith("listener 8883\ncafile ") and blocks[1].endswith(
        "use_username_as_clientid true\n"
    )
    # before the first listener nothing listener-specific (mosquitto would open port 1883)
    head = [line for line in text.split("\n\n")[0].splitlines() if not line.startswith("#")]
    assert head and not [line for line in head if "use_username_as_clientid" in line]
    assert "%c" not in acl_text(INV) and "pattern" not in acl_text(INV)


def test_without_a_group_the_files_are_owner_only(tmp_path: Path) -> None:
    passwords = write_broker_files(INV, tmp_path / "out", group=None)
    assert passwords["kvm1"] == "p" and passwords["kvm2"]
    for name in ("passwd", "acl"):
        assert (tmp_path / "out" / name).stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "out" / "passwords").stat().st_mode & 0o777 == 0o700
    assert (tmp_path / "out" / "passwords" / "kvm2").stat().st_mode & 0o777 == 0o600
    assert "listener 1883\nuse_username_as_clientid true" in (
        (tmp_path / "out" / "mosquitto-auth.conf").read_text()
    )


def test_a_missing_group_is_an_error_naming_it(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no-such-group-x"):
        write_broker_files(INV, tmp_path / "out", group="no-such-group-x")
    assert not (tmp_path / "out").exists() or not os.listdir(tmp_path / "out")
