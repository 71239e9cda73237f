"""``bench/sim_scale.py --counters`` reads a real vswitchd's own counters (issue 11)."""

from __future__ import annotations

import importlib.util
import time
from pathlib import Path

from simulator.ovs import OvsDaemons
from tests.conftest import NamespaceFactory
from tests.netns.conftest import OvsFactory

REPO = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("bench_sim_scale", REPO / "bench/sim_scale.py")
assert _spec is not None and _spec.loader is not None
sim_scale = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(sim_scale)

KEY = ("bridge_reconfigure",)


def _reconfigurations(ovs: OvsDaemons, *, above: int, within: float = 10.0) -> int:
    """vswitchd's total once it exceeds ``above`` (it totals each thread's counts about
    once a second); fails after ``within`` seconds."""
    deadline = time.monotonic() + within
    while True:
        shown = sim_scale.coverage_totals(ovs.appctl("ovs-vswitchd", "coverage/show"), KEY)
        total = shown.get("bridge_reconfigure", 0)
        if total > above or time.monotonic() > deadline:
            return total
        time.sleep(0.1)  # polling vswitchd's own counter: there is nothing to wait on


def test_a_new_bridge_shows_as_a_reconfiguration_once_vswitchd_has_totalled_it(
    make_ns: NamespaceFactory, ovs_daemons: OvsFactory
) -> None:
    ovs = ovs_daemons(make_ns("h"))
    # `ovs-vsctl init` at its start made it reconfigure at least once
    before = _reconfigurations(ovs, above=0)
    assert before > 0
    # without --no-wait, ovs-vsctl returns once vswitchd has applied the change
    ovs.vsctl("add-br", "br0", "--", "set", "bridge", "br0", "datapath_type=netdev")
    assert _reconfigurations(ovs, above=before) > before
    # only the counters asked for, and only those vswitchd shows
    shown = ovs.appctl("ovs-vswitchd", "coverage/show")
    assert set(sim_scale.coverage_totals(shown, (*KEY, "no_such_counter"))) == set(KEY)
