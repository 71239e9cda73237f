"""The agent's hands: every apply, drift check and recovery runs in a forked worker.

Between applies a host's agent only talks to its broker and keeps its documents; the
engine (its resources, pyroute2, the OVS IDL, libnftables and their schemas) is ~15 MiB
that it would otherwise hold for good. So the resident process forks a worker per job,
the worker imports what the job needs, does it and exits, and the memory goes with it.
The agent forks the next apply's worker as soon as a document for it is accepted
(:meth:`Worker.spawn`), so that the imports (~0.15 s) are done while the burst settles.
Where the engine is already imported (the simulator's zygote forks warm agents) a
worker starts at the cost of a fork.

The boundary, both sides of it here:

- **the job** (:class:`Job`) goes down a pipe as one JSON object, which the agent then
  closes (closed without one: the worker was dismissed, and exits);
- **the results**: the worker writes JSON lines up another pipe, ``{"event": NAME,
  "data": {...}}`` for each progress event of the engine, then one ``{"result": {...}}``
  (:class:`Result`);
- **cancellation**: cancelling :meth:`Worker.run` sends the worker SIGTERM, which
  cancels its job (an apply reverts, as in the engine), and waits for it to exit before
  re-raising; before its job has begun, SIGTERM ends a worker at once;
- **death**: a worker that exits without a result (killed, crashed) is reported as
  ``failed``, naming how it ended; a converge's caller then runs :func:`recover` (the
  journal reverts whatever the dead worker left);
- **the agent's death**: the worker gets SIGTERM too (``PR_SET_PDEATHSIG``) and reverts,
  holding the host's worker lock, which the next agent's recovery waits for: two workers
  never act on one host at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import gc
import json
import logging
import os
import signal
import sys
import traceback
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Literal

from bootstrap.agent.status import error_json
from bootstrap.engine.check import Check
from bootstrap.engine.resource import Change
from bootstrap.errors import BootstrapError, InternalError
from bootstrap.host.root import HostRoot
from bootstrap.model.document import validate_spec

__all__ = ["Job", "Result", "Worker", "recover", "run"]

log = logging.getLogger(__name__)

Kind = Literal["converge", "plan", "recover"]
EventSink = Callable[[str, Mapping[str, Any]], None]
STOP_SIGNALS = {signal.SIGTERM, signal.SIGINT}
PR_SET_PDEATHSIG = 1
MAX_LINE = 1 << 24  # a worker's line (a result with the clipped changes): far below this
WARM = (
    "bootstrap.converge",
    "bootstrap.agent.checks",
    "bootstrap.host.cloudstack",  # the cloudstack-agent check
    "nftables",  # libnftables' binding, which the firewall resource imports when it runs
)
"""What a job imports beyond ``bootstrap.resources.MODULES``: a process that forks agents
warm (the simulator's zygote) imports both first, and its workers then import nothing."""


@dataclass(frozen=True, slots=True)
class Job:
    """What a worker does. ``spec``: the effective spec as JSON (``converge``, ``plan``);
    ``probes``: (host, port) a converge must still reach (the broker); ``checks``: the
    post-apply checks to run once converged."""

    kind: Kind
    root: str
    spec: Mapping[str, Any] | None = None
    probes: Sequence[tuple[str, int]] = ()
    rollback_window: float = 30.0
    checks: Sequence[str] = ()

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "root": self.root,
            "spec": self.spec,
            "probes": [list(p) for p in self.probes],
            "rollback_window": self.rollback_window,
            "checks": list(self.checks),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Job:
        return cls(
            data["kind"],
            data["root"],
            spec=data["spec"],
            probes=[(str(h), int(p)) for h, p in data["probes"]],
            rollback_window=float(data["rollback_window"]),
            checks=tuple(data["checks"]),
        )


@dataclass(slots=True)
class Result:
    """What a job ended as. ``state``: a converge's outcome (``converged``, ``failed``...);
    ``changes``: what it changed (a plan: what differs); ``warnings``: what the plan could
    not do; ``reverted``: what a recovery reverted (None: nothing was interrupted)."""

    state: str
    changes: list[Change] = field(default_factory=list)
    checks: list[Check] = field(default_factory=list)
    error: dict[str, Any] | None = None
    warnings: list[str] = field(default_factory=list)
    reverted: list[str] | None = None
    died: bool = False  # the worker ended without a result (set on the agent's side)

    @property
    def ok(self) -> bool:
        return self.state == "converged"

    def to_json(self) -> dict[str, Any]:
        return {
            "state": self.state,
            "changes": [c.to_json() for c in self.changes],
            "checks": [c.to_json() for c in self.checks],
            "error": self.error,
            "warnings": self.warnings,
            "reverted": self.reverted,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Result:
        return cls(
            state=str(data["state"]),
            changes=[Change(**c) for c in data.get("changes") or ()],
            checks=[Check(**c) for c in data.get("checks") or ()],
            error=data.get("error"),
            warnings=list(data.get("warnings") or ()),
            reverted=data.get("reverted"),
        )


def _died(status: int, kind: Kind) -> Result:
    if os.WIFSIGNALED(status):
        how = f"was killed by {signal.Signals(os.WTERMSIG(status)).name}"
    else:
        how = f"exited with code {os.waitstatus_to_exitcode(status)}"
    message = f"the agent's {kind} worker {how} before it reported (see the agent's log)"
    error = {"code": "internal", "message": message, "resource": "agent"}
    return Result("failed", error=error, died=True)


# --- the agent's side ----------------------------------------------------------------------


class Worker:
    """One worker process for one job, seen from the agent.

    ``spawn`` forks it early: it imports the engine while the agent still waits (the
    debounce of a burst of documents), then waits for its job. ``run`` gives it the job
    (forking it first if ``spawn`` did not) and returns the result; ``dismiss`` ends a
    spawned worker that gets no job (it has begun nothing). Either way the worker is gone
    afterwards, and a later ``spawn`` forks a new one.
    """

    def __init__(self, root: str) -> None:
        self.root = root
        self._proc: _Process | None = None

    @property
    def spawned(self) -> bool:
        return self._proc is not None

    def spawn(self) -> None:
        if self._proc is None:
            self._proc = _Process.fork(self.root)

    async def run(self, job: Job, on_event: EventSink) -> Result:
        """The job's result. Cancelled: the worker is told to stop (an apply reverts) and
        awaited, then the cancellation goes on."""
        self.spawn()
        proc, self._proc = self._proc, None
        assert proc is not None
        return await proc.run(job, on_event)

    async def dismiss(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None:
            await proc.end()


async def run(job: Job, on_event: EventSink) -> Result:
    """``job`` in a worker forked for it now."""
    return await Worker(job.root).run(job, on_event)


async def recover(root: str, on_event: EventSink) -> Result:
    """Revert what an interrupted apply left (the journal), in a worker."""
    return await run(Job("recover", root), on_event)


class _Process:
    """A forked worker: its pid (and pidfd), the pipe its job goes down, the pipe its
    lines come up."""

    def __init__(self, pid: int, jobs: int, lines: int) -> None:
        self.pid, self.jobs, self.lines = pid, jobs, lines
        try:
            self.pidfd = os.pidfd_open(pid)
        except OSError:  # out of descriptors: no worker we cannot watch (it has begun
            os.kill(pid, signal.SIGKILL)  # nothing: it waits for its job)
            os.waitpid(pid, 0)  # killed: it is gone at once
            os.close(jobs)
            os.close(lines)
            raise

    @classmethod
    def fork(cls, root: str) -> _Process:
        """The stop signals are blocked across the fork so that none reaches the child
        before it has its own handling (the agent's would tell the agent to stop)."""
        jobs_r, jobs_w = os.pipe()
        lines_r, lines_w = os.pipe()
        parent = os.getpid()
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
        try:
            pid = os.fork()
        except BaseException:
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)
            for fd in (jobs_r, jobs_w, lines_r, lines_w):
                os.close(fd)
            raise
        if pid == 0:  # the worker: never returns
            os.close(jobs_w)
            os.close(lines_r)
            _child(root, jobs_r, lines_w, parent)
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        os.close(jobs_r)
        os.close(lines_w)
        return cls(pid, jobs_w, lines_r)

    async def run(self, job: Job, on_event: EventSink) -> Result:
        loop = asyncio.get_running_loop()
        exited = self._exited(loop)
        reader = asyncio.StreamReader(limit=MAX_LINE)
        transports: list[asyncio.BaseTransport] = []
        reading: asyncio.Future[Result | None] | None = None
        try:
            lines, _ = await loop.connect_read_pipe(
                lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(self.lines, "rb", 0)
            )
            transports.append(lines)
            jobs, _ = await loop.connect_write_pipe(
                asyncio.BaseProtocol, os.fdopen(self.jobs, "wb", 0)
            )
            transports.append(jobs)
            jobs.write(json.dumps(job.to_json()).encode())
            jobs.close()  # once written: the worker reads its job to the end of the pipe
            reading = asyncio.ensure_future(_read(reader, on_event))
            await _outlast(asyncio.gather(reading, exited), stop=self._stop)
        except BaseException:
            # cancelled before the wait above took over: the worker stops (reverting
            # whatever it began) and is waited for all the same
            if reading is None:
                self._stop()
                await _outlast(exited, stop=lambda: None)
            raise
        finally:
            for transport in transports:
                transport.close()
            status = self._reap(loop)
        return reading.result() or _died(status, job.kind)

    async def end(self) -> None:
        """A worker that got no job: stopped (it has begun nothing) and reaped."""
        loop = asyncio.get_running_loop()
        exited = self._exited(loop)
        os.close(self.jobs)
        os.close(self.lines)
        self._stop()
        try:
            await _outlast(exited, stop=lambda: None)
        finally:
            self._reap(loop)

    def _exited(self, loop: asyncio.AbstractEventLoop) -> asyncio.Future[None]:
        exited: asyncio.Future[None] = loop.create_future()

        def on_exit() -> None:
            if not exited.done():
                exited.set_result(None)

        loop.add_reader(self.pidfd, on_exit)
        return exited

    def _reap(self, loop: asyncio.AbstractEventLoop) -> int:
        loop.remove_reader(self.pidfd)
        os.close(self.pidfd)
        # its exit is what ended the wait (the pidfd): reaped without blocking
        _, status = os.waitpid(self.pid, 0)
        return status

    def _stop(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGTERM)


async def _outlast(work: asyncio.Future[Any], *, stop: Callable[[], None]) -> None:
    """Wait for ``work`` whatever cancels us meanwhile: a worker that reverts must be
    waited for. The first cancellation calls ``stop``; it is re-raised once ``work`` is
    done."""
    cancelled = False
    while not work.done():
        try:
            await asyncio.shield(work)
        except asyncio.CancelledError:
            if not cancelled:
                stop()
            cancelled = True
    if cancelled:
        raise asyncio.CancelledError


async def _read(reader: asyncio.StreamReader, on_event: EventSink) -> Result | None:
    """The worker's lines until it closes the pipe; its result, None when it sent none."""
    result = None
    while True:
        try:
            line = await reader.readline()
        except ValueError:  # over MAX_LINE: that line is dropped, the rest still read
            log.warning("a line from the worker over %d bytes was dropped", MAX_LINE)
            continue
        if not line:
            return result
        try:
            message = json.loads(line)
            if "event" in message:
                on_event(str(message["event"]), message.get("data") or {})
            elif "result" in message:
                result = Result.from_json(message["result"])
        except Exception:  # a torn line from a dying worker: its exit says the rest
            log.warning("unreadable line from the worker: %.200r", line)


# --- the worker's side ---------------------------------------------------------------------


def _child(root: str, jobs: int, lines: int, parent: int) -> None:
    code = 70
    try:
        out = os.fdopen(lines, "w", buffering=1)
        _detach(parent)
        # the agent's heap as forked: the worker's collections never walk it, so never
        # write (copy) its pages; what the job allocates is collected as usual
        gc.freeze()
        # until the job has begun, a stop ends the worker at once (SIG_DFL): importing,
        # waiting for its job or for another worker to finish, it has done nothing
        signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
        _prepare(root)
        job = _receive(jobs)
        if job is None:  # dismissed
            code = 0
            return
        with _host_lock(job.root):
            signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)  # until the job's handlers
            code = asyncio.run(_serve(job, out))
    except BaseException:
        with contextlib.suppress(BaseException):
            traceback.print_exc(file=sys.stderr)
    finally:
        with contextlib.suppress(BaseException):
            sys.stderr.flush()
        os._exit(code)


def _prepare(root: str) -> None:
    """Import what a job needs (where the agent was forked warm, nothing is left to)."""
    import importlib

    from bootstrap.engine.resource import prepare_adapters
    from bootstrap.resources import MODULES

    ovs = HostRoot(Path(root)).ovsdb_socket.exists()
    for name in (*MODULES, *WARM):
        if name == "bootstrap.resources.openvswitch" and not ovs:
            continue  # imported by a job that needs it
        try:
            importlib.import_module(name)
        except ImportError as exc:  # a missing binding surfaces in the job, named
            log.debug("worker: %s: %s", name, exc)
    prepare_adapters()


def _receive(jobs: int) -> Job | None:
    """The job the agent writes down the pipe (then closes it); None when it closed the
    pipe without one."""
    with os.fdopen(jobs, "rb") as pipe:
        data = pipe.read()
    if not data:
        return None
    return Job.from_json(json.loads(data))


def _detach(parent: int) -> None:
    """Forget the agent's event loop and signal handling; die with the agent."""
    signal.set_wakeup_fd(-1)  # the agent's loop's: a signal here must not wake the agent
    for sig in STOP_SIGNALS:
        signal.signal(sig, signal.SIG_DFL)
    # the agent's loop was running in this thread when it forked (Python 3.12's asyncio
    # forgets it by itself after a fork; 3.11's does not)
    asyncio.events._set_running_loop(None)
    import ctypes  # here: the agent itself never needs it (~0.3 MiB)

    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    if os.getppid() != parent:  # the agent died before the line above: stop now
        os._exit(75)


@contextlib.contextmanager
def _host_lock(root: str) -> Iterator[None]:
    """One worker acts on a host at a time: a worker that outlived its agent finishes
    (reverts) before the next agent's worker starts."""
    state = HostRoot(Path(root)).state_dir
    state.mkdir(parents=True, exist_ok=True)
    with (state / "worker.lock").open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


async def _serve(job: Job, out: IO[str]) -> int:
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    assert task is not None
    for sig in STOP_SIGNALS:
        loop.add_signal_handler(sig, task.cancel)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)

    def emit(event: str, data: Mapping[str, Any]) -> None:
        with contextlib.suppress(OSError):  # the agent is gone: the job goes on regardless
            out.write(json.dumps({"event": event, "data": data}, default=str) + "\n")

    try:
        result = await JOBS[job.kind](job, emit)
    except asyncio.CancelledError:
        return 0  # reverted (the engine's cancellation path): the agent asked for this
    with contextlib.suppress(OSError):  # the agent is gone: what was done stands
        out.write(json.dumps({"result": result.to_json()}, default=str) + "\n")
    return 0


