"""Soak: N real agents on one mosquitto, a new role version every few seconds for a while.

Passes when nothing is lost and memory stays flat: every agent is alive at the end, every
host converges on the last version (status and files), no apply failed, and the agents'
resident memory at the end is within 10 % (+ 4 MiB) of where it was after the warm-up.
Prints a table. Not in CI (``make soak``: 100 agents, 10 minutes).

Usage: ``.venv/bin/python bench/soak.py [--agents 100] [--minutes 10] [--every 3]``
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt

from simulator.broker import Mosquitto

REPO = Path(__file__).resolve().parent.parent
CSBOOT = REPO / ".venv" / "bin" / "csboot"
PREFIX = "cloudstack/bootstrap/v1"
ROLE = f"{PREFIX}/roles/kvm/desired"


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def role(version: int) -> bytes:
    spec = {
        "hypervisor": "kvm",
        "libvirt": {"tcp_port": 16509 + version % 100},
        "agent": {"properties": {"soak.version": str(version)}},
    }
    doc = {"apiVersion": "cloudstack-bootstrap/v1", "kind": "Role", "name": "kvm"}
    return json.dumps({**doc, "version": version, "spec": spec}).encode()


class Watcher:
    """Every status of every host, as they are published."""

    def __init__(self, broker: Mosquitto) -> None:
        self.latest: dict[str, dict[str, Any]] = {}
        self.states: Counter[str] = Counter()
        self.lock = threading.Lock()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv311)
        self.client.on_message = self._message
        self.client.connect(broker.host, broker.port)
        self.client.subscribe(f"{PREFIX}/hosts/+/status", qos=1)
        self.client.loop_start()

    def _message(self, _c: Any, _u: Any, message: mqtt.MQTTMessage) -> None:
        status = json.loads(message.payload)
        with self.lock:
            self.latest[status["host"]] = status
            self.states[status["state"]] += 1

    def converged(self, version: int) -> list[str]:
        """Hosts whose last status is converged at ``version`` or later."""
        with self.lock:
            return [
                h
                for h, s in self.latest.items()
                if s["state"] == "converged" and (s["applied"]["roles"].get("kvm") or 0) >= version
            ]

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def start_agents(tmp: Path, broker: Mosquitto, n: int) -> dict[str, subprocess.Popen[bytes]]:
    agents = {}
    for i in range(n):
        host = f"soak{i:03d}.lab"
        root = tmp / host
        root.mkdir()
        config = tmp / f"{host}.toml"
        config.write_text(
            f'broker = "{broker.url}"\nhost = "{host}"\nroles = ["kvm"]\nroot = "{root}"\n'
            "debounce = 0.3\n[reconnect]\ninitial = 0.5\nmax = 5.0\n"
        )
        with (tmp / f"{host}.log").open("wb") as log:
            agents[host] = subprocess.Popen(
                [str(CSBOOT), "agent", "-c", str(config)], stderr=log, stdout=subprocess.DEVNULL
            )
    return agents


def stop(agents: dict[str, subprocess.Popen[bytes]]) -> None:
    """SIGTERM all; on a small machine 100 Python processes need a while to wind down."""
    for proc in agents.values():
        proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + 180
    for host, proc in agents.items():
        try:
            proc.wait(max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            print(f"soak: {host} did not stop on SIGTERM; killed")
            proc.kill()
            proc.wait()


def soak(n: int, minutes: float, every: float) -> int:
    with tempfile.TemporaryDirectory(prefix="csboot-soak-") as tmpdir:
        tmp = Path(tmpdir)
        with Mosquitto(tmp / "broker") as broker:
            watcher = Watcher(broker)
            agents = start_agents(tmp, broker, n)
            pub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv311)
            pub.connect(broker.host, broker.port)
            pub.loop_start()
            try:
                return run(tmp, agents, watcher, pub, minutes=minutes, every=every)
            finally:
                pub.loop_stop()
                pub.disconnect()
                watcher.close()
                stop(agents)


def run(
    tmp: Path,
    agents: dict[str, subprocess.Popen[bytes]],
    watcher: Watcher,
    pub: mqtt.Client,
    *,
    minutes: float,
    every: float,
) -> int:
    n = len(agents)
    version = 1
    pub.publish(ROLE, role(version), qos=1, retain=True).wait_for_publish(10)
    deadline = time.monotonic() + 600  # 100 Python processes start slowly on 2 cores
    while len(watcher.converged(version)) < n:
        if time.monotonic() > deadline:
            late = sorted(set(agents) - set(watcher.converged(version)))
            print(f"soak: only {n - len(late)}/{n} agents started; late: {late[:5]}")
            for host in late[:2]:
                print((tmp / f"{host}.log").read_text()[-2000:])
            return 1
        time.sleep(0.5)
    warm = {h: rss_kib(p.pid) for h, p in agents.items()}
    print(f"{n} agents converged on v1; RSS {sum(warm.values()) // 1024} MiB in all")
    print(f"{'minute':>6} {'version':>7} {'caught up':>9} {'RSS MiB (all)':>13} {'max':>5}")
    started = time.monotonic()
    end = started + minutes * 60
    next_row = started + 60
    while time.monotonic() < end:
        version += 1
        pub.publish(ROLE, role(version), qos=1, retain=True).wait_for_publish(10)
        time.sleep(every)  # the load's pace, not a synchronisation
        if time.monotonic() >= next_row or time.monotonic() >= end:
            next_row += 60
            rss = [rss_kib(p.pid) for p in agents.values()]
            minute = (time.monotonic() - started) / 60
            print(
                f"{minute:6.1f} {version:7d} {len(watcher.converged(version - 1)):9d} "
                f"{sum(rss) // 1024:13d} {max(rss) // 1024:5d}",
                flush=True,
            )
    deadline = time.monotonic() + 120
    while len(watcher.converged(version)) < n and time.monotonic() < deadline:
        time.sleep(0.5)
    done = set(watcher.converged(version))
    dead = [h for h, p in agents.items() if p.poll() is not None]
    wrong = [
        h
        for h in agents
        if f"soak.version={version}"
        not in (tmp / h / "etc/cloudstack/agent/agent.properties").read_text()
    ]
    final = {h: rss_kib(p.pid) for h, p in agents.items() if p.poll() is None}
    grown = [h for h, kib in final.items() if kib > warm[h] * 1.10 + 4096]
    bad = {s: c for s, c in watcher.states.items() if s in {"failed", "rolled_back", "rejected"}}
    print(
        f"versions published: {version}; converged on the last: {len(done)}/{n}; "
        f"files right: {n - len(wrong)}/{n}; agents alive: {n - len(dead)}/{n}"
    )
    print(f"statuses seen: {dict(watcher.states)}")
    print(
        f"RSS after warm-up {sum(warm.values()) // 1024} MiB, at the end "
        f"{sum(final.values()) // 1024} MiB; agents grown > 10 % + 4 MiB: {len(grown)}"
    )
    ok = len(done) == n and not wrong and not dead and not grown and not bad
    print("soak:", "PASS" if ok else "FAIL")
    return 0 if ok else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--agents", type=int, default=100)
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--every", type=float, default=3.0, help="seconds between versions")
    args = parser.parse_args()
    os.environ.setdefault("PYTHONPATH", str(REPO))
    return soak(args.agents, args.minutes, args.every)


if __name__ == "__main__":
    sys.exit(main())
