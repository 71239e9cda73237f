"""One live agent against a real mosquitto survives every hostile payload (issue 10, items
1, 8, 11, 12): the reproductions, then 10,000 generated payloads, with the pid unchanged,
no partial apply, and every rejection reported with its field."""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from bootstrap.agent.desired import Desired, Rejection
from bootstrap.model.signing import generate_key, public_key_text
from simulator.broker import Mosquitto
from tests.faults.conftest import (
    HOST,
    PREFIX,
    AgentProcess,
    Client,
    Publisher,
    recording,
    rss_kib,
    signed_doc,
    snapshot,
    until,
)
from tests.faults.payloads import doc, generated, reproductions
from tests.mqtt.conftest import write_config

pytestmark = pytest.mark.mqtt

ROLE = f"{PREFIX}/roles/kvm/desired"
HOST_TOPIC = f"{PREFIX}/hosts/{HOST}/desired"
BATCH = 500
EVENTS = f"{PREFIX}/hosts/{HOST}/events"


def topic_of(key: str) -> str:
    return f"{PREFIX}/{key}/desired"


def test_every_reproduction_is_rejected_with_its_field_and_the_agent_lives(  # noqa: PLR0917
    tmp_path: Path,
    broker: Mosquitto,
    client: Client,
    root: Path,
    agents: Callable[..., AgentProcess],
    publisher: Publisher,
) -> None:
    config = write_config(tmp_path / "agent.toml", [broker.url], root, reject_interval=0.1)
    agent = agents(config)
    client.publish(ROLE, doc(1, hypervisor="kvm"))
    good = client.wait_status(lambda s: s["state"] == "converged")
    # 12: no trusted keys is allowed, but said: in the log and in every status
    assert good["warnings"] == ["trusted_keys is empty: unsigned documents are applied"]
    assert "trusted_keys is empty" in agent.output()
    before, rss_before = snapshot(root), rss_kib(agent.proc.pid)
    last = good["at"]
    with recording(broker, EVENTS, tmp_path / "events.jsonl") as events:
        for name, (key, payload, field) in reproductions(HOST).items():
            publisher.batch([(topic_of(key), payload)], retain=True)  # retained, as in the issue
            status = client.wait_status(lambda s, seen=last: s["at"] != seen, timeout=20)
            last = status["at"]
            assert status["state"] == "rejected", (name, status)
            assert status["error"]["field"] == field, (name, status["error"])
            assert len(json.dumps(status)) < 2048, name  # 8: never the 50 MB echoed
            assert status["applied"]["roles"] == {"kvm": 1}
            assert agent.proc.poll() is None, (name, agent.output()[-2000:])
        rejected = until(
            lambda: [e for e in events() if e["event"] == "rejected"] or None, 10, "events"
        )
        assert all(len(json.dumps(e)) < 2048 for e in events())
    assert snapshot(root) == before  # not one byte, not one mtime
    # 8: the 50 MB payload was refused at intake, never decoded: RSS stays near where it was
    assert rss_kib(agent.proc.pid) < rss_before + 150 * 1024, (rss_before, rss_kib(agent.proc.pid))
    assert all(len(line) < 4096 for line in agent.output().splitlines())
    assert rejected
    # 1: retained, they do not kill the next start either (nor leave a will-less corpse)
    assert agent.kill(signal.SIGTERM) == 0
    again = AgentProcess(config)
    try:
        client.wait_status(lambda s: s["state"] in {"rejected", "converged"} and s["at"] != last)
        client.publish(ROLE, doc(2, hypervisor="lxc"))
        status = client.wait_status(lambda s: s["applied"]["roles"] == {"kvm": 2})
        assert status["state"] == "converged" and again.proc.poll() is None
    finally:
        assert again.kill(signal.SIGTERM) == 0


