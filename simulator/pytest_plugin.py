"""pytest plugin (entry point ``csboot_sim``): the ``sim`` and ``sim_module`` fixtures.

``fleet = sim("nets/ovs.yaml")`` builds the fleet, rolls the nets file's documents out and
returns the :class:`Sim` (its rollout rows in ``fleet.rollout_rows``); every fleet the test
made is torn down afterwards, whatever happened. Relative paths are tried from the current
directory, then from pytest's rootdir. ``rollout=False`` leaves the fleet as installed.
``sim_module`` is the same factory for a module-scoped fixture: one fleet bring-up shared
by a module's tests, torn down after the last of them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from simulator.fleet import Sim

__all__ = ["SimFactory", "sim", "sim_module"]

SimFactory = Callable[..., Sim]


def _factory(request: pytest.FixtureRequest) -> Iterator[SimFactory]:
    made: list[Sim] = []

    def make(net: str | Path, *, rollout: bool = True, timeout: float | None = None) -> Sim:
        path = Path(net)
        if not path.exists():
            path = Path(request.config.rootpath) / net
        fleet = Sim.create(path)
        made.append(fleet)
        fleet.build()
        if rollout:
            fleet.rollout(timeout)
        return fleet

    yield make
    for fleet in reversed(made):
        fleet.down()


@pytest.fixture
def sim(request: pytest.FixtureRequest) -> Iterator[SimFactory]:
    yield from _factory(request)


@pytest.fixture(scope="module")
def sim_module(request: pytest.FixtureRequest) -> Iterator[SimFactory]:
    yield from _factory(request)
