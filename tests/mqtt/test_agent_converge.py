"""The agent converges a host from retained documents published by Debian's mosquitto_pub."""

from __future__ import annotations

import signal
import socket
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from simulator.broker import Mosquitto
from tests.mqtt.conftest import HOST, PREFIX, AgentProcess, Client, host_doc, role_doc, write_config

pytestmark = pytest.mark.mqtt

ROLE_TOPIC = f"{PREFIX}/roles/kvm/desired"
HOST_TOPIC = f"{PREFIX}/hosts/{HOST}/desired"
EVENTS = f"{PREFIX}/hosts/{HOST}/events"
PROPS = Path("etc/cloudstack/agent/agent.properties")


def test_role_document_converges_and_replay_changes_nothing(
    tmp_path: Path,
    broker: Mosquitto,
    client: Client,
    root: Path,
    agents: Callable[..., AgentProcess],
) -> None:
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(tmp_path / "notify.sock"))
    notify.settimeout(10)
    agent = agents(
        write_config(tmp_path / "agent.toml", [broker.url], root),
        env={"NOTIFY_SOCKET": str(tmp_path / "notify.sock")},
    )
    messages = [notify.recv(4096)]
    while b"READY=1" not in messages[-1]:  # sd_notify, as systemd's Type=notify expects
        messages.append(notify.recv(4096))
    assert messages[0] == b"STATUS=starting"
    notify.close()

    client.publish(ROLE_TOPIC, role_doc(3, hypervisor="kvm", cpu={"mode": "host-passthrough"}))
    status = client.wait_status(lambda s: s["state"] == "converged")
    assert status["applied"] == {"roles": {"kvm": 3}, "host": None}
    assert status["host"] == HOST and status["error"] is None
    assert status["agent"]["version"]
    assert any(
        c["resource"] == "file/etc/cloudstack/agent/agent.properties" for c in status["changes"]
    )
    props = (root / PROPS).read_text()
    assert "hypervisor.type=kvm" in props
    assert "guest.cpu.mode=host-passthrough" in props
    mtime = (root / PROPS).stat().st_mtime_ns

    # the same version again (and again): no new apply, no new status
    with client.recording(EVENTS) as events:
        client.publish(ROLE_TOPIC, role_doc(3, hypervisor="kvm", cpu={"mode": "host-passthrough"}))
        client.publish(ROLE_TOPIC, role_doc(3, hypervisor="kvm", cpu={"mode": "host-passthrough"}))
        time.sleep(1.5)
        assert not [e for e in events() if e["event"] in ("received", "applying")]
    again = client.status()
    assert again is not None and again["at"] == status["at"] and again["state"] == "converged"
    assert (root / PROPS).stat().st_mtime_ns == mtime

    # a host overlay merges over the role: lxc wins, and both versions are reported
    with client.recording(EVENTS) as events:
        client.publish(HOST_TOPIC, host_doc(1, hypervisor="lxc"))
        status = client.wait_status(lambda s: s["applied"]["host"] == 1)
        assert status["state"] == "converged"
        assert status["applied"] == {"roles": {"kvm": 3}, "host": 1}
        time.sleep(0.3)
        assert [e["event"] for e in events()].count("applying") == 1
    props = (root / PROPS).read_text()
    assert "hypervisor.type=lxc" in props and "guest.cpu.mode=host-passthrough" in props
    assert agent.proc.poll() is None, agent.output()


def test_overlay_is_never_applied_without_the_roles_the_host_lists(
    tmp_path: Path,
    broker: Mosquitto,
    client: Client,
    root: Path,
    agents: Callable[..., AgentProcess],
) -> None:
    """The host overlay first, its role long after (a broker handing a fleet its retained
    documents): the agent says what it waits for and applies nothing until the role comes.
    The overlay alone is valid here, so applying it would "converge" a host without its role."""
    agent = agents(write_config(tmp_path / "agent.toml", [broker.url], root))
    with client.recording(EVENTS) as events:
        client.publish(HOST_TOPIC, host_doc(1, hypervisor="lxc"))
        waiting = client.wait_status(
            lambda s: any(w.startswith("waiting for roles/kvm") for w in s.get("warnings") or ())
        )
        assert waiting["state"] == "starting", waiting
        assert waiting["applied"] == {"roles": {}, "host": None}
        received = [e for e in events() if e["event"] == "received"]
        assert [e["document"] for e in received] == ["hosts/" + HOST]
        assert not [e for e in events() if e["event"] == "applying"]
    assert not (root / PROPS).exists()

    client.publish(ROLE_TOPIC, role_doc(2, hypervisor="kvm", cpu={"mode": "host-model"}))
    status = client.wait_status(lambda s: s["state"] == "converged")
    assert status["applied"] == {"roles": {"kvm": 2}, "host": 1}
    assert not [w for w in status.get("warnings") or () if w.startswith("waiting")], status
    props = (root / PROPS).read_text()
    assert "hypervisor.type=lxc" in props and "guest.cpu.mode=host-model" in props
    assert agent.proc.poll() is None, agent.output()


def test_sigkill_leaves_offline_will_and_cache_reapplies_without_broker(
    tmp_path: Path,
    broker: Mosquitto,
    client: Client,
    root: Path,
    agents: Callable[..., AgentProcess],
) -> None:
    config = write_config(tmp_path / "agent.toml", [broker.url], root)
    agent = agents(config)
    client.publish(ROLE_TOPIC, role_doc(5, hypervisor="kvm"))
    client.wait_status(lambda s: s["state"] == "converged" and s["applied"]["roles"] == {"kvm": 5})

    assert agent.kill(signal.SIGKILL) == -signal.SIGKILL
    offline = client.wait_status(lambda s: s["state"] == "offline")
    assert offline["applied"]["roles"] == {"kvm": 5}  # the will says what was in force

    # while it is down: the managed file is lost, and so is the broker
    (root / PROPS).unlink()
    broker.stop()
    restarted = agents(config)
    deadline = time.monotonic() + 15
    while not (root / PROPS).exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert (root / PROPS).exists(), restarted.output()
    assert "hypervisor.type=kvm" in (root / PROPS).read_text()
    assert restarted.proc.poll() is None

    # the broker comes back: the agent reports the cached re-apply (no longer offline),
    # v5 in force, and the retained v5 is not applied a second time
    broker.start()
    status = client.wait_status(lambda s: s["state"] == "converged")
    assert status["applied"]["roles"] == {"kvm": 5}
    assert any(c["resource"].endswith("agent.properties") for c in status["changes"])
    time.sleep(1.0)
    assert client.status() == status
    assert "applying roles/kvm" not in restarted.output()