def test_ten_thousand_generated_payloads_on_one_live_agent(  # noqa: PLR0917
    tmp_path: Path,
    broker: Mosquitto,
    client: Client,
    root: Path,
    agents: Callable[..., AgentProcess],
    publisher: Publisher,
) -> None:
    """Unsigned junk is refused whatever it is (this agent trusts one key); then a signed
    pair of documents, published last on both topics, proves every payload was read."""
    key = generate_key()
    trusted = [f"ops:{public_key_text(key.verify_key)}"]
    config = write_config(
        tmp_path / "agent.toml", [broker.url], root, trusted_keys=trusted, reject_interval=0.2
    )
    agent = agents(config)
    first = json.dumps(signed_doc(doc(1, hypervisor="kvm"), key)).encode()
    publisher.batch([(ROLE, first)], retain=True)
    client.wait_status(lambda s: s["state"] == "converged")
    pid, before = agent.proc.pid, snapshot(root)

    payloads = generated(10_000)
    keys = ["roles/kvm", f"hosts/{HOST}"]
    items = [(topic_of(keys[i % 2]), p) for i, p in enumerate(payloads)]
    # what the agent must conclude, computed by the same bookkeeping on the same sequence
    model = Desired(["kvm"], HOST, {"ops": key.verify_key}, prefix=PREFIX)
    model.offer("roles/kvm", first)
    model.commit(model.candidate())
    verdicts = [model.offer(keys[i % 2], p) for i, p in enumerate(payloads)]
    expected = [v for v in verdicts if isinstance(v, Rejection)]
    assert not [v for v in verdicts if v is not None and not isinstance(v, Rejection)]
    assert all(isinstance(r.field, str) for r in expected)

    final_role = signed_doc(doc(2, hypervisor="lxc"), key)
    final_host = signed_doc(doc(1, name=HOST, kind="Host", cpu={"mode": "host-model"}), key)

    def reported() -> int:
        return sum(1 + e["suppressed"] for e in events() if e["event"] == "rejected")

    with (
        recording(broker, EVENTS, tmp_path / "events.jsonl") as events,
        recording(broker, f"{PREFIX}/hosts/{HOST}/status", tmp_path / "st.jsonl") as statuses,
    ):
        started = time.monotonic()
        # batches of 500: a broker queues at most so many QoS 1 messages per client (mosquitto:
        # max_queued_messages 1000) and drops the rest, so a flood is fed as fast as the agent
        # reads it; each batch ends when the agent has reported all of its rejections
        for at in range(0, len(items), BATCH):
            publisher.batch(items[at : at + BATCH])
            want = sum(isinstance(v, Rejection) for v in verdicts[: at + BATCH])
            until(lambda n=want: reported() >= n, 60, f"the rejections of batch {at // BATCH}")
        handled = time.monotonic() - started
        publisher.batch(
            [(ROLE, json.dumps(final_role).encode()), (HOST_TOPIC, json.dumps(final_host).encode())]
        )
        done = client.wait_status(
            lambda s: s["state"] == "converged" and s["applied"]["host"] == 1, timeout=30
        )
        seen = statuses()
    assert reported() == len(expected)
    assert agent.proc.poll() is None and agent.proc.pid == pid  # 0 crashes
    assert done["applied"]["roles"] == {"kvm": 2}
    # 0 partial applies: exactly one apply, the final pair; nothing changed before it
    applying = [s for s in seen if s["state"] == "applying"]
    assert len(applying) == 1, applying
    assert [s["state"] for s in seen if s["state"] in {"failed", "rolled_back"}] == []
    for status in seen:
        if status["state"] in {"rejected", "stale"}:
            assert isinstance(status["error"]["field"], str)
            assert status["applied"]["roles"] == {"kvm": 1}
    changed = {k for k, v in snapshot(root).items() if before.get(k) != v}
    assert changed and all("agent.properties" in k or "libvirt" in k for k in changed), changed
    print(
        f"\n10,000 payloads ({len(set(payloads))} distinct): all read and reported in "
        f"{handled:.1f}s ({len(payloads) / handled:.0f}/s); "
        f"{len(expected)} rejections in {len([s for s in seen if s['state'] == 'rejected'])} "
        f"statuses; agent RSS {rss_kib(pid) // 1024} MiB"
    )
