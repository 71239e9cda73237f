"""The agent's worker (issue 11): the engine runs in a process the agent forks per job, and
every way that process can end leaves the host whole. Cancelled mid-apply, it reverts
before the agent goes on; killed mid-apply, the agent says so and the journal reverts
what it left; one worker acts on a host at a time, so a worker that outlived its agent
finishes before the next agent's begins. Real forks, real files, the real transaction."""

from __future__ import annotations

import asyncio
import fcntl
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from bootstrap.agent import worker
from bootstrap.agent.worker import Job, Result
from bootstrap.engine.journal import Journal
from bootstrap.engine.plan import make_plan
from bootstrap.engine.services import NoServices
from bootstrap.engine.transaction import apply_plan
from bootstrap.host.root import HostRoot
from bootstrap.model.spec import Spec
from simulator.broker import Mosquitto
from tests.faults.conftest import PREFIX, AgentProcess, Client, until
from tests.faults.payloads import doc
from tests.faults.test_sigkill import SPECS, alive, contents, references
from tests.mqtt.conftest import write_config
from tests.unit.test_transaction import TextFile

ROLE = f"{PREFIX}/roles/kvm/desired"


def children() -> set[int]:
    """This process's children (the workers it forked)."""
    found: set[int] = set()
    for task in Path("/proc/self/task").iterdir():
        found.update(int(p) for p in (task / "children").read_text().split())
    return found


def text(path: Path) -> str | None:
    """The file's text, None when absent (small files: read in the loop's thread)."""
    return path.read_text() if path.exists() else None


def spec_json(spec: Mapping[str, Any]) -> dict[str, Any]:
    return Spec.model_validate(spec).model_dump(mode="json")


async def test_a_worker_converges_plans_and_recovers_a_real_spec(tmp_path: Path) -> None:
    root = str(tmp_path)
    events: list[str] = []
    spec = spec_json(SPECS[0])
    done = await worker.run(Job("converge", root, spec=spec), lambda e, _d: events.append(e))
    assert done.ok, done.error
    assert done.changes and "apply" in events
    managed = contents(tmp_path)
    assert managed
    again = await worker.run(Job("plan", root, spec=spec), lambda *_: None)
    assert again.state == "planned" and again.changes == []
    # drift: a managed file edited by hand shows in the next plan
    name = next(iter(managed))
    (tmp_path / name).write_text("# edited by hand\n")
    drift = await worker.run(Job("plan", root, spec=spec), lambda *_: None)
    assert drift.changes and drift.error is None
    assert (await worker.recover(root, lambda *_: None)).reverted is None  # nothing pending
    assert not children()  # every worker was reaped


EARLY = """
import asyncio, json, os, sys, time
from pathlib import Path
import bootstrap.cli, bootstrap.agent.daemon  # what the agent holds
from bootstrap.agent.worker import Worker

def waiting_for_its_job(pid):  # blocked in read(2) on a pipe (imports read files)
    call = Path(f"/proc/{pid}/syscall").read_text().split()
    if call[0] != "0":
        return False
    try:
        return os.readlink(f"/proc/{pid}/fd/{int(call[1], 16)}").startswith("pipe:")
    except OSError:
        return False

async def main():
    early = Worker(sys.argv[1])
    early.spawn()
    (pid,) = map(int, Path(f"/proc/{os.getpid()}/task/{os.getpid()}/children").read_text().split())
    deadline = time.monotonic() + 30
    while not waiting_for_its_job(pid) and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    waited = waiting_for_its_job(pid)
    maps = {p: Path(f"/proc/{p}/maps").read_text() for p in (pid, os.getpid())}
    await early.dismiss()
    print(json.dumps({
        "waited for its job": waited,
        "YAML binding in the worker": "/_yaml." in maps[pid],
        "YAML binding in the agent": "/_yaml." in maps[os.getpid()],
        "engine in the agent": "bootstrap.converge" in sys.modules,
        "worker after dismiss": Path(f"/proc/{pid}").exists(),
    }))
asyncio.run(main())
"""