def _failed(exc: BaseException, resource: str) -> Result:
    if not isinstance(exc, BootstrapError):
        log.error("%s failed", resource, exc_info=exc)
        exc = InternalError(f"{type(exc).__name__}: {exc}", resource=resource)
    return Result("failed", error=error_json(exc))


async def _converge(job: Job, emit: EventSink) -> Result:
    from bootstrap.agent.checks import run_checks
    from bootstrap.converge import Options, converge
    from bootstrap.engine.probe import TcpProbe

    host = HostRoot(Path(job.root))
    try:
        spec = validate_spec(dict(job.spec or {}), prefix="spec")
        probes = [TcpProbe(h, p) for h, p in job.probes]
        plan, outcome = await converge(spec, host, Options(probes, job.rollback_window, emit))
        if outcome.ok:
            outcome.checks.extend(await run_checks(job.checks, spec, host))
    except Exception as exc:
        return _failed(exc, "converge")
    error = None if outcome.error is None else error_json(outcome.error)
    return Result(outcome.state, outcome.changes, outcome.checks, error, plan.warnings)


async def _plan(job: Job, emit: EventSink) -> Result:
    from bootstrap.converge import plan_host

    try:
        spec = validate_spec(dict(job.spec or {}), prefix="spec")
        plan = await plan_host(spec, HostRoot(Path(job.root)))
    except Exception as exc:
        return _failed(exc, "plan")
    return Result("planned", plan.changes, warnings=plan.warnings)


async def _recover(job: Job, emit: EventSink) -> Result:
    from bootstrap.converge import recover_host

    try:
        reverted = await recover_host(HostRoot(Path(job.root)))
    except Exception as exc:
        return _failed(exc, "recover")
    return Result("recovered", reverted=reverted)


JOBS: dict[str, Callable[[Job, EventSink], Awaitable[Result]]] = {
    "converge": _converge,
    "plan": _plan,
    "recover": _recover,
}
