"""Planning: observe every resource and diff against its target. No side effects."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from bootstrap.engine.resource import Change, Resource


@dataclass(slots=True)
class Step:
    """One resource with what was observed and what it wants."""

    resource: Resource[Any]
    current: Any
    target: Any
    changes: list[Change]


@dataclass(slots=True)
class Plan:
    steps: list[Step] = field(default_factory=list)

    @property
    def changes(self) -> list[Change]:
        return [c for s in self.steps for c in s.changes]

    @property
    def pending(self) -> list[Step]:
        return [s for s in self.steps if s.changes]

    @property
    def restarts(self) -> list[str]:
        """Services to restart: only those reading something that actually changes."""
        wanted = {svc for s in self.pending for svc in s.resource.restarts}
        return sorted(wanted)

    @property
    def warnings(self) -> list[str]:
        return [w for s in self.steps for w in s.resource.warnings]

    def __bool__(self) -> bool:
        return bool(self.pending)


async def make_plan(resources: Sequence[Resource[Any]]) -> Plan:
    plan = Plan()
    for resource in resources:
        current = await resource.observe()
        target = resource.target(current)
        plan.steps.append(Step(resource, current, target, resource.diff(current, target)))
    return plan
