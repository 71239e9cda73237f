"""Pure rollout planning: wave sizes, the unavailability budget and the abort decision.

Borrowed from AWS IoT Jobs (a rollout rate as waves, abort criteria that need a minimum
sample, per-host timeouts counted as failures) and kubernetes-nmstate (``maxUnavailable``:
never more hosts in flight or broken than the budget). Taken further: a host that converges
but whose post-apply ``checks`` fail is a failure, unless that check already failed before
the rollout touched the host (a check counts only if it passed before, as probes do).

Nothing here does I/O; :mod:`bootstrap.fleet.rollout` feeds it what the broker says.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from bootstrap.wire.status import CheckItem, StatusDocument
from bootstrap.wire.text import printable

Outcome = Literal["succeeded", "failed", "check_failed", "timed_out", "offline", "rejected"]
FAILURES: frozenset[str] = frozenset({"failed", "check_failed", "timed_out", "offline", "rejected"})


@dataclass(frozen=True, slots=True)
class Amount:
    """An absolute count (``3``) or a percentage (``25%``) of some total."""

    value: int
    percent: bool = False

    def __post_init__(self) -> None:
        if self.value < 0 or (self.percent and self.value > 100):
            raise ValueError(f"{self}: out of range")

    @classmethod
    def parse(cls, text: str | int) -> Amount:
        raw = str(text).strip()
        percent = raw.endswith("%")
        digits = raw[:-1].strip() if percent else raw
        if not digits.isdigit():
            raise ValueError(f"{raw!r} is neither N nor P%")
        return cls(int(digits), percent)

    def of(self, total: int, *, round_up: bool = True) -> int:
        if not self.percent:
            return self.value
        exact = self.value * total / 100
        return math.ceil(exact) if round_up else math.floor(exact)

    def __str__(self) -> str:
        return f"{self.value}%" if self.percent else str(self.value)


def parse_waves(text: str) -> tuple[Amount, ...]:
    """``"1,10%,50%,100%"``: cumulative wave targets (how many hosts have it by the end)."""
    steps = tuple(Amount.parse(part) for part in text.split(",") if part.strip())
    if not steps:
        raise ValueError("no waves given")
    if any(s.value == 0 for s in steps):
        raise ValueError("a wave of 0 hosts")
    return steps


def wave_targets(steps: Sequence[Amount], total: int) -> list[int]:
    """Cumulative host counts per wave: strictly increasing, clamped, ending at ``total``.

    Percentages round up (10% of 5 hosts is 1 host, never 0); a step that adds no host
    is dropped; a last wave for everyone is always added.
    """
    targets: list[int] = []
    for step in steps:
        count = min(step.of(total), total)
        if count > (targets[-1] if targets else 0):
            targets.append(count)
    if total and (not targets or targets[-1] < total):
        targets.append(total)
    return targets


def split_waves(hosts: Sequence[str], steps: Sequence[Amount]) -> list[tuple[str, ...]]:
    """The ordered hosts cut into waves (each wave lists only its new hosts)."""
    out: list[tuple[str, ...]] = []
    start = 0
    for end in wave_targets(steps, len(hosts)):
        out.append(tuple(hosts[start:end]))
        start = end
    return out


def order_hosts(hosts: Iterable[str], canaries: Sequence[str] = ()) -> list[str]:
    """Deterministic order: the named canaries first (as given), then by name."""
    pool = set(hosts)
    first = [h for h in dict.fromkeys(canaries) if h in pool]
    return first + sorted(pool - set(first))


def admit(pending: Sequence[str], *, in_flight: int, unavailable: int, budget: int) -> list[str]:
    """Hosts of the current wave to hand the new version now.

    ``in_flight`` hosts are applying, ``unavailable`` are offline or failed anywhere in the
    role: together they may not exceed ``budget`` (kubernetes-nmstate's maxUnavailable).
    """
    free = max(0, budget - in_flight - unavailable)
    return list(pending[:free])


@dataclass(frozen=True, slots=True)
class AbortPolicy:
    """Stop when failures reach ``after`` (count, or % of hosts that reported), judged only
    once at least ``min_sample`` hosts have reported an outcome."""

    after: Amount = Amount(1)
    min_sample: int = 1

    def decide(self, outcomes: Mapping[str, str]) -> str | None:
        """A reason to abort, or None to go on."""
        reported = len(outcomes)
        failed = sorted(h for h, o in outcomes.items() if o in FAILURES)
        if reported < max(1, self.min_sample) or not failed:
            return None
        if self.after.percent:
            share = 100 * len(failed) / reported
            if share >= self.after.value:
                return (
                    f"{len(failed)} of {reported} hosts failed ({share:.0f}% >= {self.after}): "
                    + ", ".join(failed)
                )
            return None
        if len(failed) >= self.after.value:
            return f"{len(failed)} host(s) failed (>= {self.after}): " + ", ".join(failed)
        return None


def failed_checks(checks: Sequence[CheckItem], baseline: Sequence[CheckItem] = ()) -> list[str]:
    """Names of checks that fail now and did not already fail before the rollout."""
    failing_before = {c.name for c in baseline if not c.ok}
    return [printable(c.name, 64) for c in checks if not c.ok and c.name not in failing_before]


def judge(
    status: StatusDocument | None,
    *,
    role: str,
    version: int,
    fresh: bool,
    baseline_checks: Sequence[CheckItem] = (),
) -> tuple[Outcome | None, str]:
    """One host's outcome for ``role`` at ``version`` from the status it is judged by.

    Success needs the host to have applied exactly the version handed out
    (``applied.roles[role] == version``), converged, with no newly failing check.
    ``fresh`` says the status was published after the host was handed the version (a
    failure from before proves nothing). None means: still waiting; an offline host is
    waited for until its timeout (then it fails as ``offline``), never taken as a success.
    A ``rejected`` status counts only when it is about the version handed out and is not
    a replay (the caller skips the others: :meth:`HostStatus.for_judging`).
    """
    if status is None:
        return None, "no valid status yet"
    state = status.state
    at_version = status.role_version(role) == version
    if state == "offline":
        return None, "offline"  # a blip is not a verdict; the timeout turns it into one
    # "stale": the host refused a replay and kept what it runs (contract section 4)
    if state in ("converged", "stale") and at_version:
        bad = failed_checks(status.checks, baseline_checks)
        if bad:
            return "check_failed", "checks failed after apply: " + ", ".join(bad)
        return "succeeded", "converged"
    if not fresh:
        return None, f"waiting ({state})"
    if state in ("failed", "rolled_back"):
        return "failed", _error_text(status, state)
    if state == "rejected" and not (status.error and status.error.code == "stale"):
        return "rejected", _error_text(status, "rejected")
    return None, f"waiting ({state})"


def _error_text(status: StatusDocument, state: str) -> str:
    if status.error is not None and status.error.message:
        return f"{state}: {printable(status.error.message)}"
    return state
