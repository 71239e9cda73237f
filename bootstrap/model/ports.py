"""Port spans: closed ranges of TCP ports ``(first, last)``, as our nftables table, the
firewall managers, their check and the reserved-ports sysctl all hold them."""

from __future__ import annotations

from collections.abc import Iterable

__all__ = ["Span", "merge_spans"]

Span = tuple[int, int]


def merge_spans(spans: Iterable[Span]) -> tuple[Span, ...]:
    """Sorted, with overlapping or adjacent ranges joined (interval sets refuse overlaps)."""
    merged: list[Span] = []
    for first, last in sorted(spans):
        if merged and first <= merged[-1][1] + 1:
            merged[-1] = (merged[-1][0], max(merged[-1][1], last))
        else:
            merged.append((first, last))
    return tuple(merged)
