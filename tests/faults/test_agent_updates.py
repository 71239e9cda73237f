"""Updates are never lost, replays never stall, failures never loop (issue 10, items 2, 6,
7), on a live agent against a real mosquitto."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from bootstrap.model.signing import generate_key, public_key_text
from simulator.broker import Mosquitto, free_port
from tests.faults.conftest import (
    HOST,
    PREFIX,
    AgentProcess,
    Client,
    Publisher,
    recording,
    signed_doc,
)
from tests.faults.payloads import doc
from tests.mqtt.conftest import write_config

pytestmark = pytest.mark.mqtt

ROLE = f"{PREFIX}/roles/kvm/desired"
STATUS = f"{PREFIX}/hosts/{HOST}/status"
PROPS = Path("etc/cloudstack/agent/agent.properties")


def test_a_document_published_during_an_apply_is_applied_right_after_it(
    tmp_path: Path, broker: Mosquitto, client: Client, root: Path, agents: Callable[..., Any]
) -> None:
    """v3's post-apply check waits for libvirt on a port nobody listens on yet (a slow
    converge, for real); v4 comes during it, and the port opens only after v4 was sent."""
    port = free_port()
    agents(write_config(tmp_path / "a.toml", [broker.url], root, checks=["libvirt-listening"]))
    with recording(broker, STATUS, tmp_path / "st.jsonl") as statuses:
        client.publish(ROLE, doc(3, hypervisor="kvm", libvirt={"tcp_port": port}))
        client.wait_status(lambda s: s["state"] == "applying")
        client.publish(ROLE, doc(4, hypervisor="lxc", libvirt={"tcp_port": port}))
        with socket.create_server(("127.0.0.1", port)):  # v3's check passes now
            final = client.wait_status(
                lambda s: s["state"] == "converged" and s["applied"]["roles"] == {"kvm": 4},
                timeout=30,
            )
        seen = [(s["state"], s["applied"]["roles"].get("kvm")) for s in statuses()]
    assert ("converged", 3) in seen, seen  # v3 finished first...
    assert seen.index(("converged", 3)) < seen.index(("converged", 4))  # ...then v4
    assert "hypervisor.type=lxc" in (root / PROPS).read_text()
    assert final["checks"][-1]["ok"]


def test_replay_and_junk_storms_neither_hold_a_valid_document_nor_abort_anything(  # noqa: PLR0917
    tmp_path: Path,
    broker: Mosquitto,
    client: Client,
    root: Path,
    agents: Callable[..., AgentProcess],
    publisher: Publisher,
) -> None:
    """Item 6: an old signed document re-sent every 10 ms (whitespace changed each time),
    then junk every 10 ms; a valid document published during each storm converges within
    the debounce plus a little, and the replays are ``stale``, never ``rejected``."""
    key = generate_key()
    trusted = [f"ops:{public_key_text(key.verify_key)}"]
    config = write_config(
        tmp_path / "a.toml", [broker.url], root, trusted_keys=trusted, debounce=0.3
    )
    agent = agents(config)
    old = json.dumps(signed_doc(doc(1, hypervisor="kvm"), key))
    client.publish(ROLE, signed_doc(doc(2, hypervisor="kvm"), key))
    client.wait_status(lambda s: s["state"] == "converged")

    def storm(payload: Callable[[int], bytes], stop: threading.Event) -> None:
        storm_pub = Publisher(broker)
        i = 0
        try:
            while not stop.is_set():
                storm_pub.batch([(ROLE, payload(i))])
                i += 1
                stop.wait(0.01)
        finally:
            storm_pub.close()

    waits = []
    with recording(broker, STATUS, tmp_path / "st.jsonl") as statuses:
        for version, payload in (
            (3, lambda i: (old + " " * (i % 50)).encode()),  # replays
            (4, lambda i: b'{"apiVersion": ' + str(i).encode()),  # junk
        ):
            stop = threading.Event()
            thread = threading.Thread(target=storm, args=(payload, stop))
            thread.start()
            try:
                client.wait_status(lambda s: s["state"] in {"stale", "rejected"}, timeout=10)
                started = time.monotonic()
                publisher.batch(
                    [(ROLE, json.dumps(signed_doc(doc(version, hypervisor="kvm"), key)).encode())]
                )
                client.wait_status(
                    lambda s, v=version: s["applied"]["roles"] == {"kvm": v}, timeout=10
                )
                waits.append(time.monotonic() - started)
                stop.wait(1.0)  # the storm goes on a second after the apply
            finally:
                stop.set()
                thread.join()
        seen = statuses()
    assert agent.proc.poll() is None
    assert all(w < 0.3 + 3.0 for w in waits), waits  # debounce + an apply on a busy machine
    replay_states = {s["state"] for s in seen if (s["error"] or {}).get("code") == "stale"}
    assert replay_states == {"stale"}, replay_states  # a replay is never "rejected"
    # rate-limited: at most about one refusal status per second of storm, not one per message
    refusals = [s for s in seen if s["state"] in {"stale", "rejected"}]
    assert len(refusals) < 20, len(refusals)
    assert sum(s["error"].get("suppressed", 0) for s in refusals) > 50


def test_a_failed_version_is_not_applied_again_when_only_its_bytes_change(
    tmp_path: Path, broker: Mosquitto, client: Client, root: Path, agents: Callable[..., Any]
) -> None:
    """Item 7: the apply fails for real (the backup path is a directory); re-indented, and
    then with a longer rollout host list, v4 is not tried again; v5 is."""
    agents(write_config(tmp_path / "a.toml", [broker.url], root))
    client.publish(ROLE, doc(3, hypervisor="kvm"))
    client.wait_status(lambda s: s["state"] == "converged")
    blocker = root / (str(PROPS) + ".csboot.bak")
    blocker.unlink(missing_ok=True)
    blocker.mkdir()
    with recording(broker, STATUS, tmp_path / "st.jsonl") as statuses:
        v4 = doc(4, hypervisor="lxc")
        client.publish(ROLE, v4)
        failed = client.wait_status(lambda s: s["state"] in {"rolled_back", "failed"})
        assert failed["applied"]["roles"] == {"kvm": 3}
        client.publish(ROLE, json.dumps(v4, indent=8))
        client.publish(ROLE, {**v4, "rollout": {"id": "r1", "hosts": [HOST, "other.lab"]}})
        blocker.rmdir()
        client.publish(ROLE, doc(5, hypervisor="lxc"))
        client.wait_status(lambda s: s["applied"]["roles"] == {"kvm": 5})
        seen = statuses()
    applying = [s for s in seen if s["state"] == "applying"]
    assert len(applying) == 2, [s["state"] for s in seen]  # v4 once, v5 once
    assert "hypervisor.type=lxc" in (root / PROPS).read_text()
