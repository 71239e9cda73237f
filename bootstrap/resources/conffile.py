"""A line editor for ``key = value`` and shell-variable files.

Shared by libvirtd.conf and qemu.conf (``key = "value"``), /etc/sysconfig/libvirtd,
/etc/default/* and /etc/selinux/config (``KEY="value"``). It edits only the keys it is
given and keeps every other byte: comments, blank lines, order, unknown keys, trailing
comments after a value, and the spacing around ``=`` of a line it edits.

Rules, chosen so the result is right whatever reads the file:
- every uncommented occurrence of a key is set (libvirt's parser takes the first
  occurrence, a shell the last, so editing all of them is the only safe choice);
- a key that is only present commented out (``#listen_tcp = 1``) gets a new, uncommented
  line right after the last such comment, and the comment stays;
- a key that is absent is appended at the end.

Text is decoded as UTF-8 with ``surrogateescape``, so any byte survives a round trip.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from bootstrap.host.root import HostRoot
from bootstrap.resources.filestate import FileResource

#: A rule for one key: the exact value token to write, or a function from the current
#: token (``None`` when unset) to the wanted one (``None`` = leave the key as it is).
Rule = str | Callable[[str | None], str | None]

_KEY = r"[A-Za-z_][A-Za-z0-9_]*"
_LINE = re.compile(
    rf"^(?P<head>[ \t]*(?:export[ \t]+)?)(?P<key>{_KEY})(?P<sep>[ \t]*=[ \t]*)"
    r"""(?P<value>"(?:[^"\\\r\n]|\\.)*"|'[^'\r\n]*'|\[[^\]\r\n]*\]|[^\s#]*)"""
    r"(?P<rest>.*?)(?P<eol>\r?\n?)$",
    re.DOTALL,
)
_COMMENTED = re.compile(rf"^[ \t]*#[ \t]*(?:export[ \t]+)?(?P<key>{_KEY})[ \t]*=")


@dataclass(frozen=True, slots=True)
class Dialect:
    """How a new line is written: ``key = value`` (libvirt) or ``KEY=value`` (shell)."""

    separator: str


LIBVIRT = Dialect(" = ")
SHELL = Dialect("=")


def decode(data: bytes) -> str:
    return data.decode("utf-8", "surrogateescape")


def encode(text: str) -> bytes:
    return text.encode("utf-8", "surrogateescape")


def values(text: str) -> dict[str, list[str]]:
    """Pure: every uncommented key with the value tokens of its occurrences, in order."""
    out: dict[str, list[str]] = {}
    for line in text.splitlines(keepends=True):
        if m := _LINE.match(line):
            out.setdefault(m["key"], []).append(m["value"])
    return out


def edit_text(text: str, rules: Mapping[str, Rule], dialect: Dialect) -> str:
    """Pure: ``text`` with each key of ``rules`` set as the module docstring says."""
    lines = text.splitlines(keepends=True)
    seen: set[str] = set()
    last_comment: dict[str, int] = {}
    for i, line in enumerate(lines):
        m = _LINE.match(line)
        if m is None:
            if (c := _COMMENTED.match(line)) and c["key"] in rules:
                last_comment[c["key"]] = i
            continue
        key = m["key"]
        if key not in rules:
            continue
        seen.add(key)
        new = _wanted(rules[key], m["value"])
        if new is not None and new != m["value"]:
            lines[i] = m["head"] + key + m["sep"] + new + m["rest"] + m["eol"]
    inserts: dict[int, list[str]] = {}
    for key, rule in rules.items():
        if key in seen:
            continue
        new = _wanted(rule, None)
        if new is not None:
            pos = last_comment.get(key, len(lines) - 1)
            inserts.setdefault(pos, []).append(f"{key}{dialect.separator}{new}")
    # From the bottom up, so the positions above stay valid.
    for pos in sorted(inserts, reverse=True):
        _insert_after(lines, pos, inserts[pos])
    return "".join(lines)


def _insert_after(lines: list[str], pos: int, new_lines: list[str]) -> None:
    if not new_lines:
        return
    eol = "\r\n" if lines and lines[max(pos, 0)].endswith("\r\n") else "\n"
    if pos >= 0 and not lines[pos].endswith("\n"):
        lines[pos] += eol
    lines[pos + 1 : pos + 1] = [line + eol for line in new_lines]


def _wanted(rule: Rule, current: str | None) -> str | None:
    return rule if isinstance(rule, str) else rule(current)


def describe(old: str, new: str, keys: Iterable[str] | None = None) -> str:
    """Pure: ``key: old -> new`` for each key whose values differ, ``; ``-separated."""
    before, after = values(old), values(new)
    names = list(keys) if keys is not None else sorted(set(before) | set(after))
    parts = []
    for key in names:
        was, now = before.get(key, []), after.get(key, [])
        if was == now:
            continue
        shown_was = " | ".join(was) if was else "(unset)"
        shown_now = " | ".join(now) if now else "(unset)"
        note = f" ({len(now)} occurrences)" if len(now) > 1 else ""
        parts.append(f"{key}: {shown_was} -> {shown_now}{note}")
    return "; ".join(parts)


def shell_words(token: str) -> list[str]:
    """The words a value token expands to (``"-d -l"`` -> ``["-d", "-l"]``): the shell
    removes the quotes, then the unquoted ``$VAR`` splits on blanks (as systemd does)."""
    try:
        text = " ".join(shlex.split(token))
    except ValueError:
        text = token.strip("\"'")
    return text.split()


def shell_quote(words: Iterable[str]) -> str:
    """Words as one double-quoted shell value, as distributions write them."""
    text = " ".join(words)
    if re.search(r'["\\$`]', text):
        return shlex.quote(text)
    return f'"{text}"'


def flag_rule(
    flag: str, *, aliases: frozenset[str], present: bool, default: tuple[str, ...] = ()
) -> Callable[[str | None], str | None]:
    """A rule that adds ``flag`` to (or removes it and its aliases from) a shell args value.

    Other flags stay as they are; a value that already agrees is left byte for byte. An
    unset variable gets ``default + flag`` when the flag is wanted, and stays unset if not.
    """
    names = aliases | {flag}

    def rule(current: str | None) -> str | None:
        if current is None:
            return shell_quote([*default, flag]) if present else None
        words = shell_words(current)
        has = any(w in names for w in words)
        if present == has:
            return current
        if present:
            return shell_quote([*words, flag])
        return shell_quote(w for w in words if w not in names)

    return rule


class ConfFile(FileResource):
    """A config file where we own some keys; ``create`` says whether a missing file is made."""

    def __init__(
        self,
        host: HostRoot,
        path: str,
        rules: Mapping[str, Rule],
        *,
        dialect: Dialect,
        create: bool,
        restarts: frozenset[str] = frozenset(),
    ) -> None:
        super().__init__(host, path)
        self.rules = dict(rules)
        self.dialect = dialect
        self.create = create
        self.restarts = restarts

    def edit(self, data: bytes | None) -> bytes | None:
        if data is None and not self.create:
            return None
        return encode(edit_text(decode(data or b""), self.rules, self.dialect))

    def describe(self, old: bytes | None, new: bytes | None) -> str:
        if new is None:
            return "remove"
        return describe(decode(old or b""), decode(new), self.rules)

    def owned(self) -> str:
        """The keys we own in this file, for ``csboot plan``'s hand-off listing."""
        return ", ".join(self.rules)
