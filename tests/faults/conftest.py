"""Fault tests reuse the real-mosquitto fixtures of tests/mqtt (re-exported, not copied)."""

from __future__ import annotations

from tests.mqtt.conftest import agents, broker, client, root

__all__ = ["agents", "broker", "client", "root"]
