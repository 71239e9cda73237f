"""The agent through RabbitMQ's MQTT plugin (Debian's ``rabbitmq-server``, 3.10: MQTT
3.1.1 only, and it *closes the connection* on an MQTT 5 CONNECT): with ``protocol =
"auto"`` it falls back to 3.1.1 and converges; pinned to "3.1.1" it converges directly;
its will reaches the other clients when it dies."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.faults.conftest import HOST, PREFIX, AgentProcess, Client, until
from tests.faults.payloads import doc
from tests.faults.rabbitmq import RabbitMQ, available
from tests.mqtt.conftest import write_config

pytestmark = [
    pytest.mark.mqtt,
    pytest.mark.skipif(not available(), reason="rabbitmq-server is not installed"),
]


@pytest.fixture(scope="module")
def rabbit(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RabbitMQ]:
    with RabbitMQ(tmp_path_factory.mktemp("rabbitmq")) as broker:
        yield broker


def test_the_agent_converges_through_rabbitmq_will_included(
    tmp_path: Path, rabbit: RabbitMQ
) -> None:
    ops = Client(rabbit)  # type: ignore[arg-type]  # host/port is all Client uses
    root = tmp_path / "root"
    root.mkdir()
    agent = AgentProcess(write_config(tmp_path / "auto.toml", [rabbit.url], root))
    pinned_root = tmp_path / "pinned"
    pinned_root.mkdir()
    pinned = AgentProcess(
        write_config(
            tmp_path / "pinned.toml",
            [rabbit.url],
            pinned_root,
            host="pinned.lab",
            mqtt={"protocol": "3.1.1"},
        )
    )
    try:
        ops.publish(f"{PREFIX}/roles/kvm/desired", doc(3, hypervisor="kvm"))
        for host, path in ((HOST, root), ("pinned.lab", pinned_root)):
            status = ops.wait_status(lambda s: s["state"] == "converged", host=host, timeout=60)
            assert status["applied"]["roles"] == {"kvm": 3}
            props = path / "etc/cloudstack/agent/agent.properties"
            assert "hypervisor.type=kvm" in props.read_text()
        assert "does not take MQTT 5" in agent.output(), agent.output()[-3000:]
        assert "MQTT 5" not in pinned.output()
        # the will: the broker says offline for a host that died without a word (killed once
        # it reconnected after the apply, so that the will in force names v3)
        until(lambda: agent.output().count("connected to") >= 2, 30, "the will renewal")
        assert agent.kill(signal.SIGKILL) == -signal.SIGKILL
        gone = ops.wait_status(lambda s: s["state"] == "offline", timeout=60)
        assert gone["applied"]["roles"] == {"kvm": 3}
        until(lambda: pinned.proc.poll() is None, 1, "the other agent still running")
    finally:
        agent.kill(signal.SIGTERM)
        pinned.kill(signal.SIGTERM)
