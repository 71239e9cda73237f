"""systemd integration without a dependency: sd_notify and journald-friendly log lines.

``sd_notify`` sends ``READY=1`` / ``STATUS=...`` as one datagram to ``$NOTIFY_SOCKET``
(``@name`` is the abstract namespace). Log lines carry a ``<N>`` syslog priority prefix and
no timestamp: journald adds its own and parses the prefix into the entry's priority.
"""

from __future__ import annotations

import logging
import os
import socket
import sys

_PRIORITY = {
    logging.CRITICAL: 2,
    logging.ERROR: 3,
    logging.WARNING: 4,
    logging.INFO: 6,
    logging.DEBUG: 7,
}


def sd_notify(*lines: str) -> bool:
    """Tell systemd; False (and nothing else) when not run by systemd or it fails."""
    target = os.environ.get("NOTIFY_SOCKET")
    if not target:
        return False
    address = "\0" + target[1:] if target.startswith("@") else target
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.sendto("\n".join(lines).encode(), address)
    except OSError:
        return False
    return True


class JournalFormatter(logging.Formatter):
    """``<6>bootstrap.agent.daemon: converged roles/kvm v7``."""

    def format(self, record: logging.LogRecord) -> str:
        level = max((lvl for lvl in _PRIORITY if lvl <= record.levelno), default=logging.DEBUG)
        text = f"<{_PRIORITY[level]}>{record.name}: {record.getMessage()}"
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        return text.replace("\n", "\n" + f"<{_PRIORITY[level]}>")


def journal_logging(verbose: bool = False) -> None:
    """Route every log record to stderr in the journald format (replaces other handlers)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JournalFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    logging.getLogger("mqtt").setLevel(logging.WARNING)
