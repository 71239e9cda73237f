"""A stop never hangs on the broker (issue 10): SIGTERM while the broker is frozen
(SIGSTOP: its socket open, nothing read, nothing acknowledged) ends the agent within its
bounds, exit 0, instead of waiting for the keepalive (here 60 s) or, when paho never gets
to write the DISCONNECT, forever; and the ``offline`` it wrote is not lost: the broker,
thawed, retains it."""

from __future__ import annotations

import asyncio
import json
import signal
import time
from pathlib import Path

import aiomqtt
import pytest

from bootstrap.agent.daemon import STOP_REPORT
from bootstrap.agent.session import DISCONNECT_WAIT, _Client
from simulator.broker import Mosquitto
from tests.faults.conftest import PREFIX, AgentProcess, Client, until
from tests.faults.payloads import doc
from tests.mqtt.conftest import write_config

pytestmark = pytest.mark.mqtt


def test_sigterm_with_the_broker_frozen_ends_in_bounded_time_and_loses_nothing(
    tmp_path: Path, broker: Mosquitto, client: Client, root: Path
) -> None:
    agent = AgentProcess(write_config(tmp_path / "agent.toml", [broker.url], root, keepalive=60))
    assert broker.process is not None
    try:
        client.publish(f"{PREFIX}/roles/kvm/desired", doc(1, hypervisor="kvm"))
        client.wait_status(lambda s: s["state"] == "converged")
        broker.process.send_signal(signal.SIGSTOP)
        started = time.monotonic()
        agent.proc.send_signal(signal.SIGTERM)
        bound = STOP_REPORT + DISCONNECT_WAIT + 5  # both waits, and the interpreter's exit
        assert agent.proc.wait(bound) == 0, agent.output()[-2000:]
        took = time.monotonic() - started
        assert "did not take our offline status" in agent.output(), agent.output()[-2000:]
    finally:
        broker.process.send_signal(signal.SIGCONT)
        agent.kill(signal.SIGKILL)
    status = client.wait_status(lambda s: s["state"] == "offline")
    assert status["applied"]["roles"] == {"kvm": 1}, json.dumps(status)
    print(f"\nSIGTERM with the broker frozen: exit 0 after {took:.1f}s (keepalive 60 s)")


async def test_a_disconnect_paho_cannot_write_is_bounded_and_the_broker_told(
    broker: Mosquitto, client: Client
) -> None:
    """aiomqtt waits for paho's disconnect callback without a limit; when paho believes a
    write registration is pending that the loop never made (what a failed ``add_writer``
    on a closed descriptor leaves behind), the DISCONNECT is never written and a stop
    hung forever. Ours gives up after ``DISCONNECT_WAIT``, closes the socket, and the
    broker, seeing the connection lost, publishes the will."""
    will = aiomqtt.Will("t/stuck", json.dumps({"gone": True}), qos=1, retain=True)
    stuck = _Client(broker.host, broker.port, identifier="stuck", will=will, timeout=5)
    await stuck.__aenter__()
    stuck._client._registered_write = True  # the state a failed registration leaves
    loop = asyncio.get_running_loop()
    started = loop.time()
    await asyncio.wait_for(stuck.__aexit__(None, None, None), DISCONNECT_WAIT + 3)
    assert loop.time() - started >= DISCONNECT_WAIT - 0.5  # it did wait for a clean one first
    gone = await asyncio.to_thread(
        until, lambda: client.retained("t/stuck") == {"gone": True}, 5, "the will"
    )
    assert gone
