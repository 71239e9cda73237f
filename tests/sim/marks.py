"""The markers every simulated-fleet test module carries (root, namespaces, OVS, a broker)."""

from __future__ import annotations

import pytest

FLEET = [
    pytest.mark.sim,
    pytest.mark.root,
    pytest.mark.ovs,
    pytest.mark.mqtt,
    pytest.mark.netns,
]
