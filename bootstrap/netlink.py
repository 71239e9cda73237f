"""pyroute2's rtnetlink sockets, without pyroute2's package ``__init__``.

``import pyroute2`` runs a package ``__init__`` that imports every netlink family the
library knows (NDB, IPDB, nl80211, WireGuard, conntrack, IPVS, ...): ~140 ms and ~6 MiB
in every agent, for the two classes the engine uses. So, where nothing has imported
pyroute2 yet, the package is registered without running its ``__init__`` and the classes
come from their own modules. The first name asked of the package itself (``from pyroute2
import NDB`` anywhere else in the process) runs the real ``__init__`` at that moment, so
other code sees the whole package as usual (``bootstrap.lazy.register_lazily``).

With them, what several resources ask of the kernel: one link by name (:func:`get_link`)
and a link that is about to appear (:func:`wait_link`).
"""

from __future__ import annotations

import asyncio
import errno
from typing import Any

from bootstrap.lazy import register_lazily

__all__ = ["AsyncIPRoute", "IPRoute", "NetlinkError", "get_link", "wait_link"]


register_lazily("pyroute2")

from pyroute2.iproute.linux import AsyncIPRoute, IPRoute  # noqa: E402
from pyroute2.netlink.exceptions import NetlinkError  # noqa: E402
from pyroute2.netlink.rtnl import RTM_NEWLINK, RTMGRP_LINK  # noqa: E402


async def get_link(ipr: Any, **key: Any) -> Any | None:
    """One link message by name or index (``RTM_GETLINK`` for that link alone, not a dump
    of every link); None when there is no such link."""
    try:
        (msg,) = await ipr.link("get", **key)
    except NetlinkError as exc:
        if exc.code == errno.ENODEV:
            return None
        raise
    return msg


async def wait_link(ipr: Any, ifname: str, timeout: float) -> Any | None:
    """The link ``ifname`` once it exists, waiting at most ``timeout`` seconds for it to
    appear (None if it does not; one that exists is returned whatever the timeout): an OVS
    internal port, made by ovs-vswitchd after its database changed. No polling: the kernel
    announces every new link to the listeners of ``RTMGRP_LINK``; a link not there at the
    first look is looked for again once listening, then awaited."""
    if (link := await get_link(ipr, ifname=ifname)) is not None:
        return link  # the usual case: no listening socket needed
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        async with AsyncIPRoute() as events:
            await events.bind(groups=RTMGRP_LINK)
            if (link := await get_link(ipr, ifname=ifname)) is not None:
                return link
            try:
                async with asyncio.timeout_at(deadline):
                    while True:
                        async for msg in events.get():
                            if msg["header"]["type"] == RTM_NEWLINK and (
                                msg.get("ifname") == ifname
                            ):
                                return msg
            except TimeoutError:
                return None
            except NetlinkError:  # an overrun lost announcements: look again
                continue
