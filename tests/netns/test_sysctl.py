"""The sysctl resource on a real kernel: the settings are per network namespace, so the
host is a namespace (its /proc/sys/net) with a file root in the test's temp dir."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import pytest

from bootstrap.engine.plan import make_plan
from bootstrap.engine.resource import Change, Resource
from bootstrap.engine.services import NoServices
from bootstrap.engine.transaction import apply_plan
from bootstrap.host.root import HostRoot
from bootstrap.model.spec import HostSettings
from bootstrap.resources.sysctl import BRIDGE_KEYS, CONF, MODULES, RESERVED, SysctlResource
from simulator.namespaces import Namespace

pytestmark = [pytest.mark.root, pytest.mark.netns]


def _read(key: str) -> str:
    return Path("/proc/sys", *key.split(".")).read_text().strip()


def _values(ns: Namespace) -> dict[str, str]:
    with ns.inside():
        return {k: _read(k) for k in (RESERVED, *BRIDGE_KEYS)}


def test_sysctls_applied_persisted_and_rolled_back(
    make_ns: Callable[[str], Namespace], tmp_path: Path
) -> None:
    if not Path("/proc/sys/net/bridge").is_dir():
        pytest.skip("br_netfilter is not loaded and may not be loaded in a test")
    ns = make_ns("host")
    ns.sysctl(RESERVED, "8080,20000-20010")  # the host's own reservations
    for key in BRIDGE_KEYS:
        ns.sysctl(key, "0")
    machine = {k: _read(k) for k in (RESERVED, *BRIDGE_KEYS)}
    old_conf = b"# an older version of ours\nnet.ipv4.ip_local_reserved_ports = 49152\n"
    (tmp_path / "etc/sysctl.d").mkdir(parents=True)
    (tmp_path / CONF.lstrip("/")).write_bytes(old_conf)
    resource = SysctlResource(HostSettings(security_groups=True), HostRoot(tmp_path))

    async def cycle() -> None:
        snapshot = await resource.observe()
        target = resource.target(snapshot)
        changes = resource.diff(snapshot, target)
        assert {c.detail.split(":")[0] for c in changes} >= {RESERVED, *BRIDGE_KEYS}
        await resource.apply(snapshot, target)
        assert await resource.verify(target) == []
        assert _values(ns) == {
            RESERVED: "8080,20000-20010,49152-49216",  # merged, the host's kept
            **dict.fromkeys(BRIDGE_KEYS, "1"),
        }
        assert (tmp_path / CONF.lstrip("/")).read_text() == (
            "# managed by cloudstack-bootstrap: replaced whole on every apply\n"
            "net.ipv4.ip_local_reserved_ports = 8080,20000-20010,49152-49216\n"
            "net.bridge.bridge-nf-call-arptables = 1\n"
            "net.bridge.bridge-nf-call-iptables = 1\n"
            "net.bridge.bridge-nf-call-ip6tables = 1\n"
        )
        assert (tmp_path / MODULES.lstrip("/")).read_text().endswith("\nbr_netfilter\n")
        # applying again changes nothing
        again = await resource.observe()
        assert resource.diff(again, resource.target(again)) == []
        await resource.revert(snapshot)
        assert await resource.observe() == snapshot

    with ns.inside():
        asyncio.run(cycle())
    assert _values(ns) == {RESERVED: "8080,20000-20010", **dict.fromkeys(BRIDGE_KEYS, "0")}
    assert (tmp_path / CONF.lstrip("/")).read_bytes() == old_conf  # byte for byte
    assert not (tmp_path / MODULES.lstrip("/")).exists()
    # the machine's own namespace was never touched
    assert {k: _read(k) for k in (RESERVED, *BRIDGE_KEYS)} == machine


class _Breaks(Resource[int]):
    """A later resource whose apply fails: the transaction must revert the sysctls."""

    state_type: ClassVar[Any] = int

    @property
    def name(self) -> str:
        return "test/breaks"

    async def observe(self) -> int:
        return 0

    def target(self, current: int) -> int:
        return 1

    def diff(self, current: int, target: int) -> list[Change]:
        return [] if current == target else [Change(self.name, "modify", "breaks")]

    async def apply(self, current: int, target: int) -> None:
        if target:
            raise RuntimeError("a later step failed")


def test_a_failed_transaction_rolls_the_sysctls_back(
    make_ns: Callable[[str], Namespace], tmp_path: Path
) -> None:
    ns = make_ns("host")
    ns.sysctl(RESERVED, "2000-2010")
    host = HostRoot(tmp_path)

    async def run() -> str:
        plan = await make_plan([SysctlResource(HostSettings(), host), _Breaks()])
        assert len(plan.pending) == 2
        outcome = await apply_plan(plan, services=NoServices(), verify_timeout=1.0)
        return outcome.state

    with ns.inside():
        assert asyncio.run(run()) == "rolled_back"
    with ns.inside():
        assert _read(RESERVED) == "2000-2010"
    assert not (tmp_path / CONF.lstrip("/")).exists()
