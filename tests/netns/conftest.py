"""Fixtures for tests in namespaces: per-host Open vSwitch daemons."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from simulator.namespaces import Namespace
from simulator.ovs import OvsDaemons

OvsFactory = Callable[[Namespace], OvsDaemons]


@pytest.fixture
def ovs_daemons(run_id: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[OvsFactory]:
    """``ovs_daemons(ns)`` starts ovsdb-server + ovs-vswitchd in ``ns`` with its own file
    root; all are stopped after the test (before ``run_id`` removes the namespaces)."""
    started: list[OvsDaemons] = []

    def start(ns: Namespace) -> OvsDaemons:
        root = tmp_path_factory.mktemp(ns.name.removeprefix(f"{run_id}-"))
        daemons = OvsDaemons(root, ns).start()
        started.append(daemons)
        return daemons

    yield start
    for daemons in reversed(started):
        daemons.stop()