def test_a_worker_forked_early_imports_the_engine_before_its_job(tmp_path: Path) -> None:
    """What ``spawn`` is for: the worker of the next apply is forked when its documents
    arrive and imports the engine while the burst settles (the persistence resource's
    YAML binding is in the worker, never in the agent); one that gets no job is
    dismissed and gone."""
    repo = Path(__file__).resolve().parents[2]
    done = subprocess.run(
        [sys.executable, "-c", EARLY, str(tmp_path)],
        cwd=repo,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert json.loads(done.stdout) == {
        "waited for its job": True,
        "YAML binding in the worker": True,
        "YAML binding in the agent": False,
        "engine in the agent": False,
        "worker after dismiss": False,
    }


async def test_a_worker_forked_early_then_given_its_job(tmp_path: Path) -> None:
    early = worker.Worker(str(tmp_path))
    early.spawn()
    assert early.spawned
    done = await early.run(Job("converge", str(tmp_path), spec=spec_json(SPECS[0])), print)
    assert done.ok, done.error
    assert not early.spawned and not children()


async def test_an_invalid_spec_is_a_failed_result_naming_the_field(tmp_path: Path) -> None:
    bad = {**spec_json(SPECS[0]), "hypervisor": "xen"}
    done = await worker.run(Job("converge", str(tmp_path), spec=bad), lambda *_: None)
    assert done.state == "failed" and not done.died
    assert done.error is not None and done.error["field"] == "spec.hypervisor"


class Hangs(TextFile):
    """A file that is written, then the apply waits for ever: a transaction in progress."""

    def __init__(self, path: Path) -> None:
        super().__init__(path, "new")

    async def apply(self, current: str | None, target: str | None) -> None:
        await super().apply(current, target)
        if target == "new":
            await asyncio.sleep(3600)


def hanging_job(target: Path) -> Any:
    """A ``converge`` job that hangs mid-transaction on ``target`` (old → new), journalled
    beside it."""

    async def job(_job: Job, emit: worker.EventSink) -> Result:
        outcome = await apply_plan(
            await make_plan([Hangs(target)]),
            services=NoServices(),
            journal=Journal(target.parent / "journal.json"),
            on_event=emit,
        )
        return Result(outcome.state)

    return job


@pytest.fixture
def hanging(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """``converge`` jobs that hang mid-transaction on ``tmp_path/a``; the fork inherits the
    patched table."""
    target = tmp_path / "a"
    target.write_text("old")
    monkeypatch.setitem(worker.JOBS, "converge", hanging_job(target))
    return target


async def _mid_apply(target: Path) -> asyncio.Task[Result]:
    task = asyncio.create_task(worker.run(Job("converge", str(target.parent)), lambda *_: None))
    deadline = time.monotonic() + 30
    while text(target) != "new":
        assert time.monotonic() < deadline, "the worker never applied"
        await asyncio.sleep(0.01)
    return task


async def test_cancelled_mid_apply_the_worker_reverts_before_the_cancellation_ends(
    hanging: Path,
) -> None:
    task = await _mid_apply(hanging)
    (pid,) = children()
    task.cancel()
    await asyncio.sleep(0)
    task.cancel()  # again, while the worker reverts: still waited for
    with pytest.raises(asyncio.CancelledError):
        await task
    assert text(hanging) == "old"
    assert text(hanging.parent / "journal.json") is None
    assert pid not in children()


async def test_a_worker_killed_mid_apply_is_a_failed_result_saying_so(hanging: Path) -> None:
    task = await _mid_apply(hanging)
    (pid,) = children()
    os.kill(pid, signal.SIGKILL)
    done = await task
    assert done.died and done.state == "failed"
    assert done.error is not None and "killed by SIGKILL" in done.error["message"]
    assert text(hanging.parent / "journal.json")  # left for the recovery


AGENT = """
import asyncio, sys
from pathlib import Path
from bootstrap.agent import worker
from tests.faults.test_worker import hanging_job
target = Path(sys.argv[1])
worker.JOBS["converge"] = hanging_job(target)
asyncio.run(worker.run(worker.Job("converge", str(target.parent)), lambda *_: None))
"""


def test_when_the_agent_dies_its_worker_reverts_on_its_own(tmp_path: Path) -> None:
    """SIGKILL to the agent (here a process that runs one hanging apply in a worker): the
    worker gets SIGTERM from the kernel (``PR_SET_PDEATHSIG``), reverts and exits."""
    target = tmp_path / "a"
    target.write_text("old")
    repo = Path(__file__).resolve().parents[2]
    agent = subprocess.Popen([sys.executable, "-c", AGENT, str(target)], cwd=repo)
    try:
        until(lambda: text(target) == "new", 30, "the worker's apply")
        kids = Path(f"/proc/{agent.pid}/task/{agent.pid}/children").read_text().split()
        (pid,) = map(int, kids)
    finally:
        agent.kill()
        agent.wait(10)
    until(lambda: not alive(pid), 30, "the orphaned worker's end")
    assert text(target) == "old"
    assert text(tmp_path / "journal.json") is None


def _waiting_for_lock(pid: int, lock: Path) -> bool:
    """``/proc/locks`` lists ``pid`` blocked (``->``) on ``lock``'s flock."""
    inode = lock.stat().st_ino
    for line in Path("/proc/locks").read_text().splitlines():
        fields = line.split()
        if "->" in fields and "FLOCK" in fields:
            at = fields.index("->")
            holder, where = int(fields[at + 4]), fields[at + 5]
            if holder == pid and int(where.rsplit(":", 1)[1]) == inode:
                return True
    return False


async def test_one_worker_at_a_time_and_a_waiting_one_stops_at_once(tmp_path: Path) -> None:
    """A worker that outlived its agent holds the host's lock while it reverts: the next
    agent's worker waits for it; cancelled while waiting (nothing begun), it ends at once."""
    state = HostRoot(tmp_path).state_dir
    state.mkdir(parents=True)
    lock = state / "worker.lock"
    with lock.open("a") as held:
        fcntl.flock(held, fcntl.LOCK_EX)  # the outliving worker
        for cancel in (True, False):
            task = asyncio.create_task(worker.recover(str(tmp_path), lambda *_: None))
            deadline = time.monotonic() + 30
            while not any(_waiting_for_lock(pid, lock) for pid in children()):
                assert time.monotonic() < deadline, "the worker never waited for the lock"
                await asyncio.sleep(0.01)
            assert not task.done()
            if cancel:
                task.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await asyncio.wait_for(task, 10)
        fcntl.flock(held, fcntl.LOCK_UN)
    done = await asyncio.wait_for(task, 30)
    assert done.state == "recovered" and done.reverted is None
    assert not children()


def _worker_of(agent: AgentProcess) -> int | None:
    pid = agent.proc.pid
    kids = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return int(kids[0]) if kids else None


@pytest.mark.mqtt
def test_a_worker_killed_mid_apply_the_agent_reports_it_and_the_host_is_whole(
    tmp_path: Path, broker: Mosquitto, client: Client, root: Path
) -> None:
    """The worker (not the agent) SIGKILLed while the journal says a transaction is open:
    the agent reports ``failed`` naming the signal, recovers the host (every file of the
    old spec, or every file of the new), lives on, and converges the next version."""
    refs = references(tmp_path)
    agent = AgentProcess(write_config(tmp_path / "agent.toml", [broker.url], root, debounce=0.05))
    journal = root / "var/lib/cloudstack-bootstrap/journal.json"
    try:
        client.publish(ROLE, doc(1, **SPECS[0]))
        client.wait_status(lambda s: s["state"] == "converged")
        version, killed = 1, False
        while not killed:  # until a kill lands inside a transaction
            version += 1
            assert version < 40, "no kill landed mid-apply"
            client.publish(ROLE, doc(version, **SPECS[(version - 1) % 2]))
            deadline = time.monotonic() + 30
            while not ((pid := _worker_of(agent)) and journal.exists()):
                assert time.monotonic() < deadline, "no apply began"
                time.sleep(0.0005)
            os.kill(pid, signal.SIGSTOP)  # frozen where it is: is that inside the transaction?
            killed = journal.exists()
            os.kill(pid, signal.SIGKILL if killed else signal.SIGCONT)
            if not killed:
                client.wait_status(
                    lambda s, v=version: s["applied"]["roles"].get("kvm") == v, timeout=30
                )
        status = client.wait_status(lambda s: s["state"] == "failed", timeout=30)
        assert "killed by SIGKILL" in status["error"]["message"], json.dumps(status)
        until(lambda: not journal.exists(), 30, "the recovery")
        assert contents(root) in refs, "half-configured"
        assert agent.proc.poll() is None
        version += 1
        client.publish(ROLE, doc(version, **SPECS[(version - 1) % 2]))
        client.wait_status(
            lambda s: s["state"] == "converged" and s["applied"]["roles"]["kvm"] == version
        )
        assert contents(root) == refs[(version - 1) % 2]
        assert "reverted an interrupted apply" in agent.output()
    finally:
        agent.kill(signal.SIGTERM)
