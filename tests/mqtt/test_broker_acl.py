"""``csboot broker-acl`` files loaded by a real mosquitto: hosts reach only their topics.

An operator subscribed to everything is the witness: a publication the ACL denies never
arrives. With MQTT 5 mosquitto also answers a denied QoS 1 publish with PUBACK 0x87.
"""

from __future__ import annotations

import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
import yaml
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.reasoncodes import ReasonCode

from simulator.broker import Mosquitto
from tests.mqtt.conftest import CSBOOT, PREFIX

pytestmark = pytest.mark.mqtt

NOT_AUTHORIZED = 0x87


class WithOurFiles(Mosquitto):
    """A Mosquitto that loads the passwd and acl ``csboot broker-acl`` wrote, unchanged."""

    def __init__(self, directory: Path, files: Path) -> None:
        super().__init__(directory, users={"placeholder": "x"}, acl="")
        self.files = files

    def _write_files(self) -> None:
        super()._write_files()
        shutil.copy(self.files / "passwd", self.directory / "passwd")
        shutil.copy(self.files / "acl", self.directory / "acl")


class Peer:
    """A paho MQTT 5 client that records messages and PUBACK/SUBACK reason codes."""

    def __init__(self, broker: Mosquitto, user: str | None, password: str | None) -> None:
        self.messages: list[tuple[str, bytes | bytearray]] = []
        self.acks: dict[int, int] = {}
        self.granted: list[int] = []
        self.connected = threading.Event()
        self.rc: int | None = None
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        if user:
            self.client.username_pw_set(user, password)
        self.client.on_connect = self._on_connect
        self.client.on_message = lambda _c, _u, m: self.messages.append((m.topic, m.payload))
        self.client.on_publish = self._on_publish
        self.client.on_subscribe = self._on_subscribe
        self.client.connect(broker.host, broker.port)
        self.client.loop_start()
        self.connected.wait(5)

    def _on_connect(self, _c: Any, _u: Any, _f: Any, rc: ReasonCode, _p: Any) -> None:
        self.rc = rc.value
        self.connected.set()

    def _on_publish(self, _c: Any, _u: Any, mid: int, rc: ReasonCode, _p: Any) -> None:
        self.acks[mid] = rc.value

    def _on_subscribe(self, _c: Any, _u: Any, _mid: int, rcs: list[ReasonCode], _p: Any) -> None:
        self.granted += [rc.value for rc in rcs]

    def publish(self, topic: str, payload: bytes, retain: bool = False) -> int:
        info = self.client.publish(topic, payload, qos=1, retain=retain)
        deadline = time.monotonic() + 5
        while info.mid not in self.acks and time.monotonic() < deadline:
            time.sleep(0.02)
        return self.acks[info.mid]

    def subscribe(self, topic: str) -> int:
        count = len(self.granted)
        self.client.subscribe(topic, qos=1)
        deadline = time.monotonic() + 5
        while len(self.granted) == count and time.monotonic() < deadline:
            time.sleep(0.02)
        return self.granted[-1]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def files(tmp_path: Path) -> Path:
    inventory = {
        "hosts": {
            "kvm1.lab": {"roles": ["kvm"], "password": "kvm1-secret"},
            "kvm2.lab": {"roles": ["kvm"]},  # password generated
            "lxc1.lab": {"roles": ["lxc"], "password": "lxc1-secret"},
        },
        "operators": {"ops": {"password": "ops-secret"}},
    }
    (tmp_path / "inventory.yaml").write_text(yaml.safe_dump(inventory))
    out = tmp_path / "broker-files"
    subprocess.run(
        [
            str(CSBOOT),
            "broker-acl",
            "--inventory",
            str(tmp_path / "inventory.yaml"),
            "--out",
            str(out),
        ],
        check=True,
        capture_output=True,
    )
    return out


@pytest.fixture
def broker(tmp_path: Path, files: Path) -> Iterator[Mosquitto]:
    with WithOurFiles(tmp_path / "broker", files) as mosq:
        yield mosq


def test_hosts_reach_only_their_own_topics(broker: Mosquitto, files: Path) -> None:
    peers: list[Peer] = []
    try:
        ops = Peer(broker, "ops", "ops-secret")
        peers.append(ops)
        assert ops.rc == 0 and ops.subscribe(f"{PREFIX}/#") in (0, 1)
        assert ops.publish(f"{PREFIX}/roles/kvm/desired", b'{"v": 1}', retain=True) == 0

        kvm1 = Peer(broker, "kvm1.lab", "kvm1-secret")
        peers.append(kvm1)
        assert kvm1.rc == 0
        # what kvm1 may do: read its role's document, write its own status and events
        assert kvm1.subscribe(f"{PREFIX}/roles/kvm/desired") in (0, 1)
        assert kvm1.publish(f"{PREFIX}/hosts/kvm1.lab/status", b"own-status") == 0
        assert kvm1.publish(f"{PREFIX}/hosts/kvm1.lab/events", b"own-event") == 0
        # what it may not: another host's status, any desired document
        denied = [
            f"{PREFIX}/hosts/kvm2.lab/status",
            f"{PREFIX}/roles/kvm/desired",
            f"{PREFIX}/hosts/kvm1.lab/desired",
            f"{PREFIX}/rollouts/kvm",
        ]
        for topic in denied:
            assert kvm1.publish(topic, b"forged", retain=True) == NOT_AUTHORIZED, topic
        # another role's document or another host's overlay never reaches kvm1 (mosquitto
        # 2.0 grants the subscription but filters every delivery through the ACL)
        for topic in (f"{PREFIX}/roles/lxc/desired", f"{PREFIX}/hosts/kvm2.lab/desired"):
            kvm1.subscribe(topic)
            assert ops.publish(topic, b"not-for-kvm1", retain=True) == 0

        time.sleep(0.5)
        got = dict(ops.messages)
        assert got[f"{PREFIX}/hosts/kvm1.lab/status"] == b"own-status"
        assert got[f"{PREFIX}/hosts/kvm1.lab/events"] == b"own-event"
        assert b"forged" not in got.values()
        assert (f"{PREFIX}/roles/kvm/desired", b'{"v": 1}') in kvm1.messages
        assert b"not-for-kvm1" not in [payload for _t, payload in kvm1.messages]
        assert got[f"{PREFIX}/roles/lxc/desired"] == b"not-for-kvm1"  # it was published

        # the generated password works; a wrong one and anonymous clients are refused
        generated = (files / "passwords" / "kvm2.lab").read_text().strip()
        kvm2 = Peer(broker, "kvm2.lab", generated)
        peers.append(kvm2)
        assert kvm2.rc == 0
        wrong = Peer(broker, "lxc1.lab", "not-the-password")
        peers.append(wrong)
        anonymous = Peer(broker, None, None)
        peers.append(anonymous)
        assert wrong.rc not in (None, 0) and anonymous.rc not in (None, 0)
        assert (files / "passwords" / "kvm2.lab").stat().st_mode & 0o077 == 0
        assert not (files / "passwords" / "kvm1.lab").exists()
    finally:
        for peer in peers:
            peer.close()
