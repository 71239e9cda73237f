"""Fault tests reuse the MQTT fixtures: a real mosquitto per test, real ``csboot agent``
processes, Debian's mosquitto clients; plus a paho publisher for batches (thousands of
QoS 1 messages in seconds, which one ``mosquitto_pub`` process per message cannot do)."""

from __future__ import annotations

import contextlib
import json
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest

from simulator.broker import Mosquitto

# the fixtures of tests/mqtt (a real mosquitto, agents, ...) and tests/netns (per-namespace
# OVS daemons), re-exported rather than copied
from tests.mqtt.conftest import HOST, PREFIX, AgentProcess, Client, agents, broker, client, root
from tests.netns.conftest import ovs_daemons

__all__ = ["agents", "broker", "client", "ovs_daemons", "root"]


class Publisher:
    """One paho connection (MQTT 3.1.1, QoS 1) that publishes batches and waits for every
    PUBACK."""

    def __init__(self, broker: Mosquitto) -> None:
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv311)
        self.client.max_inflight_messages_set(100)
        self.client.max_queued_messages_set(0)
        self.client.connect(broker.host, broker.port)
        self.client.loop_start()

    def batch(self, items: Sequence[tuple[str, bytes]], *, retain: bool = False) -> None:
        infos = [self.client.publish(t, p, qos=1, retain=retain) for t, p in items]
        for info in infos:
            info.wait_for_publish(30)
            assert info.is_published()

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def publisher(broker: Mosquitto) -> Iterator[Publisher]:
    pub = Publisher(broker)
    yield pub
    pub.close()


@contextlib.contextmanager
def recording(broker: Mosquitto, topic: str, out: Path) -> Iterator[Callable[[], list[Any]]]:
    """Every message on ``topic`` while the block runs (mosquitto_sub, one JSON per line);
    starts once the subscription provably receives (a marker published until it shows)."""
    with out.open("w") as sink:
        proc = subprocess.Popen(
            ["mosquitto_sub", "-h", broker.host, "-p", str(broker.port), "-q", "1", "-t", topic],
            stdout=sink,
            stderr=subprocess.DEVNULL,
        )

    def lines() -> list[Any]:
        return [json.loads(line) for line in out.read_text().splitlines() if line.strip()]

    def read() -> list[Any]:
        return [m for m in lines() if not (isinstance(m, dict) and m.get("marker"))]

    try:
        deadline = time.monotonic() + 10
        while not lines():
            assert time.monotonic() < deadline, "recorder never subscribed"
            marker = ["-t", topic, "-m", '{"marker": true}']
            subprocess.run(
                ["mosquitto_pub", "-h", broker.host, "-p", str(broker.port), *marker], check=True
            )
            time.sleep(0.05)
        yield read
    finally:
        proc.terminate()
        proc.wait(5)


def until(pred: Callable[[], Any], timeout: float, what: str) -> Any:
    """Poll ``pred`` until it returns something truthy (a condition, not a fixed sleep)."""
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(0.05)


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def snapshot(root: Path) -> dict[str, tuple[bytes, int]]:
    """Every managed file with its mtime (the agent's own state dir left out)."""
    return {
        str(p.relative_to(root)): (p.read_bytes(), p.stat().st_mtime_ns)
        for p in sorted(root.rglob("*"))
        if p.is_file() and "var/lib" not in str(p)
    }


def signed_doc(doc: dict[str, Any], key: Any, key_id: str = "ops") -> dict[str, Any]:
    from bootstrap.model.document import parse_document
    from bootstrap.model.signing import sign

    return sign(parse_document(doc), key_id, key, prefix=PREFIX).to_json()


__all__ = ["HOST", "PREFIX", "AgentProcess", "Client", "Publisher", "recording", "until"]
