"""The native nets end to end, inside the full-kernel VM (8021q): every check passes.

``seed-native`` is the seed's VLAN layout done right (the address on the mgmt0 bridge);
``brownfield-native`` starts from a host as an installer leaves it, the address on the bare
NIC, and moves it onto its bridge under the transaction's probes; ``bond-native`` turns
single-NIC hosts into 802.3ad bonds of two NICs on the switch's LAG, then loses a cable.
"""

from __future__ import annotations

import pytest

from simulator.checks import CheckResult
from simulator.pytest_plugin import SimFactory

pytestmark = [pytest.mark.fullkernel, pytest.mark.root, pytest.mark.sim, pytest.mark.qemu]
CHECKS = {"reach", "isolation", "ports", "migration", "cloudstack"}


def every_check_passes(results: list[CheckResult]) -> None:
    assert {r.name for r in results} == CHECKS
    for result in results:
        assert result.skipped is None, result.name
        assert result.ok, (result.name, [r for r in result.rows if not r.ok])


@pytest.mark.parametrize("net", ["seed-native", "brownfield-native", "bond-native"])
def test_native_net_converges_and_passes_every_check(sim: SimFactory, net: str) -> None:
    fleet = sim(f"nets/{net}.yaml", timeout=600)
    assert [(r.host, r.state, r.detail) for r in fleet.rollout_rows if not r.ok] == []
    results = fleet.check()
    every_check_passes(results)
    (cloudstack,) = [r for r in results if r.name == "cloudstack"]
    private = {
        r.subject.split()[0]: r.detail
        for r in cloudstack.rows
        if r.subject.endswith("cloudstack-private")
    }
    bridge = "cloudbr0" if net == "brownfield-native" else "mgmt0"
    for host in fleet.layout.hosts:
        assert f"private.network.device={bridge} holds {host.mgmt}" in private[host.name]
    if net != "bond-native":
        return
    assert fleet.fabric is not None
    for host in fleet.layout.hosts:  # a pulled cable on every host: the bond carries on
        fleet.fabric.set_port(host.port_of("eth0"), up=False)
    again = fleet.check(["reach", "ports", "migration"])
    assert [(r.name, [x for x in r.rows if not x.ok]) for r in again if not r.ok] == []
    kvm1 = fleet.hosts["kvm1"]
    slaves = kvm1.ns.run(["cat", "/proc/net/bonding/bond0"], capture_output=True, text=True)
    assert "802.3ad" in slaves.stdout and "MII Status: down" in slaves.stdout
