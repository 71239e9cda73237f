"""The debounce waits for what a burst may still bring, and only for that.

A burst that brought every document the host reads (its role's and its overlay: a first
boot, a rollout of both) is applied at once; a role alone still waits out the debounce,
for an overlay that may follow. The agent runs in-process with a debounce far longer than
either wait, so each outcome is unambiguous.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from bootstrap.agent.config import load_config
from bootstrap.agent.daemon import Agent
from simulator.broker import Mosquitto
from tests.mqtt.conftest import HOST, PREFIX, Client, host_doc, role_doc, write_config
from tests.mqtt.test_agent_reconnect import running, until

pytestmark = pytest.mark.mqtt

ROLE_TOPIC = f"{PREFIX}/roles/kvm/desired"
HOST_TOPIC = f"{PREFIX}/hosts/{HOST}/desired"
DEBOUNCE = 30.0


async def test_a_complete_burst_is_applied_without_the_debounce(
    tmp_path: Path, broker: Mosquitto, client: Client, root: Path
) -> None:
    config = load_config(
        write_config(tmp_path / "agent.toml", [broker.url], root, debounce=DEBOUNCE)
    )
    agent = Agent(config)
    async with running(agent):
        await until(agent.session.connected.is_set)
        await asyncio.to_thread(client.publish, ROLE_TOPIC, role_doc(1))
        await asyncio.to_thread(client.publish, HOST_TOPIC, host_doc(1, hypervisor="lxc"))
        # well inside the debounce: the burst held everything the host reads
        status = await asyncio.to_thread(
            client.wait_status, lambda s: s["state"] == "converged", timeout=DEBOUNCE / 3
        )
        assert status["applied"] == {"roles": {"kvm": 1}, "host": 1}
        assert agent.applies == 1

        # the role alone: the overlay could follow, so the debounce holds it
        await asyncio.to_thread(client.publish, ROLE_TOPIC, role_doc(2))
        await until(lambda: "roles/kvm" in agent.desired.pending)
        await asyncio.sleep(1.0)  # an observation window: nothing may happen in it
        assert agent.applies == 1
        assert agent.desired.versions()["roles"] == {"kvm": 1}
