"""The full-kernel lane runs in a slow, emulated VM: give pyroute2's helpers time."""

from __future__ import annotations

from pyroute2 import config

# Creating or entering a namespace forks a helper that answers within this many seconds;
# the default (2 s) is too short under TCG, where a fork of pytest takes a while.
config.default_communicate_timeout = 60
