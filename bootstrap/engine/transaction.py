"""Apply a plan as one transaction: snapshot, apply, verify, probe, then commit or revert.

Network, firewall and files change together or not at all. The revert walks the applied
resources in reverse order back to the snapshots taken when the plan was made.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from bootstrap.engine.check import Check
from bootstrap.engine.journal import Journal
from bootstrap.engine.plan import Plan, Step
from bootstrap.engine.probe import Probe, wait_for_probe
from bootstrap.engine.resource import Change, Resource
from bootstrap.engine.services import ServiceManager
from bootstrap.errors import BootstrapError, ProbeError, ResourceError, VerifyError

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
        except (OSError, RuntimeError) as exc:
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
    """Carry out ``plan``; on any failure revert everything it changed."""
    pending = plan.pending
    if not pending:
        return Outcome("converged")

    # Probes count only if they pass before the change.
    baseline = [p for p in probes if await p.check()]
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
    applied: list[Step] = []
    changes: list[Change] = []
    try:
        for step in pending:
            on_event("apply", {"resource": step.resource.name})
            try:
                await step.resource.apply(step.current, step.target)
            except BootstrapError:
                raise
            except Exception as exc:
                raise ResourceError(
                    f"{type(exc).__name__}: {exc}", resource=step.resource.name
                ) from exc
            finally:
                applied.append(step)
            changes.extend(step.changes)
        for step in applied:
            await _verify(step, verify_timeout)
        changes.extend(await _restart(services, plan.restarts))
        checks: list[Check] = []
        for probe in baseline:
            ok = await wait_for_probe(probe, rollback_window)
            checks.append(Check(f"probe {probe.name}", ok, "reachable" if ok else "lost"))
            if not ok:
                raise ProbeError(
                    f"unreachable for {rollback_window:g}s after the change", probe=probe.name
                )
    except BootstrapError as error:
        on_event("revert", {"reason": error.message})
        stuck = await revert_steps([(s.resource, s.current) for s in applied])
        if not stuck and plan.restarts:
            try:
                await _restart(services, plan.restarts)
            except ResourceError as exc:
                stuck.append(exc.resource)
        if journal is not None and not stuck:
            journal.clear()
        if stuck:
            error = ResourceError(
                f"{error.message}; revert failed for {', '.join(stuck)}", resource=stuck[0]
            )
            return Outcome("failed", changes, [], error)
        return Outcome("rolled_back", changes, [], error)
    if journal is not None:
        journal.clear()
    return Outcome("converged", changes, checks)


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
