"""What an operator compares before and after: ``ip -d link``, addresses, routes.

The kernel's live counters are masked (bridge timers, operstate while a carrier settles,
and the queueing discipline the kernel attaches the first time a link comes up);
every configured byte is compared as printed. IPv6 duplicate address detection
(``tentative``) is live state too.
"""

from __future__ import annotations

import re

from simulator.namespaces import Namespace

__all__ = ["host_view"]

_LIVE = re.compile(
    r"(\b\w+_timer)\s+[\d.]+|(\bstate) (UP|DOWN|UNKNOWN|LOWERLAYERDOWN)\b|(\bqdisc) \S+"
)


def _ip(ns: Namespace, *argv: str) -> str:
    return str(ns.run(["ip", *argv], capture_output=True, text=True).stdout)


def host_view(ns: Namespace) -> dict[str, str]:
    """Links (with -d), addresses and every route table, as ``ip`` prints them."""

    def masked(text: str) -> str:
        return _LIVE.sub(lambda m: f"{m.group(1) or m.group(2) or m.group(3)} *", text)

    return {
        "links": masked(_ip(ns, "-d", "link", "show")),
        # an IPv6 link-local address is "tentative" while the kernel's DAD runs
        "addresses": masked(_ip(ns, "-d", "address", "show")).replace(" tentative", ""),
        "routes": _ip(ns, "route", "show", "table", "all"),
    }
