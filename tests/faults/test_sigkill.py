"""20 agents SIGKILLed at random points of an apply, several rounds: no host is ever left
half-configured (issue 10). Each agent has its own ``--root`` (file-only specs). An apply
runs in the agent's worker (issue 11), so a round kills either both, as an OOM kill of
the unit would, after which the journal reverts the interrupted apply (``recover_host``,
what the agent and ``csboot recover`` run first at start); or the agent alone, after
which its worker reverts (or finishes) on its own before it exits. Then the restarted
agent converges."""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from bootstrap.converge import recover_host
from bootstrap.host.root import HostRoot
from simulator.broker import Mosquitto
from tests.faults.conftest import PREFIX, AgentProcess, Client, until
from tests.faults.payloads import doc
from tests.mqtt.conftest import CSBOOT, write_config

pytestmark = pytest.mark.mqtt

N = 20
ROUNDS = 3
ROLE = f"{PREFIX}/roles/kvm/desired"
SPECS = (
    {"hypervisor": "kvm", "libvirt": {"tcp_port": 16509}, "cpu": {"mode": "host-model"}},
    {
        "hypervisor": "lxc",
        "libvirt": {"tcp_port": 16600, "vnc_listen": "127.0.0.1"},
        "cpu": {"mode": "host-passthrough"},
    },
)


def litter(path: Path) -> bool:
    """A ``.NAME.XXXXXXXX`` temporary of an atomic write that a SIGKILL interrupted: never
    read by anything (the real file is renamed over whole), so not configuration."""
    return path.name.startswith(".")


def contents(root: Path) -> dict[str, bytes]:
    """The managed files' contents (not our state dir, not the backups)."""
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file()
        and "var/lib" not in str(p)
        and not p.name.endswith(".csboot.bak")
        and not litter(p)
    }


def csboot(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(CSBOOT), *args], capture_output=True, text=True, check=False)


def references(tmp: Path) -> list[dict[str, bytes]]:
    """What a host holds after each spec, by ``csboot apply`` on a scratch root."""
    out = []
    for i, spec in enumerate(SPECS):
        path = tmp / f"ref-{i}.json"
        path.write_text(json.dumps(doc(i + 1, **spec)))
        assert csboot("apply", "-f", str(path), "--root", str(tmp / "ref")).returncode == 0
        out.append(contents(tmp / "ref"))
    assert out[0] != out[1]
    return out


class Host:
    def __init__(self, tmp: Path, broker: Mosquitto, i: int) -> None:
        self.name = f"k{i:02d}.lab"
        self.root = tmp / self.name
        self.root.mkdir()
        self.config = write_config(
            tmp / f"{self.name}.toml", [broker.url], self.root, host=self.name, debounce=0.05
        )
        self.journal = self.root / "var/lib/cloudstack-bootstrap/journal.json"
        self.agent = AgentProcess(self.config)

    def kill_during_apply(
        self, rng: random.Random, started: threading.Event, *, worker_too: bool
    ) -> bool:
        """SIGKILL at a random point of the next apply, to the agent and its worker or to
        the agent alone; True if the journal was open at the kill. Returns once the
        killed processes, and an outliving worker, are gone."""
        deadline = time.monotonic() + 30
        started.wait(30)
        while not self.journal.exists() and time.monotonic() < deadline:
            time.sleep(0.0005)
        time.sleep(rng.uniform(0, 0.04))
        pid = self.agent.proc.pid
        workers = [int(w) for w in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
        if worker_too:
            for worker in workers:
                os.kill(worker, signal.SIGKILL)
        self.agent.proc.send_signal(signal.SIGKILL)
        self.agent.proc.wait(10)
        left = self.journal.exists()
        until(lambda: not any(map(alive, workers)), 60, "the worker's end")
        return left


@pytest.fixture
def fleet(tmp_path: Path, broker: Mosquitto) -> Iterator[list[Host]]:
    hosts = [Host(tmp_path, broker, i) for i in range(N)]
    yield hosts
    for host in hosts:
        host.agent.kill(signal.SIGTERM)


def alive(pid: int) -> bool:
    """Neither gone nor a zombie (its parent, the killed agent, never reaped it)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def versions(client: Client, hosts: list[Host]) -> dict[str, Any]:
    return {
        h.name: ((s := client.status(h.name)) or {}).get("state") == "converged"
        and s["applied"]["roles"].get("kvm")
        for h in hosts
    }


def test_sigkill_at_random_points_of_an_apply_leaves_no_half_configured_host(
    tmp_path: Path, broker: Mosquitto, client: Client, fleet: list[Host]
) -> None:
    refs = references(tmp_path)
    rng = random.Random(10)
    client.publish(ROLE, doc(1, **SPECS[0]))
    until(lambda: set(versions(client, fleet).values()) == {1}, 60, "v1 everywhere")
    interrupted = whole_before_recovery = 0
    for round_ in range(ROUNDS):
        version = round_ + 2
        new, old = refs[(version - 1) % 2], refs[version % 2]
        worker_too = round_ != 1
        started = threading.Event()
        with ThreadPoolExecutor(N) as pool:
            kills = [
                pool.submit(h.kill_during_apply, rng, started, worker_too=worker_too) for h in fleet
            ]
            client.publish(ROLE, doc(version, **SPECS[(version - 1) % 2]))
            started.set()
            left = [k.result() for k in kills]
        interrupted += sum(left)

        def recover(
            host: Host,
            journal_left: bool,
            *,
            old: Any = old,
            new: Any = new,
            round_: int = round_,
            worker_too: bool = worker_too,
        ) -> str:
            nonlocal whole_before_recovery
            if contents(host.root) in (old, new):
                whole_before_recovery += 1
            reverted = asyncio.run(recover_host(HostRoot(host.root)))  # what start-up runs
            # an outliving worker reverted (or finished) its apply itself
            assert bool(reverted) == (journal_left and worker_too)
            after = contents(host.root)
            # 0 half-configured hosts: every file of the old spec, or every file of the new
            assert after in (old, new), (host.name, round_)
            return "new" if after == new else "old"

        ends = list(map(recover, fleet, left))
        for host in fleet:
            host.agent = AgentProcess(host.config)
        until(lambda v=version: set(versions(client, fleet).values()) == {v}, 90, f"v{version}")
        assert all(contents(h.root) == new for h in fleet)
        assert not any(h.journal.exists() for h in fleet)
        print(
            f"\nround {round_ + 1}, {'agent and worker' if worker_too else 'agent alone'}: "
            f"{sum(left)} of {N} killed mid-apply; after recovery "
            f"{ends.count('old')} whole old, {ends.count('new')} whole new"
        )
    assert interrupted >= N // 2, f"only {interrupted} kills landed mid-apply"
    print(
        f"{ROUNDS * N} kills, {interrupted} mid-apply, "
        f"{ROUNDS * N - whole_before_recovery} hosts half-configured before recovery, 0 after"
    )
