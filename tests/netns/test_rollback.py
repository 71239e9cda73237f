"""The whole transaction through the real CLI, in a host namespace on an OVS access switch.

The switch is an OVS bridge in its own namespace (netdev datapath), with the host on a trunk
port and the management gateway (192.168.42.1) on an access port of VLAN 100, as on a real
top-of-rack switch. ``csboot apply`` runs inside the host's namespace, as the agent would.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from simulator.namespaces import Namespace, veth_pair
from simulator.ovs import OvsDaemons

pytestmark = [pytest.mark.root, pytest.mark.netns, pytest.mark.ovs]

GATEWAY = "192.168.42.1"


def role(version: int, **network: Any) -> dict[str, Any]:
    net: dict[str, Any] = {
        "backend": "openvswitch",
        "uplink": "eth0",
        "management": {"vlan": 100, "address": "192.168.42.11/24", "gateway": GATEWAY},
        "bridges": [
            {"name": "cloudbr0", "vlan": 200, "traffic": ["public"]},
            {"name": "cloudbr1", "vlan": 300, "traffic": ["guest"]},
        ],
        "openvswitch": {"datapath": "netdev"},
    }
    net.update(network)
    return {
        "apiVersion": "cloudstack-bootstrap/v1",
        "kind": "Role",
        "name": "kvm",
        "version": version,
        "spec": {"network": net, "firewall": {"policy": "accept"}},
    }


class Host:
    def __init__(self, ns: Namespace, ovs: OvsDaemons, docs: Path) -> None:
        self.ns, self.ovs, self.docs = ns, ovs, docs

    @property
    def root(self) -> str:
        return str(self.ovs.host.root)

    def write(self, doc: dict[str, Any]) -> str:
        path = self.docs / f"v{doc['version']}.json"
        path.write_text(json.dumps(doc))
        return str(path)

    def argv(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "bootstrap.cli", *args, "--root", self.root]

    def csboot(self, *args: str) -> subprocess.CompletedProcess[str]:
        return self.ns.run(self.argv(*args), check=False, capture_output=True, text=True)

    def ping(self, address: str) -> bool:
        done = self.ns.run(["ping", "-c1", "-w2", address], check=False, capture_output=True)
        return done.returncode == 0


@pytest.fixture
def host(
    make_ns: Callable[[str], Namespace],
    ovs_daemons: Callable[[Namespace], OvsDaemons],
    tmp_path: Path,
) -> Host:
    switch, ns = make_ns("sw"), make_ns("h")
    sw = ovs_daemons(switch)
    sw.vsctl("add-br", "sw", "--", "set", "bridge", "sw", "datapath_type=netdev")
    veth_pair(ns, "eth0", switch, "p-h")
    sw.vsctl("add-port", "sw", "p-h")
    sw.vsctl("add-port", "sw", "gw", "tag=100", "--", "set", "interface", "gw", "type=internal")
    with switch.iproute() as ipr:
        (gw,) = ipr.link_lookup(ifname="gw")
        ipr.link("set", index=gw, state="up")
        ipr.addr("add", index=gw, address=GATEWAY, prefixlen=24)
    return Host(ns, ovs_daemons(ns), tmp_path)


def test_management_on_a_wrong_vlan_is_rolled_back_within_the_window(host: Host) -> None:
    good = host.write(role(1))
    first = host.csboot("apply", "-f", good, "--json")
    assert first.returncode == 0, first.stdout + first.stderr
    assert host.ping(GATEWAY)

    wrong = host.write(
        role(2, management={"vlan": 101, "address": "192.168.42.11/24", "gateway": GATEWAY})
    )
    window = 4.0
    started = time.monotonic()
    result = host.csboot("apply", "-f", wrong, "--json", "--rollback-window", str(window))
    elapsed = time.monotonic() - started
    report = json.loads(result.stdout)
    assert result.returncode == 1
    assert report["state"] == "rolled_back"
    assert report["error"]["code"] == "probe" and GATEWAY in report["error"]["message"]
    assert window <= elapsed < window + 20
    # the path is back, on the old VLAN, and nothing of the bad spec is left
    assert host.ping(GATEWAY)
    assert host.ovs.vsctl("br-to-vlan", "mgmt0").strip() == "100"
    assert host.csboot("plan", "-f", good).returncode == 0


def test_sigkill_mid_apply_ends_fully_applied_or_fully_reverted(host: Host) -> None:
    v1 = host.write(role(1))
    assert host.csboot("apply", "-f", v1).returncode == 0
    changed = role(
        2,
        bridges=[
            {"name": "cloudbr0", "vlan": 201, "traffic": ["public"]},
            {"name": "cloudbr1", "vlan": 301, "traffic": ["guest"]},
            {"name": "cloudbr2", "vlan": 400, "traffic": ["storage"]},
        ],
    )
    changed["spec"]["firewall"] = {"policy": "drop"}
    v2 = host.write(changed)
    journal = Path(host.root) / "var/lib/cloudstack-bootstrap/journal.json"
    interrupted = 0
    for delay in (0.0, 0.01, 0.03, 0.06):
        proc = host.ns.popen(
            host.argv("apply", "-f", v2), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        while proc.poll() is None and not journal.exists():
            time.sleep(0.0005)
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        if proc.returncode == -signal.SIGKILL and journal.exists():
            interrupted += 1
            recovered = host.csboot("recover", "--json")
            assert recovered.returncode == 0, recovered.stderr
            assert json.loads(recovered.stdout)["reverted"]
            assert host.csboot("plan", "-f", v1).returncode == 0, "not fully reverted"
            assert not journal.exists()
        else:  # the apply finished before the kill: it must be whole
            assert host.csboot("plan", "-f", v2).returncode == 0, "not fully applied"
            assert host.csboot("apply", "-f", v1).returncode == 0
        assert host.ping(GATEWAY)
    assert interrupted, "no kill landed mid-apply: the test proved nothing"
    # and a plain re-run after a crash completes the change
    assert host.csboot("apply", "-f", v2).returncode == 0
    assert host.csboot("plan", "-f", v2).returncode == 0
