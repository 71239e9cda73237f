"""``bootstrap.netlink``: one link by name, and waiting for a link to appear, on a real kernel."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from bootstrap import netlink
from bootstrap.netlink import AsyncIPRoute, get_link, wait_link
from simulator.namespaces import Namespace, veth_pair

pytestmark = [pytest.mark.root, pytest.mark.netns]

NamespaceFactory = Callable[[str], Namespace]


def test_get_link_names_one_link_or_none(make_ns: NamespaceFactory) -> None:
    ns = make_ns("a")

    async def look() -> tuple[object, object]:
        async with AsyncIPRoute() as ipr:
            return await get_link(ipr, ifname="lo"), await get_link(ipr, ifname="nope0")

    with ns.entered():
        lo, missing = asyncio.run(look())
    assert lo is not None and lo.get("ifname") == "lo"
    assert missing is None


def test_wait_link_returns_a_link_made_while_it_waits(
    make_ns: NamespaceFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The link is made once the wait listens and has looked in vain (as vswitchd makes an
    internal port after the OVS transaction): the kernel's announcement returns it, long
    before its deadline; one that never comes ends the wait at it."""
    a, b = make_ns("a"), make_ns("b")
    looks: list[object] = []
    listening = asyncio.Event()
    bound: list[object] = []
    real_bind, real_get = AsyncIPRoute.bind, netlink.get_link

    async def bind(self: AsyncIPRoute, *args: object, **kwargs: object) -> object:
        bound.append(self)
        return await real_bind(self, *args, **kwargs)

    async def get(ipr: object, **key: object) -> object:
        found = await real_get(ipr, **key)
        looks.append(found)
        if found is None and bound:
            listening.set()  # listening, and it looked: the link may come now
        return found

    monkeypatch.setattr(AsyncIPRoute, "bind", bind)
    monkeypatch.setattr(netlink, "get_link", get)

    async def scenario() -> tuple[object, object, float]:
        loop = asyncio.get_running_loop()
        async with AsyncIPRoute() as ipr:
            waiting = asyncio.create_task(wait_link(ipr, "late0", timeout=60))
            await listening.wait()
            await asyncio.to_thread(veth_pair, a, "late0", b, "late1")
            t = loop.time()
            link = await waiting
            took = loop.time() - t
            never = await wait_link(ipr, "never0", timeout=0.2)
        return link, never, took

    with a.entered():
        link, never, took = asyncio.run(scenario())
    assert link is not None and link.get("ifname") == "late0"  # type: ignore[attr-defined]
    assert looks and all(found is None for found in looks)  # the announcement brought it
    assert took < 30  # woken by the announcement, not by the 60 s deadline
    assert never is None


def test_wait_link_returns_an_existing_link_at_once(make_ns: NamespaceFactory) -> None:
    ns = make_ns("a")

    async def wait() -> object:
        async with AsyncIPRoute() as ipr:
            return await wait_link(ipr, "lo", timeout=0)

    with ns.entered():
        link = asyncio.run(wait())
    assert link is not None and link.get("ifname") == "lo"  # type: ignore[attr-defined]
