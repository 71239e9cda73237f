"""The host agent: MQTT session, topics, status, last-known-good cache, first boot.

Names are imported on first use, so importing one light module of the package (topics,
config) does not pull in the daemon and the host engine behind it.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = [
    "DEFAULT_PREFIX",
    "Agent",
    "AgentConfig",
    "Broker",
    "Topics",
    "load_config",
    "parse_config",
    "run_agent",
]

_WHERE = {
    "DEFAULT_PREFIX": "bootstrap.agent.topics",
    "Topics": "bootstrap.agent.topics",
    "AgentConfig": "bootstrap.agent.config",
    "Broker": "bootstrap.agent.config",
    "load_config": "bootstrap.agent.config",
    "parse_config": "bootstrap.agent.config",
    "Agent": "bootstrap.agent.daemon",
    "run_agent": "bootstrap.agent.daemon",
}


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module 'bootstrap.agent' has no attribute {name!r}")
    return getattr(importlib.import_module(_WHERE[name]), name)
