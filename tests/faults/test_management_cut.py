"""A document that cuts the management path, through real agents (issue 10): every host
rolls back within the window and reconnects, and says the path came back; SIGTERM during
the window reverts too. The machinery of ``tests/netns/test_rollback.py``: an OVS access
switch in its own namespace with the gateway on VLAN 100, hosts on trunk ports, each with
its own OVS daemons and file root; mosquitto runs in the switch namespace on the gateway's
address, so the broker path *is* the management path."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from simulator.broker import Mosquitto
from simulator.namespaces import Namespace, veth_pair
from simulator.ovs import OvsDaemons
from tests.faults.payloads import doc
from tests.mqtt.conftest import CSBOOT, PREFIX, write_config

pytestmark = [pytest.mark.root, pytest.mark.netns, pytest.mark.ovs, pytest.mark.mqtt]

GATEWAY = "192.168.42.1"
WINDOW = 4.0
HOSTS = {"m1.lab": "192.168.42.11/24", "m2.lab": "192.168.42.12/24"}
NETWORK = {
    "backend": "openvswitch",
    "uplink": "eth0",
    "bridges": [{"name": "cloudbr0", "vlan": 200, "traffic": ["public", "guest"]}],
    "openvswitch": {"datapath": "netdev"},
}


def management(host: str, vlan: int, version: int) -> dict[str, Any]:
    mgmt = {"vlan": vlan, "address": HOSTS[host], "gateway": GATEWAY}
    return doc(version, name=host, kind="Host", network={"management": mgmt})


class Switch:
    def __init__(self, ns: Namespace, broker: Mosquitto) -> None:
        self.ns, self.broker = ns, broker

    def _base(self) -> list[str]:
        return ["-h", GATEWAY, "-p", str(self.broker.port)]

    def publish(self, topic: str, payload: dict[str, Any]) -> None:
        argv = ["mosquitto_pub", *self._base(), "-q", "1", "-r", "-t", topic]
        self.ns.run([*argv, "-m", json.dumps(payload)], check=True, capture_output=True)

    def status(self, host: str) -> dict[str, Any] | None:
        argv = ["mosquitto_sub", *self._base(), "-t", f"{PREFIX}/hosts/{host}/status"]
        argv += ["--retained-only", "-C", "1", "-W", "1"]
        try:  # -W's alarm can deadlock mosquitto_sub (simulator.rollout.stop_watch): retried
            out = self.ns.run(argv, check=False, capture_output=True, text=True, timeout=10)
        except subprocess.TimeoutExpired:
            return None
        return json.loads(out.stdout.splitlines()[0]) if out.stdout.strip() else None

    def wait(self, host: str, pred: Callable[[dict[str, Any]], bool], timeout: float) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            status = self.status(host)
            if status is not None and pred(status):
                return status
            assert time.monotonic() < deadline, f"{host}: last status {status}"
            time.sleep(0.1)


@pytest.fixture
def net(
    make_ns: Callable[[str], Namespace],
    ovs_daemons: Callable[[Namespace], OvsDaemons],
    tmp_path: Path,
) -> Iterator[tuple[Switch, dict[str, tuple[Namespace, OvsDaemons]]]]:
    switch = make_ns("sw")
    sw = ovs_daemons(switch)
    sw.vsctl("add-br", "sw", "--", "set", "bridge", "sw", "datapath_type=netdev")
    sw.vsctl("add-port", "sw", "gw", "tag=100", "--", "set", "interface", "gw", "type=internal")
    with switch.iproute() as ipr:
        (gw,) = ipr.link_lookup(ifname="gw")
        ipr.link("set", index=gw, state="up")
        ipr.addr("add", index=gw, address=GATEWAY, prefixlen=24)
    hosts = {}
    for i, host in enumerate(HOSTS):
        ns = make_ns(f"h{i}")
        veth_pair(ns, "eth0", switch, f"p-h{i}")
        sw.vsctl("add-port", "sw", f"p-h{i}")
        hosts[host] = (ns, ovs_daemons(ns))
    with Mosquitto(tmp_path / "broker", host=GATEWAY, namespace=switch) as broker:
        yield Switch(switch, broker), hosts


def test_a_document_that_cuts_the_management_path_rolls_back_on_every_host(
    net: tuple[Switch, dict[str, tuple[Namespace, OvsDaemons]]], tmp_path: Path
) -> None:
    switch, hosts = net
    switch.publish(f"{PREFIX}/roles/kvm/desired", doc(1, network=NETWORK))
    agents: dict[str, subprocess.Popen[bytes]] = {}
    logs = {}
    try:
        for host, (ns, ovs) in hosts.items():
            switch.publish(f"{PREFIX}/hosts/{host}/desired", management(host, 100, 1))
            # first contact: the host gets its management address by the CLI (as an installer
            # would); then its agent takes over through the broker on that path
            (tmp_path / f"{host}.json").write_text(json.dumps(management(host, 100, 1)))
            (tmp_path / "role.json").write_text(json.dumps(doc(1, network=NETWORK)))
            argv = [str(CSBOOT), "apply", "-f", str(tmp_path / "role.json")]
            argv += ["-f", str(tmp_path / f"{host}.json"), "--root", str(ovs.root)]
            done = ns.run(argv, check=False, capture_output=True, text=True)
            assert done.returncode == 0, done.stdout + done.stderr
            config = write_config(
                tmp_path / f"{host}.toml",
                [f"mqtt://{GATEWAY}:{switch.broker.port}"],
                ovs.root,
                host=host,
                rollback_window=WINDOW,
                debounce=0.1,
            )
            logs[host] = tmp_path / f"{host}.log"
            with logs[host].open("wb") as sink:
                agents[host] = ns.popen([str(CSBOOT), "agent", "-c", str(config)], stderr=sink)
        for host in hosts:
            switch.wait(host, lambda s: s["state"] == "converged", 30)

        # v2 moves management to VLAN 101, where no gateway is: the path is cut
        started = time.monotonic()
        for host in hosts:
            switch.publish(f"{PREFIX}/hosts/{host}/desired", management(host, 101, 2))
        sigtermed = "m2.lab"
        _, ovs2 = hosts[sigtermed]
        journal = ovs2.root / "var/lib/cloudstack-bootstrap/journal.json"
        deadline = time.monotonic() + 20
        while not journal.exists():  # the transaction began: SIGTERM it mid-window
            assert time.monotonic() < deadline, "m2 never started applying"
            time.sleep(0.01)
        agents[sigtermed].send_signal(signal.SIGTERM)
        assert agents[sigtermed].wait(WINDOW + 20) == 0, logs[sigtermed].read_text()

        status = switch.wait(
            "m1.lab", lambda s: s["state"] == "rolled_back", WINDOW + 20
        )  # reported once the path is back
        elapsed = time.monotonic() - started
        assert status["error"]["code"] == "probe"
        assert status["applied"]["host"] == 1
        after = {c["name"]: c["ok"] for c in status["checks"] if c["name"].endswith("revert")}
        assert after and all(after.values()), status["checks"]  # the path came back
        assert elapsed < WINDOW + 15, elapsed
        for host, (ns, ovs) in hosts.items():
            ping = ns.run(["ping", "-c1", "-w2", GATEWAY], check=False, capture_output=True)
            assert ping.returncode == 0, host
            assert ovs.vsctl("br-to-vlan", "mgmt0").strip() == "100", host
            assert not (ovs.root / "var/lib/cloudstack-bootstrap/journal.json").exists(), host
        print(
            f"\nmanagement cut: m1 rolled back and reported in {elapsed:.1f}s (window {WINDOW:g}s)"
        )
    finally:
        for proc in agents.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                proc.wait(30)
