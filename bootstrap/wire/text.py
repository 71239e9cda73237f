"""Text that came from a host, made safe to show on an operator's terminal.

A host writes its own status, so every string in it is hostile until shown otherwise:
escape sequences (CSI, OSC, DCS, ...), C0/C1 controls, and Unicode format characters
(bidi overrides, zero-width) are removed, line breaks become spaces, and the result is
clipped.
"""

from __future__ import annotations

import re
import unicodedata

__all__ = ["printable"]

# ESC-introduced sequences, 7-bit and 8-bit: CSI (ESC [ / 0x9b) ... final byte; OSC, DCS,
# SOS, PM, APC (ESC ] P X ^ _ / 0x9d 0x90 0x98 0x9e 0x9f) ... BEL or ST; any other ESC + one.
_SEQUENCES = re.compile(
    r"(?:\x1b\[|\x9b)[\x20-\x3f]*[\x40-\x7e]?"
    r"|(?:\x1b[\]PX^_]|[\x9d\x90\x98\x9e\x9f])[^\x07\x1b\x9c]*(?:\x07|\x1b\\|\x9c)?"
    r"|\x1b[\x20-\x7e]?"
)
_UNSAFE_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"})


def _safe(ch: str) -> str:
    if ch in "\t\n\r":
        return " "
    return "" if unicodedata.category(ch) in _UNSAFE_CATEGORIES else ch


def printable(value: object, limit: int = 200) -> str:
    """``value`` as one line a terminal shows literally, at most ``limit`` characters."""
    text = value if isinstance(value, str) else repr(value)
    text = text[: limit * 4]  # bound the work before cleaning
    cleaned = "".join(_safe(ch) for ch in _SEQUENCES.sub("", text))
    return cleaned if len(cleaned) <= limit else cleaned[: limit - 1] + "…"
