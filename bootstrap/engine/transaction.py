"""Apply a plan as one transaction: snapshot, apply, verify, probe, then commit or revert.

Network, firewall and files change together or not at all. The revert walks the applied
resources in reverse order back to the snapshots taken when the plan was made.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from bootstrap.engine.check import Check
from bootstrap.engine.journal import Journal
from bootstrap.engine.plan import Plan, Step
from bootstrap.engine.probe import Probe, wait_for_probe
from bootstrap.engine.resource import Change, Resource
from bootstrap.engine.services import ServiceManager
from bootstrap.errors import (
    BootstrapError,
    InternalError,
    ProbeError,
    ResourceError,
    VerifyError,
)

log = logging.getLogger(__name__)

State = Literal["converged", "failed", "rolled_back"]
EventSink = Callable[[str, Mapping[str, Any]], None]


@dataclass(slots=True)
class Outcome:
    state: State
    changes: list[Change] = field(default_factory=list)
    checks: list[Check] = field(default_factory=list)
    error: BootstrapError | None = None

    @property
    def ok(self) -> bool:
        return self.state == "converged"


def _noop(_event: str, _data: Mapping[str, Any]) -> None:
    return None


async def _verify(step: Step, timeout: float) -> None:
    """Kernel changes settle asynchronously: retry verification briefly before failing."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    delay = 0.05
    while True:
        left = await step.resource.verify(step.target)
        if not left:
            return
        if loop.time() >= deadline:
            detail = "; ".join(str(c) for c in left)
            raise VerifyError(f"still differs after apply: {detail}", resource=step.resource.name)
        await asyncio.sleep(delay)
        delay = min(delay * 2, 0.5)


async def _restart(services: ServiceManager, names: Sequence[str]) -> list[Change]:
    for name in names:
        try:
            await services.restart(name)
        except Exception as exc:
            raise ResourceError(str(exc), resource=f"service/{name}") from exc
    return [Change(f"service/{n}", "restart", "reads a changed file") for n in names]


async def revert_steps(steps: Sequence[tuple[Resource[Any], Any]]) -> list[str]:
    """Revert in reverse order; returns the resources that could not be reverted."""
    stuck: list[str] = []
    for resource, snapshot in reversed(steps):
        try:
            await resource.revert(snapshot)
        except Exception as exc:  # keep reverting the rest whatever went wrong
            log.error("revert of %s failed: %s", resource.name, exc)
            stuck.append(resource.name)
    return stuck


async def _counted(probes: Sequence[Probe]) -> list[Probe]:
    """Probes count only if they pass before the change; one that raises does not count."""
    counted = []
    for probe in probes:
        try:
            if await probe.check():
                counted.append(probe)
        except Exception as exc:
            log.warning("probe %s failed to run before the change: %s", probe.name, exc)
    return counted


async def _probe(probe: Probe, window: float) -> bool:
    try:
        return await wait_for_probe(probe, window)
    except Exception as exc:
        raise ProbeError(f"{type(exc).__name__}: {exc}", probe=probe.name) from exc


def _as_error(exc: Exception, where: str) -> BootstrapError:
    """Any exception as our own error, naming the stage (resource, service or probe)."""
    if isinstance(exc, BootstrapError):
        return exc
    return InternalError(f"{type(exc).__name__}: {exc}", resource=where)


@dataclass(slots=True)
class _Run:
    """What one transaction did so far: what a revert has to undo."""

    plan: Plan
    applied: list[Step] = field(default_factory=list)
    changes: list[Change] = field(default_factory=list)
    checks: list[Check] = field(default_factory=list)
    stage: str = "transaction"


async def _forward(
    run: _Run,
    *,
    services: ServiceManager,
    baseline: Sequence[Probe],
    rollback_window: float,
    verify_timeout: float,
    on_event: EventSink,
) -> None:
    for step in run.plan.pending:
        run.stage = step.resource.name
        on_event("apply", {"resource": step.resource.name})
        run.applied.append(step)  # before: a half-done apply is reverted too
        try:
            await step.resource.apply(step.current, step.target)
        except BootstrapError:
            raise
        except Exception as exc:
            raise ResourceError(f"{type(exc).__name__}: {exc}", resource=run.stage) from exc
        run.changes.extend(step.changes)
    for step in run.applied:
        run.stage = step.resource.name
        await _verify(step, verify_timeout)
    run.stage = "services"
    run.changes.extend(await _restart(services, run.plan.restarts))
    for probe in baseline:
        run.stage = f"probe/{probe.name}"
        ok = await _probe(probe, rollback_window)
        run.checks.append(Check(f"probe {probe.name}", ok, "reachable" if ok else "lost"))
        if not ok:
            raise ProbeError(
                f"unreachable for {rollback_window:g}s after the change", probe=probe.name
            )


