"""The engine: the Resource protocol, planning, and the apply transaction."""

from bootstrap.engine.plan import Plan, make_plan
from bootstrap.engine.resource import Change, Resource
from bootstrap.engine.transaction import Check, Outcome, apply_plan, recover

__all__ = ["Change", "Check", "Outcome", "Plan", "Resource", "apply_plan", "make_plan", "recover"]
