"""``bench/sim_scale.py --counters``: an agent's work as its process counts it (issue 11)."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("bench_sim_scale", REPO / "bench/sim_scale.py")
assert _spec is not None and _spec.loader is not None
sim_scale = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(sim_scale)

PAGES = 2000
TOUCHER = f"""\
import mmap, sys
sys.stdout.write("ready\\n"); sys.stdout.flush()
sys.stdin.readline()                       # the first reading is taken
m = mmap.mmap(-1, {PAGES} * 4096)          # fresh anonymous pages: one fault each
for page in range(0, {PAGES} * 4096, 4096):
    m[page] = 1
sys.stdout.write("touched\\n"); sys.stdout.flush()
sys.stdin.readline()
"""


@pytest.fixture
def agent() -> Iterator[subprocess.Popen[str]]:
    """A process standing in for an agent: it touches fresh pages when told to."""
    proc = subprocess.Popen(
        [sys.executable, "-c", TOUCHER], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
    yield proc
    proc.kill()
    proc.wait()


def test_an_agents_page_faults_and_wake_ups_are_counted(
    agent: subprocess.Popen[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sim_scale, "COVERAGE_LAG", 0.0)  # no vswitchd here to wait for
    fleet = SimpleNamespace(hosts={"kvm1": SimpleNamespace(ovs=None, agent=agent)})
    before = sim_scale.work_by_host(fleet)
    assert agent.stdin is not None and agent.stdout is not None
    agent.stdin.write("go\n")
    agent.stdin.flush()
    assert agent.stdout.readline() == "touched\n"
    after = sim_scale.work_by_host(fleet)

    grown = sim_scale.work_medians(after, before)
    assert grown["agent faults"] >= PAGES
    assert grown["agent wake-ups"] >= 1  # it slept on its stdin and was woken
    assert grown["worker faults"] == 0  # it forked nothing
    assert grown["bridge_reconfigure"] == 0  # no vswitchd: its counters stay at zero


def test_a_host_whose_agent_is_gone_is_left_out_of_the_agents_counters(
    agent: subprocess.Popen[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sim_scale, "COVERAGE_LAG", 0.0)
    fleet = SimpleNamespace(hosts={"kvm1": SimpleNamespace(ovs=None, agent=agent)})
    agent.kill()
    agent.wait()
    (counts,) = sim_scale.work_by_host(fleet).values()
    assert "agent faults" not in counts and counts["xlate_actions"] == 0


def test_medians_are_taken_per_counter_over_the_hosts_in_both_readings() -> None:
    before = {"a": {"x": 10, "y": 0}, "b": {"x": 0, "y": 5}, "c": {"x": 7}}
    after = {"a": {"x": 13, "y": 1}, "b": {"x": 9, "y": 5}, "c": {"x": 8, "y": 100}, "d": {"x": 1}}
    # x grew by 3, 9, 1 (d was not read before); y by 1, 0 (c had none before)
    assert sim_scale.work_medians(after, before) == {"x": 3, "y": 1}


def test_a_resized_net_is_a_copy_removed_after_the_run() -> None:
    net = str(REPO / "nets/scale-100.yaml")
    with sim_scale.sized(net, None) as same:
        assert same == net
    with sim_scale.sized(net, 7) as copy:
        data = yaml.safe_load(Path(copy).read_text())
        assert (data["name"], data["hosts"]["count"]) == ("scale-7", 7)
    assert not Path(copy).exists()
    with pytest.raises(RuntimeError), sim_scale.sized(net, 3) as failed:
        raise RuntimeError("the run failed")
    assert not Path(failed).exists()
