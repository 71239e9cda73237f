"""The transaction is total (issue 10, item 3): any exception, ours or not, from apply,
verify, a service restart or a probe, and a cancellation, revert everything in-process;
the journal is cleared only when reverted; after a revert the counted probes are tried
again and the outcome says whether the path came back. Real files, real sockets."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import ClassVar

import pytest

from bootstrap.engine.journal import Journal
from bootstrap.engine.plan import make_plan
from bootstrap.engine.probe import TcpProbe
from bootstrap.engine.resource import Change, Resource
from bootstrap.engine.services import NoServices
from bootstrap.engine.transaction import apply_plan
from bootstrap.errors import InternalError, ProbeError, ResourceError


class Text(Resource[str | None]):
    """A whole file; ``fault`` names the stage that raises a non-project exception."""

    state_type: ClassVar[object] = str | None
    network = True  # judged by probes, like a link

    def __init__(self, path: Path, text: str, fault: str = "") -> None:
        self.path, self.text, self.fault = path, text, fault
        self.restarts = frozenset({"svc"})
        self.applied = False

    @property
    def name(self) -> str:
        return f"file/{self.path.name}"

    async def observe(self) -> str | None:
        if self.fault == "verify" and self.applied:
            self.fault = ""  # once: the revert observes again
            raise ZeroDivisionError("observe blew up")
        return self.path.read_text() if self.path.exists() else None

    def target(self, current: str | None) -> str | None:
        return self.text

    def diff(self, current: str | None, target: str | None) -> list[Change]:
        return [] if current == target else [Change(self.name, "modify", "")]

    async def apply(self, current: str | None, target: str | None) -> None:
        if target is None:
            self.path.unlink(missing_ok=True)
        else:
            self.path.write_text(target)
        if target == self.text:
            self.applied = True
            if self.fault == "apply":
                raise KeyError("not a BootstrapError")
        else:
            self.applied = False


class Services(NoServices):
    def __init__(self, fail: bool) -> None:
        super().__init__()
        self.fail = fail

    async def restart(self, service: str) -> None:
        if self.fail and not self.restarted:
            self.restarted.append(service)
            raise AttributeError("restart blew up")
        await super().restart(service)


class RaisingProbe:
    name = "raises"

    def __init__(self) -> None:
        self.calls = 0

    async def check(self) -> bool:
        self.calls += 1
        if self.calls > 1:
            raise RecursionError("probe blew up")
        return True


@pytest.fixture
async def port() -> AsyncIterator[int]:
    server = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0)
    yield server.sockets[0].getsockname()[1]
    server.close()


@pytest.mark.parametrize("stage", ["apply", "verify", "restart", "probe"])
async def test_any_exception_anywhere_reverts_everything(tmp_path: Path, stage: str) -> None:
    first, second = tmp_path / "a", tmp_path / "b"
    first.write_text("old")
    resources = [Text(first, "new"), Text(second, "new", fault=stage)]
    journal = Journal(tmp_path / "journal.json")
    probes = [RaisingProbe()] if stage == "probe" else []
    outcome = await apply_plan(
        await make_plan(resources),
        services=Services(fail=stage == "restart"),
        probes=probes,
        journal=journal,
        rollback_window=0.5,
        verify_timeout=0.2,
    )
    assert outcome.state == "rolled_back", outcome.error
    assert first.read_text() == "old" and not second.exists()
    assert not journal.path.exists()  # reverted: nothing left to recover
    error = outcome.error
    assert isinstance(error, ResourceError | ProbeError), error
    expected = {
        "apply": ResourceError,
        "verify": InternalError,
        "restart": ResourceError,
        "probe": ProbeError,
    }[stage]
    assert isinstance(error, expected), error
    assert "blew up" in error.message or "not a BootstrapError" in error.message


async def test_cancellation_reverts_shielded_then_propagates(tmp_path: Path, port: int) -> None:
    """SIGTERM in ``--once``: the task is cancelled while the probe waits; the revert runs to
    its end even though a second cancellation comes during it."""
    target = tmp_path / "a"
    target.write_text("old")
    journal = Journal(tmp_path / "journal.json")
    before, waiting = asyncio.Event(), asyncio.Event()

    class Waits(TcpProbe):
        async def check(self) -> bool:
            if before.is_set():  # after the change: the "path" never comes back
                waiting.set()
                await asyncio.sleep(3600)
            before.set()
            return await super().check()

    task = asyncio.create_task(
        apply_plan(
            await make_plan([Text(target, "new")]),
            services=NoServices(),
            probes=[Waits("127.0.0.1", port)],
            journal=journal,
            rollback_window=3600,
        )
    )
    await waiting.wait()
    assert target.read_text() == "new"
    task.cancel()
    await asyncio.sleep(0)
    task.cancel()  # again, during the revert
    with pytest.raises(asyncio.CancelledError):
        await task
    assert target.read_text() == "old"
    assert not journal.path.exists()


async def test_after_a_rollback_the_probes_are_tried_again(tmp_path: Path) -> None:
    """The path was cut by the change and comes back with the revert: the outcome says so."""
    server = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]

    class Cuts(Text):
        async def apply(self, current: str | None, target: str | None) -> None:
            nonlocal server
            await super().apply(current, target)
            if target == self.text:
                server.close()
                await server.wait_closed()
            else:  # the revert brings the path back
                server = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", port)

    outcome = await apply_plan(
        await make_plan([Cuts(tmp_path / "a", "new")]),
        services=NoServices(),
        probes=[TcpProbe("127.0.0.1", port, timeout=0.2)],
        rollback_window=0.5,
    )
    server.close()
    assert outcome.state == "rolled_back"
    after = [c for c in outcome.checks if c.name.endswith("after revert")]
    assert [(c.ok, c.detail) for c in after] == [(True, "reachable again")]
