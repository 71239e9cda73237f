"""The host agent: MQTT session, topics, status, last-known-good cache, first boot.

The names below are loaded on first use: ``csboot`` imports this package for every
command, and only ``csboot agent`` needs the MQTT client and the engine.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from bootstrap.agent.config import AgentConfig, Broker, load_config, parse_config
    from bootstrap.agent.daemon import Agent, run_agent
    from bootstrap.agent.topics import DEFAULT_PREFIX, Topics

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

_HOME = {
    "AgentConfig": "config",
    "Broker": "config",
    "load_config": "config",
    "parse_config": "config",
    "Agent": "daemon",
    "run_agent": "daemon",
    "DEFAULT_PREFIX": "topics",
    "Topics": "topics",
}


def __getattr__(name: str) -> Any:
    if name not in _HOME:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{_HOME[name]}"), name)
    globals()[name] = value
    return value
