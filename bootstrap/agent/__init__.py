"""The host agent: MQTT session, topics, status, last-known-good cache, first boot."""

from __future__ import annotations

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
