"""Broker restarts: the agent reconnects, resubscribes, loses nothing, applies nothing twice.

The agent runs in-process here, so the test can count its applies exactly.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bootstrap.agent.config import load_config
from bootstrap.agent.daemon import Agent
from simulator.broker import Mosquitto
from tests.mqtt.conftest import PREFIX, Client, role_doc, write_config

pytestmark = pytest.mark.mqtt

ROLE_TOPIC = f"{PREFIX}/roles/kvm/desired"
PROPS = Path("etc/cloudstack/agent/agent.properties")


@contextlib.asynccontextmanager
async def running(agent: Agent) -> AsyncIterator[asyncio.Task[int]]:
    task = asyncio.create_task(agent.run())
    try:
        yield task
    finally:
        agent._stop.set()
        await asyncio.wait_for(task, 10)


async def until(pred: object, timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        while not pred():  # type: ignore[operator]  # noqa: ASYNC110 (polls agent state)
            await asyncio.sleep(0.05)


async def test_broker_restart_loses_nothing_and_applies_nothing_twice(
    tmp_path: Path, broker: Mosquitto, client: Client, root: Path
) -> None:
    config = load_config(
        write_config(
            tmp_path / "agent.toml", [broker.url], root, reconnect={"initial": 2.5, "max": 2.5}
        )
    )
    agent = Agent(config)
    async with running(agent) as task:
        await asyncio.to_thread(client.publish, ROLE_TOPIC, role_doc(1, cpu={"mode": "host-model"}))
        status = await asyncio.to_thread(client.wait_status, lambda s: s["state"] == "converged")
        assert status["applied"]["roles"] == {"kvm": 1}
        assert agent.applies == 1
        await until(agent.session.connected.is_set)

        # the broker goes down and comes back (same port, same persistence file)
        await asyncio.to_thread(broker.stop)
        await until(lambda: not agent.session.connected.is_set())
        connects = agent.session.connects
        await asyncio.to_thread(broker.start)
        # published while the agent is still backing off, and NOT retained: only the
        # persistent session (QoS 1, clean start off) can deliver it
        await asyncio.to_thread(
            client.publish, ROLE_TOPIC, role_doc(2, cpu={"mode": "host-passthrough"}), False
        )
        assert agent.session.connects == connects, "reconnected too early for this test"

        status = await asyncio.to_thread(
            client.wait_status, lambda s: s["applied"]["roles"] == {"kvm": 2}
        )
        assert status["state"] == "converged"
        assert "guest.cpu.mode=host-passthrough" in (root / PROPS).read_text()
        assert agent.session.connects > connects
        # the retained v1 came back on resubscribe and was ignored: two applies in all
        await asyncio.sleep(1.0)
        assert agent.applies == 2

        # after the reconnect the subscriptions work for new retained documents too
        await asyncio.to_thread(client.publish, ROLE_TOPIC, role_doc(3, hypervisor="lxc"))
        await asyncio.to_thread(client.wait_status, lambda s: s["applied"]["roles"] == {"kvm": 3})
        assert agent.applies == 3
        assert "hypervisor.type=lxc" in (root / PROPS).read_text()
        assert not task.done()
    # a clean stop says offline itself (no will on a clean disconnect)
    final = client.status()
    assert final is not None and final["state"] == "offline"
    assert final["applied"]["roles"] == {"kvm": 3}


async def test_second_broker_is_used_when_the_first_is_down(
    tmp_path: Path, broker: Mosquitto, client: Client, root: Path
) -> None:
    dead = f"mqtt://127.0.0.1:{broker.port + 1 if broker.port < 65535 else 1}"
    config = load_config(write_config(tmp_path / "agent.toml", [dead, broker.url], root))
    agent = Agent(config)
    async with running(agent):
        await asyncio.to_thread(client.publish, ROLE_TOPIC, role_doc(4))
        status = await asyncio.to_thread(client.wait_status, lambda s: s["state"] == "converged")
        assert status["applied"]["roles"] == {"kvm": 4}
        assert agent.session.broker is not None and agent.session.broker.url == broker.url
