"""Open vSwitch bonds on real daemons: a host's two NICs to a top-of-rack switch (OVS, netdev)
that aggregates them with LACP, as production KVM hosts are cabled.

Host ``a`` starts on one NIC (eth0, a plain switch port); the switch then aggregates its
two ports, and ``a`` moves onto ``bond0`` (eth0 + eth1, balance-tcp,
LACP active) in one transaction under a probe to its peer ``b``; a cut member keeps the path.
When the switch side has no LAG, LACP never comes up, the probe fails and the transaction
rolls back to the single NIC, which then reaches ``b`` again.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

import pytest

from bootstrap.engine.plan import make_plan
from bootstrap.engine.probe import IcmpProbe
from bootstrap.engine.services import NoServices
from bootstrap.engine.transaction import Outcome, apply_plan
from bootstrap.errors import InvalidDocument
from bootstrap.model.spec import Network
from bootstrap.resources.openvswitch import openvswitch_resources
from simulator.fabric import no_offload
from simulator.namespaces import Namespace, veth_pair
from simulator.ovs import OvsDaemons

pytestmark = [pytest.mark.root, pytest.mark.netns, pytest.mark.ovs]

NamespaceFactory = Callable[[str], Namespace]
OvsFactory = Callable[[Namespace], OvsDaemons]
TRUNKS = "trunks=100,200"


def network(address: str, *, bond: dict[str, Any] | None = None) -> Network:
    doc: dict[str, Any] = {
        "backend": "openvswitch",
        "uplink": "bond0" if bond else "eth0",
        "management": {"address": address},
        "bridges": [
            {"name": "mgmt0", "vlan": 100, "traffic": ["management"]},
            {"name": "cloudbr0", "vlan": 200, "traffic": ["public", "guest"]},
        ],
        "openvswitch": {"bridge": "cloudbr", "datapath": "netdev"},
    }
    if bond is not None:
        doc["bonds"] = [{"name": "bond0", "members": ["eth0", "eth1"], **bond}]
    return Network.model_validate(doc)


LACP = {"mode": "balance-tcp", "lacp": "active", "lacp_rate": "fast"}


class Lab:
    def __init__(self, make_ns: NamespaceFactory, ovs: OvsFactory, *, lag: bool) -> None:
        self.switch = make_ns("sw")
        self.sw = ovs(self.switch)
        self.sw.vsctl("add-br", "tor", "--", "set", "bridge", "tor", "datapath_type=netdev")
        self.a, self.b = make_ns("a"), make_ns("b")
        self.a_ovs, self.b_ovs = ovs(self.a), ovs(self.b)
        for host, nics in ((self.a, ("eth0", "eth1")), (self.b, ("eth0",))):
            name = host.name.rsplit("-", 1)[-1]
            for k, nic in enumerate(nics):
                port = f"{name}{k}"
                veth_pair(host, nic, self.switch, port)
                no_offload(host, nic)
                no_offload(self.switch, port)
                host.run(["ip", "link", "set", nic, "up"])
        self.lag = lag
        self.sw.vsctl("add-port", "tor", "a0", "--", "set", "port", "a0", TRUNKS)
        self.sw.vsctl("add-port", "tor", "b0", "--", "set", "port", "b0", TRUNKS)
        assert self.converge(self.b, self.b_ovs, network("192.168.42.12/24")).ok

    def cable_second_nic(self) -> None:
        """The network team's half of the change: a1 cabled, and with ``lag`` both ports
        aggregated into one LACP LAG (balance-tcp, fast)."""
        if not self.lag:
            self.sw.vsctl("add-port", "tor", "a1", "--", "set", "port", "a1", TRUNKS)
            return
        self.sw.vsctl(
            "del-port", "tor", "a0", "--",
            "add-bond", "tor", "lag-a", "a0", "a1", "lacp=active", "bond_mode=balance-tcp",
            "other_config:lacp-time=fast", "--", "set", "port", "lag-a", TRUNKS,
        )  # fmt: skip

    def converge(
        self, ns: Namespace, ovs: OvsDaemons, net: Network, *, window: float = 5.0
    ) -> Outcome:
        async def go() -> Outcome:
            plan = await make_plan(openvswitch_resources(net, ovs.host))
            probes = [IcmpProbe("192.168.42.12")] if ns is self.a else []
            return await apply_plan(
                plan, services=NoServices(), probes=probes, rollback_window=window
            )

        with ns.entered():
            return asyncio.run(go())

    def reaches_b(self, wait: int = 20) -> bool:
        done = self.a.run(
            ["ping", "-c1", f"-w{wait}", "192.168.42.12"], check=False, capture_output=True
        )
        return done.returncode == 0


def ports(ovs: OvsDaemons) -> list[str]:
    """Every port's configuration (uuids aside: a reverted port is a new row)."""
    cols = "name,tag,trunks,bond_mode,lacp,fake_bridge,interfaces"
    rows = json.loads(ovs.vsctl("--format=json", f"--columns={cols}", "list", "Port"))["data"]
    names = {
        str(u[1]): n
        for u, n in json.loads(
            ovs.vsctl("--format=json", "--columns=_uuid,name", "list", "Interface")
        )["data"]
    }
    out = []
    for row in rows:
        ifaces = row[-1][1] if row[-1][0] == "set" else [row[-1]]
        out.append(json.dumps([*row[:-1], sorted(names[str(i[1])] for i in ifaces)]))
    return sorted(out)


