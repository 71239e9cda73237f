"""Native VLAN and bond layouts survive a reboot without our agent (full-kernel VM: 8021q,
bonding): Debian's ifup -a over the files network.persist wrote, then every check."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import pytest
import yaml

from bootstrap.converge import plan_host
from bootstrap.host.root import HostRoot
from simulator.pytest_plugin import SimFactory
from simulator.reboot import reboot

pytestmark = [pytest.mark.fullkernel, pytest.mark.root, pytest.mark.sim, pytest.mark.qemu]
REPO = Path(__file__).resolve().parents[2]
CHECKS = {"reach", "isolation", "ports", "migration", "cloudstack"}


BOND = pytest.param(
    "bond-native",
    marks=pytest.mark.skipif(
        os.environ.get("CSBOOT_REBOOT_BONDS") != "1",
        reason="~9 min in the VM (LACP on two hosts, twice): CSBOOT_REBOOT_BONDS=1 runs it",
    ),
)


@pytest.mark.parametrize("net", ["basic", BOND])
def test_native_vlans_and_bonds_come_back_with_ifupdown_alone(
    sim: SimFactory, tmp_path: Path, net: str
) -> None:
    data: dict[str, Any] = yaml.safe_load((REPO / f"nets/{net}.yaml").read_text())
    data["install"] = {**data.get("install", {}), "distro": "ifupdown"}
    path = tmp_path / f"{net}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    fleet = sim(path, timeout=600)
    assert [(r.host, r.state, r.detail) for r in fleet.rollout_rows if not r.ok] == []
    booted = {}
    for host in fleet.hosts.values():
        booted[host.name] = reboot(fleet, host)
        removed = booted[host.name].removed_links
        # (a VLAN interface goes with the NIC or bond beneath it, so it may not be listed)
        assert {"mgmt0", "cloudbr0", "cloudbr1"} <= set(removed)
    kvm1 = fleet.hosts["kvm1"]
    with kvm1.ns.inside():
        plan = asyncio.run(plan_host(kvm1.layout.spec, HostRoot(kvm1.root)))
    left = [str(c) for c in plan.changes if (c.resource, c.action) != ("route/default", "adopt")]
    # what ifupdown built is exactly our layout
    if left:
        pytest.fail("\n".join([*left, booted["kvm1"].ifup_output]), pytrace=False)
    results = fleet.check()
    assert {r.name for r in results} == CHECKS
    for result in results:
        assert result.skipped is None, result.name
        assert result.ok, (result.name, [r for r in result.rows if not r.ok])
