"""The host: file root and preflight checks."""

from bootstrap.host.root import HostRoot

__all__ = ["HostRoot"]
