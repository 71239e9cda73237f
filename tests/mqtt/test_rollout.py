"""``csboot rollout`` against 20 real agents (``csboot agent`` processes) on one mosquitto.

One fleet for the module (files-only roots, no network, no firewall); each test starts from
whatever versions the previous left and reads them back, never assumes them. What hosts
did is read from the wire (mosquitto_sub) and from their files.
"""

from __future__ import annotations

import base64
import contextlib
import json
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from bootstrap.model.document import parse_document
from bootstrap.model.signing import generate_key, private_key_bytes, public_key_text, sign
from simulator.broker import Mosquitto, free_port
from simulator.rollout import stop_watch
from tests.mqtt.conftest import CSBOOT, PREFIX, AgentProcess, Client, role_doc, write_config

pytestmark = pytest.mark.mqtt

N = 20
HOSTS = [f"h{i:02d}.lab" for i in range(N)]
ROLE_TOPIC = f"{PREFIX}/roles/kvm/desired"
LIBVIRTD = Path("etc/libvirt/libvirtd.conf")
KEY_ID = "ops-test"


@dataclass
class Fleet:
    broker: Mosquitto
    client: Client
    roots: dict[str, Path]
    agents: list[AgentProcess]
    tmp: Path
    hosts: list[str]

    def statuses(self) -> dict[str, dict[str, Any]]:
        argv = [
            "mosquitto_sub",
            "-h",
            self.broker.host,
            "-p",
            str(self.broker.port),
            "-v",
            "-t",
            f"{PREFIX}/hosts/+/status",
            "--retained-only",
            "-C",
            str(len(self.hosts)),
            "-W",
            "3",
        ]
        out = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False).stdout
        found = {}
        for line in out.splitlines():
            topic, _, payload = line.partition(" ")
            found[topic.split("/")[-2]] = json.loads(payload)
        return found

    def wait_all(self, version: int, timeout: float = 20.0) -> dict[str, dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while True:
            st = self.statuses()
            ok = [
                h
                for h in self.hosts
                if st.get(h, {}).get("state") == "converged"
                and st[h]["applied"]["roles"].get("kvm") == version
            ]
            if len(ok) == len(self.hosts):
                return st
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"not converged at v{version}: {sorted(set(self.hosts) - set(ok))}"
                )
            time.sleep(0.2)

    @contextlib.contextmanager
    def recording_statuses(self) -> Iterator[Callable[[], list[dict[str, Any]]]]:
        """Every status published while the block runs (after the N retained ones)."""
        out = self.tmp / f"statuses-{time.monotonic_ns()}.jsonl"
        with out.open("w") as sink:
            proc = subprocess.Popen(
                [
                    "mosquitto_sub",
                    "-h",
                    self.broker.host,
                    "-p",
                    str(self.broker.port),
                    "-q",
                    "1",
                    "-t",
                    f"{PREFIX}/hosts/+/status",
                ],
                stdout=sink,
                stderr=subprocess.DEVNULL,
            )

        def read() -> list[dict[str, Any]]:
            return [json.loads(line) for line in out.read_text().splitlines() if line.strip()]

        try:
            deadline = time.monotonic() + 10
            while len(read()) < len(
                self.hosts
            ):  # the retained statuses prove the subscription is live
                assert time.monotonic() < deadline, "recorder never subscribed"
                time.sleep(0.05)
            yield read
        finally:
            stop_watch(proc)

    def version(self) -> int:
        doc = self.client.retained(ROLE_TOPIC)
        assert doc is not None
        return int(doc["version"])

    def rollout(self, doc: dict[str, Any], *args: str, beat: float = 0.5) -> subprocess.Popen[str]:
        path = self.tmp / f"doc-{time.monotonic_ns()}.json"
        path.write_text(json.dumps(doc))
        argv = [
            str(CSBOOT),
            "rollout",
            "-f",
            str(path),
            "--role",
            "kvm",
            "--broker",
            self.broker.url,
            "--timeout",
            "15",
            "--heartbeat",
            str(beat),
            "--sign",
            str(self.tmp / "ops.key"),
            "--key-id",
            KEY_ID,
            "--inventory",
            str(self.tmp / "inventory.json"),
            *args,
        ]
        return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def spec(port: int) -> dict[str, Any]:
    return {"hypervisor": "kvm", "libvirt": {"tcp_port": port}}


def port_of(root: Path) -> str:
    return next(
        line for line in (root / LIBVIRTD).read_text().splitlines() if line.startswith("tcp_port")
    )


