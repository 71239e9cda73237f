"""``bench/sim_scale.py --prefault``: the memory it claims to touch is touched (issue 11)."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("bench_sim_scale", REPO / "bench/sim_scale.py")
assert _spec is not None and _spec.loader is not None
sim_scale = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(sim_scale)


def test_every_page_of_the_prefault_is_touched() -> None:
    """A page never written stays unmapped: the child's peak RSS shows what it touched."""
    peak = "import resource\nprint(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)\n"
    out = subprocess.run(
        [sys.executable, "-c", sim_scale.PREFAULT + peak, "0.25"],
        check=True,
        capture_output=True,
        text=True,
    )
    assert int(out.stdout) >= 256 * 1024  # KiB
    assert sim_scale.prefault(0.01) > 0
