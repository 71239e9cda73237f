"""``csboot firstboot``: the PXE/kickstart/preseed hook that turns a fresh install into a host.

Settings come from the command line, else from the kernel command line
(``csboot.broker=mqtt://10.0.0.5 csboot.roles=kvm,base csboot.host=kvm1.lab``), else from
an ``agent.toml`` the installer already dropped. It writes the agent configuration,
converges once (bounded wait for the desired state), publishes the status, and enables
the daemon so it takes over from the next boot on (also when the first converge failed).
"""

from __future__ import annotations

import logging
import shlex
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bootstrap.agent.config import AgentConfig, dump_config, load_config, parse_config
from bootstrap.agent.daemon import run_agent
from bootstrap.agent.unit import UNIT_NAME, UNIT_TEXT
from bootstrap.errors import ConfigError
from bootstrap.files import atomic_write
from bootstrap.host.root import HostRoot

log = logging.getLogger(__name__)

CONFIG_PATH = "/etc/cloudstack-bootstrap/agent.toml"
CMDLINE_KEYS = ("broker", "roles", "host", "prefix", "trusted_keys")


def parse_cmdline(text: str) -> dict[str, str]:
    """The ``csboot.KEY=VALUE`` words of a kernel command line (others are ignored)."""
    try:
        words = shlex.split(text)
    except ValueError:
        words = text.split()
    found = {}
    for word in words:
        key, sep, value = word.partition("=")
        if sep and key.startswith("csboot."):
            name = key.removeprefix("csboot.").replace("-", "_")
            if name in CMDLINE_KEYS:
                found[name] = value
    return found


def _csv(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


@dataclass(frozen=True, slots=True)
class Settings:
    """What the operator gave explicitly (arguments win over the kernel command line)."""

    brokers: tuple[str, ...] = ()
    roles: tuple[str, ...] = ()
    host: str | None = None
    prefix: str | None = None
    trusted_keys: tuple[str, ...] = ()
    tls: Mapping[str, str] | None = None
    auth: Mapping[str, str] | None = None
    rollback_window: float | None = None
    debounce: float | None = None

    def overlay(self, cmdline: Mapping[str, str]) -> Settings:
        return Settings(
            brokers=self.brokers or tuple(_csv(cmdline.get("broker", ""))),
            roles=self.roles or tuple(_csv(cmdline.get("roles", ""))),
            host=self.host or cmdline.get("host"),
            prefix=self.prefix or cmdline.get("prefix"),
            trusted_keys=self.trusted_keys or tuple(_csv(cmdline.get("trusted_keys", ""))),
            tls=self.tls,
            auth=self.auth,
            rollback_window=self.rollback_window,
            debounce=self.debounce,
        )


def build_config(settings: Settings, root: Path, existing: AgentConfig | None) -> AgentConfig:
    """Explicit settings over an existing config; ``broker`` must come from somewhere."""
    data: dict[str, Any] = (
        existing.model_dump(mode="json", exclude_none=True) if existing is not None else {}
    )
    if existing is not None:
        data["brokers"] = [b.url for b in existing.brokers]
    for key in ("host", "prefix", "rollback_window", "debounce", "tls", "auth"):
        value = getattr(settings, key)
        if value:
            data[key] = dict(value) if isinstance(value, Mapping) else value
    if settings.brokers:
        data["brokers"] = list(settings.brokers)
    if settings.roles:
        data["roles"] = list(settings.roles)
    if settings.trusted_keys:
        data["trusted_keys"] = list(settings.trusted_keys)
    if "brokers" not in data:
        raise ConfigError("broker: give --broker or csboot.broker= on the kernel command line")
    data["root"] = str(root)
    return parse_config(data)


def enable_unit(host: HostRoot) -> Path:
    """What ``systemctl enable`` does, but offline and under ``--root``: install + symlink."""
    unit = f"/etc/systemd/system/{UNIT_NAME}"
    shipped = [
        p
        for p in (f"/lib/systemd/system/{UNIT_NAME}", f"/usr/lib/systemd/system/{UNIT_NAME}")
        if host.path(p).exists()
    ]
    target = shipped[0] if shipped else unit
    if not shipped and not host.path(unit).exists():
        atomic_write(host.path(unit), UNIT_TEXT.encode(), mode=0o644)
    link = host.path(f"/etc/systemd/system/multi-user.target.wants/{UNIT_NAME}")
    link.parent.mkdir(parents=True, exist_ok=True)
    if link.is_symlink() or link.exists():
        if str(link.readlink()) == target:
            return link
        link.unlink()
    link.symlink_to(target)
    return link


def firstboot(
    settings: Settings,
    *,
    root: Path,
    cmdline: str,
    config_path: str = CONFIG_PATH,
    timeout: float = 300.0,
) -> int:
    """0 when the host converged, 1 otherwise (the daemon is enabled either way)."""
    host = HostRoot(root)
    path = host.path(config_path)
    existing = load_config(path) if path.exists() else None
    config = build_config(settings.overlay(parse_cmdline(cmdline)), root, existing)
    atomic_write(path, dump_config(config).encode(), mode=0o600)
    log.info("wrote %s (host %s, roles %s)", path, config.host, ",".join(config.roles))
    try:
        code = run_agent(config, once=True, wait=timeout)
    finally:
        link = enable_unit(host)
        log.info("enabled %s", link)
    return code