@contextlib.contextmanager
def start_fleet(
    tmp: Path, hosts: list[str], port: int, *, ready: float = 20.0, **config: Any
) -> Iterator[Fleet]:
    """Agents that trust only documents signed with the test key (``--sign`` below), all
    converged on a first version with ``port``."""
    key = generate_key()
    (tmp / "ops.key").write_bytes(base64.b64encode(private_key_bytes(key)))
    trusted = [f"{KEY_ID}:{public_key_text(key.verify_key)}"]
    roster = {"hosts": {h: {"roles": ["kvm"]} for h in hosts}}  # who is in the rollout
    (tmp / "inventory.json").write_text(json.dumps(roster))
    with Mosquitto(tmp / "broker") as broker:
        client = Client(broker)
        roots, agents = {}, []
        try:
            for host in hosts:
                roots[host] = tmp / host
                roots[host].mkdir()
                path = tmp / f"{host}.toml"
                settings = dict(host=host, debounce=0.1, trusted_keys=trusted, **config)
                agents.append(
                    AgentProcess(write_config(path, [broker.url], roots[host], **settings))
                )
            first = sign(parse_document(role_doc(1, **spec(port))), KEY_ID, key, prefix=PREFIX)
            client.publish(ROLE_TOPIC, first.to_json())
            fleet = Fleet(broker, client, roots, agents, tmp, hosts)
            fleet.wait_all(1, timeout=ready)
            yield fleet
        finally:
            for agent in agents:
                if agent.proc.poll() is None:
                    agent.proc.send_signal(signal.SIGTERM)
            for agent in agents:
                agent.wait(10)


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    # 20 Python processes starting at once on a small, shared machine take a while
    with start_fleet(tmp_path_factory.mktemp("fleet"), HOSTS, 16509, ready=60) as fleet:
        yield fleet


def test_waves_complete_in_order(fleet: Fleet) -> None:
    version = fleet.version() + 1
    with fleet.recording_statuses() as statuses:
        proc = fleet.rollout(role_doc(1, **spec(16600)), "--waves", "1,25%,100%")
        out, _ = proc.communicate(timeout=40)
        assert proc.returncode == 0, out
        time.sleep(0.2)
        seen = statuses()
    final = fleet.wait_all(version, timeout=5)
    assert all(port_of(fleet.roots[h]) == 'tcp_port = "16600"' for h in HOSTS)
    assert "waves [1, 4, 15]" in out

    # the order hosts reached the new version: the canary alone, then 4, then the rest
    reached = []
    for status in seen:
        if status["applied"]["roles"].get("kvm") == version and status["host"] not in reached:
            reached.append(status["host"])
    assert reached[0] == HOSTS[0] and sorted(reached) == HOSTS
    # a later wave republishes the same version: hosts that have it neither reject nor reapply
    assert not [s for s in seen if s["state"] == "rejected"], seen
    started = [s["host"] for s in seen if s["state"] == "applying"]
    assert sorted(started) == HOSTS  # each applied exactly once
    # no host of a later wave started applying before every host of the earlier wave converged
    assert started[0] == HOSTS[0]
    assert set(started[1:5]) == set(HOSTS[1:5]), started
    # the final document has no selector: a host joining the role later takes it too
    doc = fleet.client.retained(ROLE_TOPIC)
    assert doc is not None and doc["version"] == version and "rollout" not in doc
    state = fleet.client.retained(f"{PREFIX}/rollouts/kvm")
    assert state is not None and state["phase"] == "completed" and len(state["done"]) == N
    assert all(final[h]["state"] == "converged" for h in HOSTS)
    assert doc.get("signature", {}).get("keyId") == KEY_ID  # agents trust only signed ones

    # csboot status: the same picture from the retained statuses and the rollout state
    def show(*args: str) -> str:
        argv = [str(CSBOOT), "status", "--broker", fleet.broker.url, *args]
        return subprocess.run(argv, capture_output=True, text=True, check=True).stdout

    view = json.loads(show("--json", "--role", "kvm"))
    assert [r["host"] for r in view["hosts"]] == HOSTS
    assert {r["roles"]["kvm"] for r in view["hosts"]} == {version}
    assert view["rollouts"][0]["phase"] == "completed" and view["rollouts"][0]["done"] == N
    assert json.loads(show("--json", "--role", "lxc")) == {"hosts": [], "rollouts": []}
    table = show()
    assert HOSTS[-1] in table and "converged" in table


