"""The engine: the Resource protocol, planning, and the apply transaction.

The names below load on first use, so that ``bootstrap.engine.check`` (what ``csboot check``
needs) does not bring in the model and pydantic.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from bootstrap.lazy import lazy_names

if TYPE_CHECKING:
    from bootstrap.engine.check import Check
    from bootstrap.engine.plan import Plan, make_plan
    from bootstrap.engine.resource import Change, Resource
    from bootstrap.engine.transaction import Outcome, apply_plan, recover

__all__ = ["Change", "Check", "Outcome", "Plan", "Resource", "apply_plan", "make_plan", "recover"]

_HOME = {
    "Change": "resource",
    "Check": "check",
    "Outcome": "transaction",
    "Plan": "plan",
    "Resource": "resource",
    "apply_plan": "transaction",
    "make_plan": "plan",
    "recover": "transaction",
}


__getattr__ = lazy_names(__name__, _HOME)
