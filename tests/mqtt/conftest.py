"""Fixtures for agent tests against a real mosquitto, driven with Debian's own clients.

Documents go in with ``mosquitto_pub`` and statuses come out with ``mosquitto_sub``
(clients we did not write), so the tests check the wire contract, not our own client.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from simulator.broker import Mosquitto
from simulator.rollout import stop_watch

REPO = Path(__file__).resolve().parents[2]
CSBOOT = REPO / ".venv" / "bin" / "csboot"
PREFIX = "cloudstack/bootstrap/v1"
HOST = "kvm1.lab.example.org"


def role_doc(version: int, name: str = "kvm", **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "cloudstack-bootstrap/v1",
        "kind": "Role",
        "name": name,
        "version": version,
        "spec": spec or {"hypervisor": "kvm"},
    }


def host_doc(version: int, name: str = HOST, **spec: Any) -> dict[str, Any]:
    return {**role_doc(version, **spec), "kind": "Host", "name": name}


@dataclass
class Client:
    """mosquitto_pub / mosquitto_sub against one broker, with its auth/TLS arguments."""

    broker: Mosquitto
    args: list[str] = field(default_factory=list)
    port: int | None = None

    def _base(self) -> list[str]:
        return ["-h", self.broker.host, "-p", str(self.port or self.broker.port), *self.args]

    def publish(
        self, topic: str, payload: str | bytes | dict[str, Any], retain: bool = True
    ) -> None:
        data = json.dumps(payload) if isinstance(payload, dict) else payload
        data = data.decode() if isinstance(data, bytes) else data
        argv = ["mosquitto_pub", *self._base(), "-q", "1", "-t", topic, "-m", data]
        if retain:
            argv.append("-r")
        subprocess.run(argv, check=True, capture_output=True, timeout=10)

    def retained(self, topic: str) -> dict[str, Any] | None:
        argv = [
            "mosquitto_sub",
            *self._base(),
            "-t",
            topic,
            "--retained-only",
            "-C",
            "1",
            "-W",
            "1",
        ]
        out = subprocess.run(argv, check=False, capture_output=True, text=True, timeout=10)
        if out.returncode != 0 or not out.stdout.strip():
            return None
        loaded: dict[str, Any] = json.loads(out.stdout.splitlines()[0])
        return loaded

    def wait_status(
        self, pred: Callable[[dict[str, Any]], bool], host: str = HOST, timeout: float = 15.0
    ) -> dict[str, Any]:
        topic = f"{PREFIX}/hosts/{host}/status"
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            last = self.retained(topic)
            if last is not None and pred(last):
                return last
            time.sleep(0.1)
        raise AssertionError(f"status never matched; last: {json.dumps(last)}")

    def status(self, host: str = HOST) -> dict[str, Any] | None:
        return self.retained(f"{PREFIX}/hosts/{host}/status")

    @contextlib.contextmanager
    def recording(self, topic: str) -> Iterator[Callable[[], list[dict[str, Any]]]]:
        """Records every message on ``topic`` (e.g. events) while the block runs.

        Starts only once the recorder provably receives: a marker is published until it
        shows up, so nothing the block causes can slip past a late subscription.
        """
        out = self.broker.directory / f"rec-{time.monotonic_ns()}.jsonl"
        with out.open("w") as sink:
            proc = subprocess.Popen(
                ["mosquitto_sub", *self._base(), "-q", "1", "-t", topic],
                stdout=sink,
                stderr=subprocess.DEVNULL,
            )

        def lines() -> list[dict[str, Any]]:
            return [json.loads(line) for line in out.read_text().splitlines() if line.strip()]

        def read() -> list[dict[str, Any]]:
            return [m for m in lines() if m.get("event") != "test-marker"]

        try:
            deadline = time.monotonic() + 10
            while not lines():
                assert time.monotonic() < deadline, "recorder never subscribed"
                self.publish(topic, {"event": "test-marker"}, retain=False)
                time.sleep(0.1)
            yield read
        finally:
            stop_watch(proc)


def write_config(path: Path, brokers: Sequence[str], root: Path, **extra: Any) -> Path:
    """A test agent.toml: fast debounce and reconnects, files-only root."""
    values: dict[str, Any] = {
        "brokers": list(brokers),
        "host": HOST,
        "roles": ["kvm"],
        "root": str(root),
        "rollback_window": 2,
        "debounce": 0.3,
        "keepalive": 5,
    }
    tables = {k: extra.pop(k) for k in ("tls", "auth", "reconnect", "drift", "mqtt") if k in extra}
    values.update(extra)
    tables.setdefault("reconnect", {"initial": 0.2, "max": 1.0})
    lines = [f"{k} = {json.dumps(v)}" for k, v in values.items()]
    for name, table in tables.items():
        lines += [f"[{name}]"] + [f"{k} = {json.dumps(v)}" for k, v in table.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


class AgentProcess:
    """``csboot agent -c CONFIG`` as a real subprocess; stderr kept for failure messages."""

    def __init__(self, config: Path, *extra: str, env: dict[str, str] | None = None) -> None:
        self.log = config.with_suffix(f".{time.monotonic_ns()}.log")
        with self.log.open("wb") as sink:
            self.proc = subprocess.Popen(
                [str(CSBOOT), "agent", "-c", str(config), *extra],
                stdout=subprocess.DEVNULL,
                stderr=sink,
                env={**os.environ, **(env or {})},
            )

    def output(self) -> str:
        return self.log.read_text()

    def kill(self, sig: signal.Signals = signal.SIGKILL) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        return self.proc.wait(10)

    def wait(self, timeout: float = 30.0) -> int:
        return self.proc.wait(timeout)


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Mosquitto]:
    with Mosquitto(tmp_path / "broker") as mosq:
        yield mosq


@pytest.fixture
def client(broker: Mosquitto) -> Client:
    return Client(broker)


@pytest.fixture
def root(tmp_path: Path) -> Path:
    path = tmp_path / "root"
    path.mkdir()
    return path


@pytest.fixture
def agents() -> Iterator[Callable[..., AgentProcess]]:
    started: list[AgentProcess] = []

    def start(config: Path, *extra: str, env: dict[str, str] | None = None) -> AgentProcess:
        agent = AgentProcess(config, *extra, env=env)
        started.append(agent)
        return agent

    yield start
    for agent in started:
        agent.kill(signal.SIGTERM)
