"""A small, blocking OVSDB client over the ``ovs`` library's IDL, with deadlines everywhere.

The ``ovs`` library is synchronous (poll loops); callers run it in a worker thread. Unlike
``Transaction.commit_block`` every wait here has a deadline, so a dead ovsdb-server or
ovs-vswitchd becomes an ``OvsdbError`` instead of a hung agent. The schema is fetched from
the server itself, so the client always matches the host's OVS version.

A connection is the expensive part (the ``ovs`` library parses JSON in Python): the schema
is fetched once per server and process (``_SCHEMAS``; dropped when a connection to that
server fails, so an upgraded server is asked again), and the client monitors only the
columns it reads, not the counters and status maps vswitchd keeps rewriting.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import Any, TypeVar

import ovs.db.idl
import ovs.jsonrpc
import ovs.poller
import ovs.stream

__all__ = ["DB", "OvsdbClient", "OvsdbError", "Row", "Txn", "connect", "ovsdb_session"]

DB = "Open_vSwitch"
TABLES = ("Open_vSwitch", "Bridge", "Port", "Interface")
UNREAD = frozenset(
    {
        "statistics",
        "status",
        "rstp_statistics",
        "rstp_status",
        "bfd_status",
        "cfm_fault",
        "cfm_fault_status",
        "cfm_health",
        "cfm_remote_mpids",
        "cfm_remote_opstate",
        "lacp_current",
        "link_resets",
        "link_speed",
        "link_state",
        "duplex",
        "admin_state",
        "ifindex",
        "mac_in_use",
        "datapath_types",
        "iface_types",
        "dpdk_initialized",
        "dpdk_version",
        "ovs_version",
        "db_version",
        "system_type",
        "system_version",
    }
)
"""Columns vswitchd keeps rewriting (counters, link status) or that we never read: not
monitored, so a connection does not parse them. Everything else of TABLES is."""
_SCHEMAS: dict[str, dict[str, Any]] = {}

Row = Any
"""An ``ovs.db.idl.Row``: columns are attributes (untyped in the ``ovs`` library)."""
Txn = Any
"""An ``ovs.db.idl.Transaction``."""
T = TypeVar("T")


class OvsdbError(RuntimeError):
    """OVSDB could not be reached, a transaction failed, or vswitchd did not catch up."""


def _schema(remote: str, timeout: float) -> dict[str, Any]:
    err, stream = ovs.stream.Stream.open_block(
        ovs.stream.Stream.open(remote), timeout=int(timeout * 1000)
    )
    if err or stream is None:
        raise OvsdbError(f"cannot connect to {remote}: {os.strerror(err) if err else 'no stream'}")
    rpc = ovs.jsonrpc.Connection(stream)
    try:
        request = ovs.jsonrpc.Message.create_request("get_schema", [DB])
        err, reply = rpc.transact_block(request)
        if err or reply is None or reply.error:
            raise OvsdbError(f"get_schema from {remote} failed: {err or reply.error}")
        schema: dict[str, Any] = reply.result
        return schema
    finally:
        rpc.close()


class OvsdbClient:
    """One IDL connection to the Open_vSwitch database, synced before use."""

    def __init__(self, socket: Path, *, timeout: float = 10.0) -> None:
        self.remote = f"unix:{socket}"
        self.timeout = timeout
        if not socket.exists():
            raise OvsdbError(f"no OVSDB socket at {socket} (is ovsdb-server running?)")
        schema = _SCHEMAS.get(self.remote) or _schema(self.remote, timeout)
        helper = ovs.db.idl.SchemaHelper(schema_json=schema)
        for table in TABLES:
            columns = schema["tables"][table]["columns"]
            helper.register_columns(table, [c for c in columns if c not in UNREAD])
        self.idl = ovs.db.idl.Idl(self.remote, helper)
        try:
            self._run_until(self.idl.has_ever_connected, "initial sync")
        except OvsdbError:
            _SCHEMAS.pop(self.remote, None)
            self.idl.close()
            raise
        _SCHEMAS[self.remote] = schema
        session = getattr(self.idl, "_session", None)
        self._seqno = session.get_seqno() if session is not None else None

    def close(self) -> None:
        self.idl.close()

    # -- reading --------------------------------------------------------------------------

    def rows(self, table: str) -> list[Row]:
        return list(self.idl.tables[table].rows.values())

    def root(self) -> Row:
        rows = self.rows("Open_vSwitch")
        if len(rows) != 1:
            raise OvsdbError(f"expected one Open_vSwitch row, found {len(rows)} (ovs-vsctl init?)")
        return rows[0]

    def wait_until(self, ready: Callable[[], bool], timeout: float) -> bool:
        """Keep reading updates until ``ready()`` or ``timeout``; whether it became ready."""
        try:
            self._run_until(ready, "a condition", timeout)
        except OvsdbError:
            return False
        return True

    def refresh(self) -> None:
        """Take in whatever the server sent since the last look."""
        self.idl.run()

    def same_session(self) -> bool:
        """After :meth:`refresh`, whether the connection synced at the start is still the
        one up: after a drop the ``ovs`` library reconnects on its own and, until its new
        sync arrives, serves the old replica. (Its ``Idl`` keeps the session private and
        has no such question.)"""
        session = getattr(self.idl, "_session", None)
        if session is None:
            return False
        session.run()  # a read that met the server's end is taken in only by the next run
        return bool(session.is_connected()) and session.get_seqno() == self._seqno

    # -- writing --------------------------------------------------------------------------

    def transact(
        self,
        build: Callable[[Txn], T],
        *,
        changed: Callable[[T], bool] = bool,
        wait_vswitchd: bool = True,
        attempts: int = 5,
    ) -> T:
        """Build and commit one transaction; rebuild on TRY_AGAIN (a concurrent writer).

        ``build`` edits rows through the transaction and returns a result; when
        ``changed(result)`` is false nothing is committed. With ``wait_vswitchd`` the
        transaction bumps ``next_cfg`` and returns only once ovs-vswitchd applied it,
        so kernel devices for new internal ports exist when this returns.
        """
        for _ in range(attempts):
            self.refresh()
            txn = ovs.db.idl.Transaction(self.idl)
            txn.add_comment("cloudstack-bootstrap")
            result = build(txn)
            if not changed(result):
                txn.abort()
                return result
            if wait_vswitchd:
                self.root().increment("next_cfg")
            status = self._commit(txn)
            if status == ovs.db.idl.Transaction.TRY_AGAIN:
                continue
            if status not in (ovs.db.idl.Transaction.SUCCESS, ovs.db.idl.Transaction.UNCHANGED):
                raise OvsdbError(f"transaction {status}: {txn.get_error()}")
            if wait_vswitchd and status == ovs.db.idl.Transaction.SUCCESS:
                self._wait_cfg(int(txn.get_increment_new_value()))
            return result
        raise OvsdbError(f"transaction kept conflicting after {attempts} attempts")

    def _wait_cfg(self, want: int) -> None:
        """ovs-vswitchd copies next_cfg to cur_cfg once it has reconfigured."""
        self._run_until(lambda: self.root().cur_cfg >= want, "ovs-vswitchd to apply the change")

    def _commit(self, txn: Txn) -> str:
        deadline = time.monotonic() + self.timeout
        while True:
            status: str = txn.commit()
            if status != ovs.db.idl.Transaction.INCOMPLETE:
                return status
            if time.monotonic() > deadline:
                txn.abort()
                raise OvsdbError(f"commit to {self.remote} timed out after {self.timeout:g}s")
            self.idl.run()
            poller = ovs.poller.Poller()
            self.idl.wait(poller)
            txn.wait(poller)
            poller.timer_wait(100)
            poller.block()

    def _run_until(
        self, ready: Callable[[], bool], what: str, timeout: float | None = None
    ) -> None:
        timeout = self.timeout if timeout is None else timeout
        deadline = time.monotonic() + timeout
        while True:
            self.idl.run()
            if ready():
                return
            left = deadline - time.monotonic()
            if left <= 0:
                raise OvsdbError(f"timed out after {timeout:g}s waiting for {what}")
            poller = ovs.poller.Poller()
            self.idl.wait(poller)
            poller.timer_wait(int(min(left, 0.1) * 1000))
            poller.block()


_session: ContextVar[dict[str, OvsdbClient] | None] = ContextVar("ovsdb_session", default=None)


@contextmanager
def ovsdb_session() -> Iterator[None]:
    """Connections kept for the block (one transaction: the plan's look, the apply, the
    verification, a rollback), one per server, closed after it. A connection is the IDL
    built from the schema and a first sync, ~7 ms of CPU; an apply made three. Callers
    use a kept connection one at a time (the engine runs its resources in turn)."""
    token = _session.set({})
    try:
        yield
    finally:
        kept = _session.get() or {}
        _session.reset(token)
        for client in kept.values():
            client.close()


@contextmanager
def connect(socket: Path, *, timeout: float = 10.0) -> Iterator[OvsdbClient]:
    """A connection to the server at ``socket``: the session's (brought up to date), a new
    one if it lost the server, or, outside a session, one for the block. The kept one is
    taken out while in use, so a second caller meanwhile gets its own, never a shared one;
    a dead server is an :class:`OvsdbError` (at once without its socket, else at the
    deadline)."""
    kept = _session.get()
    if kept is None:
        alone = OvsdbClient(socket, timeout=timeout)
        try:
            yield alone
        finally:
            alone.close()
        return
    key = str(socket)
    client = kept.pop(key, None)
    if client is not None:
        client.refresh()
        if not client.same_session():  # the server went away: its replica may be stale
            client.close()
            client = None
    if client is None:
        client = OvsdbClient(socket, timeout=timeout)
    client.timeout = timeout
    try:
        yield client
    except BaseException:  # an error leaves it out of the session, closed
        client.close()
        raise
    kept[key] = client
