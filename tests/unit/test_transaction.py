"""The apply transaction: all or nothing, probes that count only if they passed before."""

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
from bootstrap.engine.transaction import apply_plan, recover
from bootstrap.errors import ProbeError, ResourceError, VerifyError


class TextFile(Resource[str | None]):
    """A whole file with fixed desired text; ``broken`` makes apply fail or not stick."""

    state_type: ClassVar[object] = str | None

    def __init__(
        self, path: Path, text: str | None, *, broken: str = "", restarts: str = ""
    ) -> None:
        self.path, self.text, self.broken = path, text, broken
        self.restarts = frozenset({restarts} if restarts else set())

    @property
    def name(self) -> str:
        return f"file/{self.path.name}"

    async def observe(self) -> str | None:
        return self.path.read_text() if self.path.exists() else None

    def target(self, current: str | None) -> str | None:
        return self.text

    def diff(self, current: str | None, target: str | None) -> list[Change]:
        if current == target:
            return []
        action = "create" if current is None else "delete" if target is None else "modify"
        return [Change(self.name, action, f"{current!r} -> {target!r}")]

    async def apply(self, current: str | None, target: str | None) -> None:
        if self.broken == "apply" and target == self.text:
            raise OSError("disk on fire")
        if self.broken == "sticky" and target == self.text:
            return  # claims success, changes nothing: verification must catch it
        if target is None:
            self.path.unlink(missing_ok=True)
        else:
            self.path.write_text(target)


@pytest.fixture
async def listener() -> AsyncIterator[tuple[asyncio.Server, int]]:
    server = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    yield server, port
    server.close()


async def test_converges_and_is_idempotent(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    a.write_text("old")
    resources = [TextFile(a, "new", restarts="libvirtd"), TextFile(b, "fresh")]
    services = NoServices()
    journal = Journal(tmp_path / "journal.json")
    outcome = await apply_plan(await make_plan(resources), services=services, journal=journal)
    assert outcome.state == "converged", outcome.error
    assert (a.read_text(), b.read_text()) == ("new", "fresh")
    assert services.restarted == ["libvirtd"]
    assert not journal.path.exists()
    assert not await make_plan(resources)  # second plan: nothing to do


async def test_a_failing_resource_reverts_everything_before_it(tmp_path: Path) -> None:
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    a.write_text("old")
    resources = [TextFile(a, "new"), TextFile(b, "created"), TextFile(c, "x", broken="apply")]
    outcome = await apply_plan(await make_plan(resources), services=NoServices())
    assert outcome.state == "rolled_back"
    assert isinstance(outcome.error, ResourceError) and outcome.error.resource == "file/c"
    assert a.read_text() == "old" and not b.exists() and not c.exists()


async def test_verification_catches_an_apply_that_did_not_stick(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    resources = [TextFile(a, "new"), TextFile(b, "new", broken="sticky")]
    outcome = await apply_plan(
        await make_plan(resources), services=NoServices(), verify_timeout=0.2
    )
    assert outcome.state == "rolled_back"
    assert isinstance(outcome.error, VerifyError) and outcome.error.resource == "file/b"
    assert not a.exists()


async def test_a_probe_lost_by_the_change_rolls_back(
    tmp_path: Path, listener: tuple[asyncio.Server, int]
) -> None:
    server, port = listener

    class CutsThePath(TextFile):
        network = True

        async def apply(self, current: str | None, target: str | None) -> None:
            await super().apply(current, target)
            if target == self.text:
                server.close()
                await server.wait_closed()

    a = tmp_path / "a"
    probe = TcpProbe("127.0.0.1", port, timeout=0.2)
    plan = await make_plan([CutsThePath(a, "new")])
    outcome = await apply_plan(plan, services=NoServices(), probes=[probe], rollback_window=0.5)
    assert outcome.state == "rolled_back"
    assert isinstance(outcome.error, ProbeError) and "tcp 127.0.0.1" in outcome.error.message
    assert not a.exists()


async def test_a_probe_that_never_passed_does_not_count(tmp_path: Path) -> None:
    dead = TcpProbe("127.0.0.1", 9, timeout=0.2)  # discard port: nobody listens
    plan = await make_plan([TextFile(tmp_path / "a", "new")])
    outcome = await apply_plan(plan, services=NoServices(), probes=[dead], rollback_window=0.3)
    assert outcome.state == "converged"


class NetworkFile(TextFile):
    network = True  # stands in for a link or an address: probes judge it


async def test_a_file_only_change_is_not_judged_by_probes(
    tmp_path: Path, listener: tuple[asyncio.Server, int]
) -> None:
    """The broker going away during a file-only change is no reason to revert it."""
    server, port = listener

    class BrokerGoesAway(TextFile):
        async def apply(self, current: str | None, target: str | None) -> None:
            await super().apply(current, target)
            server.close()
            await server.wait_closed()

    probe = TcpProbe("127.0.0.1", port, timeout=0.2)
    plan = await make_plan([BrokerGoesAway(tmp_path / "a", "new")])
    outcome = await apply_plan(plan, services=NoServices(), probes=[probe], rollback_window=0.3)
    assert outcome.state == "converged" and outcome.checks == []


async def test_kept_probe_is_reported_as_a_check(
    tmp_path: Path, listener: tuple[asyncio.Server, int]
) -> None:
    _, port = listener
    plan = await make_plan([NetworkFile(tmp_path / "a", "new")])
    outcome = await apply_plan(plan, services=NoServices(), probes=[TcpProbe("127.0.0.1", port)])
    assert outcome.state == "converged"
    assert [(c.name, c.ok) for c in outcome.checks] == [(f"probe tcp 127.0.0.1:{port}", True)]


async def test_recovery_after_a_crash_reverts_to_the_journal(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    a.write_text("old")
    resources = [TextFile(a, "new"), TextFile(b, "new")]
    plan = await make_plan(resources)
    journal = Journal(tmp_path / "journal.json")
    journal.begin({}, {s.resource.name: s.resource.dump(s.current) for s in plan.pending})
    await resources[0].apply("old", "new")  # ...and then the process died
    assert await recover(journal, resources) == ["file/a", "file/b"]
    assert a.read_text() == "old" and not b.exists()
    assert not journal.path.exists()
    assert await recover(journal, resources) is None