def test_failing_canary_aborts_and_restores_it_and_nobody_else_changes(fleet: Fleet) -> None:
    before = fleet.wait_all(fleet.version())
    old_version = fleet.version()
    canary = HOSTS[7]
    mtimes = {h: (fleet.roots[h] / LIBVIRTD).stat().st_mtime_ns for h in HOSTS}
    ports = {h: port_of(fleet.roots[h]) for h in HOSTS}
    libvirt_dir = fleet.roots[canary] / LIBVIRTD.parent
    if subprocess.run(
        ["chattr", "+i", str(libvirt_dir)], capture_output=True, check=False
    ).returncode:
        pytest.skip("chattr +i not possible here (needs root on ext4/xfs)")
    try:
        # the canary cannot write libvirtd.conf any more: the new version fails there for real
        proc = fleet.rollout(role_doc(1, **spec(16700)), "--canary", canary)
        out, _ = proc.communicate(timeout=40)
    finally:
        subprocess.run(["chattr", "-i", str(libvirt_dir)], check=True)
    assert proc.returncode == 1, out
    assert canary in out and "failed" in out.lower()
    assert f"v{old_version + 2}" in out  # the previous spec, published as a newer version

    after = fleet.wait_all(old_version + 2, timeout=10)
    assert after[canary]["state"] == "converged"
    for host in HOSTS:
        # nobody took the new spec: same port, same file (never rewritten)
        assert port_of(fleet.roots[host]) == ports[host]
        assert (fleet.roots[host] / LIBVIRTD).stat().st_mtime_ns == mtimes[host], host
    state = fleet.client.retained(f"{PREFIX}/rollouts/kvm")
    assert state is not None and state["phase"] == "aborted"
    assert list(state["failed"]) == [canary] and list(state["admitted"]) == [canary]
    assert before[canary]["at"] != after[canary]["at"]


def test_killed_controller_resumes_without_reapplying(fleet: Fleet) -> None:
    version = fleet.version() + 1
    fleet.wait_all(version - 1)
    proc = fleet.rollout(
        role_doc(1, **spec(16800)), "--waves", "1,50%,100%", "--max-unavailable", "2", beat=1.0
    )
    watch = subprocess.Popen(
        [
            "mosquitto_sub",
            "-h",
            fleet.broker.host,
            "-p",
            str(fleet.broker.port),
            "-t",
            f"{PREFIX}/rollouts/kvm",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert watch.stdout is not None
    try:
        for line in watch.stdout:
            state = json.loads(line)
            if state["version"] == version and state["wave"] >= 1:
                proc.send_signal(signal.SIGKILL)
                break
    finally:
        stop_watch(watch)
    proc.wait(5)
    time.sleep(0.5)  # let in-flight hosts finish: they count as converged before the restart
    st = fleet.statuses()
    converged = {
        h: st[h]["at"]
        for h in HOSTS
        if st[h]["applied"]["roles"]["kvm"] == version and st[h]["state"] == "converged"
    }
    assert HOSTS[0] in converged and len(converged) < N, converged
    mtimes = {h: (fleet.roots[h] / LIBVIRTD).stat().st_mtime_ns for h in converged}

    # a second controller while the lock's heartbeat is fresh: refused
    locked = fleet.rollout(role_doc(1, **spec(16800)), beat=1.0)
    out, _ = locked.communicate(timeout=20)
    assert locked.returncode == 3, out
    assert "is run by" in out

    time.sleep(3.1)  # > 3 heartbeats of 1 s: the dead controller's lock is stale
    again = fleet.rollout(role_doc(1, **spec(16800)), "--waves", "1,50%,100%", beat=1.0)
    out, _ = again.communicate(timeout=40)
    assert again.returncode == 0, out
    assert "resuming rollout" in out
    final = fleet.wait_all(version, timeout=5)
    for host, at in converged.items():
        assert final[host]["at"] == at, host  # not applied again
        assert (fleet.roots[host] / LIBVIRTD).stat().st_mtime_ns == mtimes[host]
    assert all(port_of(fleet.roots[h]) == 'tcp_port = "16800"' for h in HOSTS)


def test_a_check_failing_after_apply_aborts_though_the_host_converged(tmp_path: Path) -> None:
    """The canary converges, but its libvirt-listening check (which passed before) fails."""
    hosts = ["c0.lab", "c1.lab", "c2.lab"]
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        good = listener.getsockname()[1]
        with start_fleet(tmp_path, hosts, good, checks=["libvirt-listening"]) as fleet:
            before = fleet.statuses()
            assert all(before[h]["checks"][0]["ok"] for h in hosts), before
            proc = fleet.rollout(role_doc(1, **spec(free_port())), "--canary", "c1.lab")
            out, _ = proc.communicate(timeout=40)
            assert proc.returncode == 1, out
            assert "c1.lab: check_failed" in out and "libvirt-listening" in out
            after = fleet.wait_all(3, timeout=10)  # v2 stopped at the canary, v3 = v1's spec
            assert all(after[h]["checks"][0]["ok"] for h in hosts)
            for host in hosts:
                assert port_of(fleet.roots[host]) == f'tcp_port = "{good}"'
            state = fleet.client.retained(f"{PREFIX}/rollouts/kvm")
            assert state is not None and list(state["admitted"]) == ["c1.lab"]
