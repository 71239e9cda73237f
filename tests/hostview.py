"""What an operator compares before and after: ``ip -d link``, addresses, routes.

The kernel's live counters are masked (bridge timers, operstate while a carrier settles,
and the queueing discipline the kernel attaches the first time a link comes up);
every configured byte is compared as printed.
"""

from __future__ import annotations

import re
import time

from simulator.namespaces import Namespace

__all__ = ["host_view"]

_LIVE = re.compile(
    r"(\b\w+_timer)\s+[\d.]+|(\bstate) (?:UP|DOWN|UNKNOWN|LOWERLAYERDOWN)\b|(\bqdisc) \S+"
)


def _ip(ns: Namespace, *argv: str) -> str:
    return str(ns.run(["ip", *argv], capture_output=True, text=True).stdout)


def _dad_done(ns: Namespace, timeout: float = 10.0) -> None:
    """Wait until no IPv6 address is tentative: DAD adds a local route when it ends."""
    deadline = time.monotonic() + timeout
    while "tentative" in _ip(ns, "-6", "address", "show"):
        if time.monotonic() > deadline:
            raise AssertionError("IPv6 duplicate address detection never finished")
        time.sleep(0.1)  # poll the kernel's own state


def host_view(ns: Namespace) -> dict[str, str]:
    """Links (with -d), addresses and every route table, as ``ip`` prints them, once the
    kernel's IPv6 duplicate address detection has settled."""
    _dad_done(ns)

    def masked(text: str) -> str:
        return _LIVE.sub(lambda m: f"{m.group(1) or m.group(2) or m.group(3)} *", text)

    return {
        "links": masked(_ip(ns, "-d", "link", "show")),
        "addresses": masked(_ip(ns, "-d", "address", "show")),
        "routes": _ip(ns, "route", "show", "table", "all"),
    }
