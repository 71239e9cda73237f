"""Shared fixtures: throwaway namespaces per test, and skips that say why."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from simulator.namespaces import Namespace, new_run_id, remove_run

REPO = Path(__file__).resolve().parent.parent


def _is_root() -> bool:
    return os.geteuid() == 0


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    in_vm = os.environ.get("CSBOOT_FULLKERNEL") == "1"
    has_8021q = Path("/proc/net/vlan").exists() or Path("/sys/module/8021q").exists()
    for item in items:
        if item.get_closest_marker("root") and not _is_root():
            item.add_marker(pytest.mark.skip(reason="needs root (creates network namespaces)"))
        if item.get_closest_marker("fullkernel") and not (in_vm or has_8021q):
            item.add_marker(
                pytest.mark.skip(
                    reason="needs 8021q (this kernel lacks it): runs in the full-kernel VM lane "
                    "(tox -e fullkernel)"
                )
            )
        for tool in ("mosquitto", "ovsdb-server", "qemu-system-x86_64"):
            marker = {"mosquitto": "mqtt", "ovsdb-server": "ovs", "qemu-system-x86_64": "qemu"}[
                tool
            ]
            if item.get_closest_marker(marker) and shutil.which(tool) is None:
                item.add_marker(pytest.mark.skip(reason=f"{tool} is not installed"))


NamespaceFactory = Callable[[str], Namespace]


@pytest.fixture
def run_id() -> Iterator[str]:
    """One id per test; everything the test names with it is removed afterwards."""
    rid = new_run_id()
    yield rid
    remove_run(rid)


@pytest.fixture
def make_ns(run_id: str) -> NamespaceFactory:
    """``make_ns("a")`` creates namespace ``<run_id>-a``; all are removed after the test."""

    def make(name: str) -> Namespace:
        return Namespace.create(f"{run_id}-{name}")

    return make
