"""The native nets end to end, inside the full-kernel VM (8021q): every check passes.

``seed-native`` is the seed's VLAN layout done right (the address on the mgmt0 bridge);
``brownfield-native`` starts from a host as an installer leaves it, the address on the bare
NIC, and moves it onto its bridge under the transaction's probes.
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


@pytest.mark.parametrize("net", ["seed-native", "brownfield-native"])
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
    bridge = "mgmt0" if net == "seed-native" else "cloudbr0"
    for host in fleet.layout.hosts:
        assert f"private.network.device={bridge} holds {host.mgmt}" in private[host.name]
