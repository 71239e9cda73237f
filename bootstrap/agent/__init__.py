"""The host agent: MQTT session, topics, status, last-known-good cache, first boot.

The names below are loaded on first use: ``csboot`` imports this package for every
command, and only ``csboot agent`` needs the MQTT client and the engine.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from bootstrap.lazy import lazy_names

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


__getattr__ = lazy_names(__name__, _HOME)
