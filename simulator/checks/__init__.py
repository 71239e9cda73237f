"""End-to-end checks of a simulated fleet: results as data (probes: :mod:`.prober`).

Every check returns a :class:`CheckResult`: one row per thing it tested, and ``hosts``, the
hosts it blames. A check that cannot fail is a defect, so each one also carries a positive
control where that makes sense (a sniffer that sees nothing proves nothing).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

__all__ = ["CheckResult", "Row", "blame"]


@dataclass(frozen=True, slots=True)
class Row:
    subject: str
    ok: bool
    detail: str = ""
    hosts: tuple[str, ...] = ()  # the hosts this row is about
    group: str = ""  # rows blamed together (one VLAN, one port set)


@dataclass(slots=True)
class CheckResult:
    name: str
    rows: list[Row] = field(default_factory=list)
    skipped: str | None = None  # why the check did not run (counts as passed)

    @property
    def ok(self) -> bool:
        return all(r.ok for r in self.rows)

    @property
    def failed(self) -> list[Row]:
        return [r for r in self.rows if not r.ok]

    @property
    def hosts(self) -> list[str]:
        """The hosts this check blames (see :func:`blame`)."""
        return blame(self.rows)

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "ok": self.ok,
            "skipped": self.skipped,
            "hosts": self.hosts,
            "rows": [
                {"subject": r.subject, "ok": r.ok, "detail": r.detail, "hosts": list(r.hosts)}
                for r in self.rows
            ],
        }


def blame(rows: Iterable[Row]) -> list[str]:
    """Per group of rows, the hosts in every failing row they could be in.

    A pairwise failure names two hosts; the one whose *every* row failed is the culprit
    (kvm2 on the wrong VLAN fails kvm1->kvm2 and kvm3->kvm2, never kvm1->kvm3). When no
    host is that consistent (a fabric-wide fault), every host in a failing row is named.
    """
    groups: dict[str, list[Row]] = {}
    for r in rows:
        groups.setdefault(r.group, []).append(r)
    named: set[str] = set()
    for group in groups.values():
        total: Counter[str] = Counter(h for r in group for h in set(r.hosts))
        bad: Counter[str] = Counter(h for r in group if not r.ok for h in set(r.hosts))
        culprits = {h for h, n in bad.items() if n == total[h]}
        named |= culprits or set(bad)
    return sorted(named)