async def _rollback(
    run: _Run,
    error: BootstrapError,
    *,
    services: ServiceManager,
    baseline: Sequence[Probe],
    rollback_window: float,
    journal: Journal | None,
) -> Outcome:
    """Revert every applied step, restart what read a changed file, then try the counted
    probes again: the status says whether the path came back."""
    stuck = await revert_steps([(s.resource, s.current) for s in run.applied])
    if not stuck and run.plan.restarts:
        try:
            await _restart(services, run.plan.restarts)
        except ResourceError as exc:
            stuck.append(exc.resource)
    if journal is not None and not stuck:
        journal.clear()
    checks: list[Check] = []
    for probe in baseline:
        try:
            back = await wait_for_probe(probe, rollback_window)
        except Exception:
            back = False
        detail = "reachable again" if back else "still lost after the revert"
        checks.append(Check(f"probe {probe.name} after revert", back, detail))
    if stuck:
        error = ResourceError(
            f"{error.message}; revert failed for {', '.join(stuck)}", resource=stuck[0]
        )
        return Outcome("failed", run.changes, checks, error)
    return Outcome("rolled_back", run.changes, checks, error)


async def _shielded(outcome: Awaitable[Outcome]) -> Outcome:
    """Run a revert to its end even if we are cancelled meanwhile; then re-raise."""
    task = asyncio.ensure_future(outcome)
    cancelled = False
    while not task.done():
        try:
            await asyncio.shield(task)
        except asyncio.CancelledError:
            if task.done():
                break
            cancelled = True
    result = task.result()
    if cancelled:
        raise asyncio.CancelledError
    return result


async def apply_plan(
    plan: Plan,
    *,
    services: ServiceManager,
    probes: Sequence[Probe] = (),
    rollback_window: float = 30.0,
    verify_timeout: float = 5.0,
    journal: Journal | None = None,
    journal_spec: Mapping[str, Any] | None = None,
    on_event: EventSink = _noop,
) -> Outcome:
    """Carry out ``plan``; on any failure revert everything it changed.

    Total: any exception (ours or not) from apply, verify, a restart or a probe ends in
    a revert and an outcome ``rolled_back`` (or ``failed`` if the revert itself failed).
    A cancellation reverts too (shielded from further cancellation), then propagates. The
    journal is cleared only when nothing is left to revert.
    """
    pending = plan.pending
    if not pending:
        return Outcome("converged")

    # Only a change that can cut a path (links, addresses, firewall) is judged by probes:
    # a broker that goes away during a file-only change is no reason to revert it.
    network = any(s.resource.network for s in pending)
    baseline = await _counted(probes) if network else []
    on_event(
        "probes",
        {
            "counted": [p.name for p in baseline],
            "skipped": [p.name for p in probes if p not in baseline],
        },
    )

    if journal is not None:
        journal.begin(
            dict(journal_spec or {}),
            {s.resource.name: s.resource.dump(s.current) for s in pending},
        )
    run = _Run(plan)
    try:
        await _forward(
            run,
            services=services,
            baseline=baseline,
            rollback_window=rollback_window,
            verify_timeout=verify_timeout,
            on_event=on_event,
        )
    except asyncio.CancelledError:
        on_event("revert", {"reason": "cancelled"})
        stopped = InternalError("cancelled during the apply", resource=run.stage)
        await _shielded(
            _rollback(
                run, stopped, services=services, baseline=(), rollback_window=0, journal=journal
            )
        )
        raise
    except Exception as exc:
        error = _as_error(exc, run.stage)
        on_event("revert", {"reason": error.message})
        rollback = _rollback(
            run,
            error,
            services=services,
            baseline=baseline,
            rollback_window=rollback_window,
            journal=journal,
        )
        return await _shielded(rollback)
    if journal is not None:
        journal.clear()
    return Outcome("converged", run.changes, run.checks)


async def recover(journal: Journal, resources: Sequence[Resource[Any]]) -> list[str] | None:
    """After a crash mid-apply: revert every journalled resource to its snapshot.

    Returns the names reverted (None when there was nothing to recover).
    """
    entry = journal.pending()
    if entry is None:
        return None
    by_name = {r.name: r for r in resources}
    steps = [
        (by_name[n], by_name[n].load(data)) for n, data in entry.snapshots.items() if n in by_name
    ]
    stuck = await revert_steps(steps)
    if stuck:
        raise ResourceError("recovery could not revert", resource=stuck[0])
    journal.clear()
    return [r.name for r, _ in steps]