@pytest.fixture
def make_lab(make_ns: NamespaceFactory, ovs_daemons: OvsFactory) -> Callable[..., Lab]:
    return lambda *, lag: Lab(make_ns, ovs_daemons, lag=lag)


def test_a_single_nic_host_moves_onto_an_lacp_bond_and_survives_a_cut(
    make_lab: Callable[..., Lab],
) -> None:
    lab = make_lab(lag=True)
    assert lab.converge(lab.a, lab.a_ovs, network("192.168.42.11/24")).ok
    assert lab.reaches_b()

    lab.cable_second_nic()
    outcome = lab.converge(lab.a, lab.a_ovs, network("192.168.42.11/24", bond=LACP), window=20)
    assert outcome.ok, outcome.error
    ovs = lab.a_ovs
    assert ovs.vsctl("get", "port", "bond0", "bond_mode").strip() == "balance-tcp"
    assert ovs.vsctl("get", "port", "bond0", "lacp").strip() == "active"
    assert ovs.vsctl("get", "port", "bond0", "trunks").strip() == "[100, 200]"
    assert "eth0" not in ovs.vsctl("list-ports", "cloudbr").split()  # now a bond member
    assert lab.reaches_b()

    for cut in ("a0", "a1"):  # one member's cable pulled at a time: the bond carries on
        lab.switch.run(["ip", "link", "set", cut, "down"])
        assert lab.reaches_b(), f"no path with {cut} cut"
        lab.switch.run(["ip", "link", "set", cut, "up"])


def test_a_bond_the_switch_does_not_aggregate_rolls_back_to_the_single_nic(
    make_lab: Callable[..., Lab],
) -> None:
    lab = make_lab(lag=False)
    assert lab.converge(lab.a, lab.a_ovs, network("192.168.42.11/24")).ok
    assert lab.reaches_b()
    before = ports(lab.a_ovs)

    lab.cable_second_nic()  # two plain ports: no LAG on the switch side
    outcome = lab.converge(lab.a, lab.a_ovs, network("192.168.42.11/24", bond=LACP))
    assert outcome.state == "rolled_back", outcome
    assert "LACP not negotiated" in str(outcome.error)
    assert ports(lab.a_ovs) == before  # eth0 is the trunk port again, as it was
    assert lab.reaches_b()


def test_a_missing_member_is_rejected_naming_the_field(make_lab: Callable[..., Lab]) -> None:
    lab = make_lab(lag=True)
    net = Network.model_validate(
        {
            **network("192.168.42.11/24", bond=LACP).model_dump(mode="json"),
            "bonds": [{"name": "bond0", "members": ["eth0", "eth7"], **LACP}],
        }
    )
    before = lab.a_ovs.vsctl("show")
    with pytest.raises(InvalidDocument) as err, lab.a.entered():
        asyncio.run(make_plan(openvswitch_resources(net, lab.a_ovs.host)))
    assert err.value.field == "spec.network.bonds[0].members[1]"
    assert "eth7 does not exist" in err.value.reason
    assert lab.a_ovs.vsctl("show") == before
