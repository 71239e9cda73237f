"""The host firewall: our own nftables table ``inet cloudstack_bootstrap``, nothing else.

Through libnftables' JSON API only. We list only our table and replace it in one atomic
batch, never flush the ruleset nor edit another tool's tables. libnftables works in the
network namespace of the *calling thread* (its netlink socket is opened there), so every
call runs inline in the caller's thread: never hand it to an executor thread.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextvars import ContextVar
from pathlib import Path
from typing import Any, ClassVar

from bootstrap.engine.resource import Change, Resource
from bootstrap.errors import ResourceError
from bootstrap.model.spec import Firewall
from bootstrap.resources.nft_rules import (
    FAMILY,
    TABLE,
    FirewallState,
    describe,
    desired_state,
    parse_listing,
    replace_batch,
    summary,
)

__all__ = ["FirewallResource", "FirewallState", "nft_session"]

NAME = f"nft/{FAMILY} {TABLE}"


_session: ContextVar[dict[int, Any] | None] = ContextVar("nft_session", default=None)


@contextlib.contextmanager
def nft_session() -> Iterator[None]:
    """libnftables contexts kept for the block (one transaction), one per namespace, then
    freed. Freeing one waits on the kernel, 10-20 ms of wall time; made per call, an
    apply paid it four times."""
    token = _session.set({})
    try:
        yield
    finally:
        _session.reset(token)


def _context() -> Any:
    """A context for the namespace this thread is in: its netlink socket lives in the
    namespace it was made in."""
    try:
        import nftables
    except ImportError as exc:
        raise ResourceError("libnftables' python binding is missing", resource=NAME) from exc
    kept = _session.get()
    netns = Path("/proc/thread-self/ns/net").stat().st_ino
    nft = kept.get(netns) if kept is not None else None
    if nft is None:
        nft = nftables.Nftables()
        nft.set_json_output(True)
        if kept is not None:
            kept[netns] = nft
    return nft


def _run(batch: dict[str, Any]) -> dict[str, Any]:
    """One libnftables call in this thread's namespace; errors carry nft's own words."""
    rc, output, error = _context().json_cmd(batch)
    if rc != 0:
        raise ResourceError(f"nft: {str(error).strip()}", resource=NAME)
    return output if isinstance(output, dict) else {}


def read_table() -> FirewallState | None:
    """Our table as it is now; None when there is none."""
    table = {"family": FAMILY, "name": TABLE}
    try:
        listing = _run({"nftables": [{"list": {"table": table}}]})
    except ResourceError:
        # listing a missing table is an error; tell "absent" from a real failure
        tables = _run({"nftables": [{"list": {"tables": {"family": FAMILY}}}]})
        if any(o.get("table", {}).get("name") == TABLE for o in tables.get("nftables", [])):
            raise
        return None
    return parse_listing(listing)


def write_table(state: FirewallState | None) -> None:
    """Replace our table with ``state`` (None: remove it) in one atomic transaction."""
    _run(replace_batch(state))


class FirewallResource(Resource[FirewallState | None]):
    """The seed's port list as an nftables input chain; ``None`` spec = leave it alone."""

    network = True  # can cut a network path

    state_type: ClassVar[Any] = FirewallState | None

    def __init__(self, firewall: Firewall | None, *, remove: bool = False) -> None:
        self._firewall = firewall
        self._remove = remove  # a firewall manager opens the ports: our table goes

    @property
    def name(self) -> str:
        return NAME

    async def observe(self) -> FirewallState | None:
        return read_table()

    def target(self, current: FirewallState | None) -> FirewallState | None:
        if self._remove:
            return None
        if self._firewall is None:  # no firewall section: unmanaged, keep what is there
            return current
        return desired_state(self._firewall)

    def diff(self, current: FirewallState | None, target: FirewallState | None) -> list[Change]:
        if current == target:
            return []
        if target is None:
            why = "; the firewall manager opens the ports" if self._remove else ""
            return [Change(NAME, "delete", f"our table only; other tables stay{why}")]
        if current is None:
            return [Change(NAME, "create", summary(target))]
        lines = describe(current, target) or ["objects of our table in another order"]
        return [Change(NAME, "modify", line) for line in lines]

    async def apply(self, current: FirewallState | None, target: FirewallState | None) -> None:
        if current == target:
            return
        write_table(target)
