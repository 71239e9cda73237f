"""``bench/sim_scale.py --counters`` reads a real vswitchd's own counters (issue 11)."""

from __future__ import annotations

import importlib.util
import time
from pathlib import Path

from tests.conftest import NamespaceFactory
from tests.netns.conftest import OvsFactory

REPO = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("bench_sim_scale", REPO / "bench/sim_scale.py")
assert _spec is not None and _spec.loader is not None
sim_scale = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(sim_scale)

KEY = ("bridge_reconfigure",)


def test_a_new_bridge_shows_as_a_reconfiguration_once_vswitchd_has_totalled_it(
    make_ns: NamespaceFactory, ovs_daemons: OvsFactory
) -> None:
    ovs = ovs_daemons(make_ns("h"))
    time.sleep(sim_scale.COVERAGE_LAG)  # vswitchd's totals lag by up to a second
    before = sim_scale.coverage_totals(ovs.appctl("ovs-vswitchd", "coverage/show"), KEY)
    # without --no-wait, ovs-vsctl returns once vswitchd has applied the change
    ovs.vsctl("add-br", "br0", "--", "set", "bridge", "br0", "datapath_type=netdev")
    time.sleep(sim_scale.COVERAGE_LAG)
    shown = ovs.appctl("ovs-vswitchd", "coverage/show")
    after = sim_scale.coverage_totals(shown, KEY)
    assert after["bridge_reconfigure"] > before.get("bridge_reconfigure", 0)
    # only the counters asked for, and only those vswitchd shows
    assert set(sim_scale.coverage_totals(shown, (*KEY, "no_such_counter"))) == set(KEY)
