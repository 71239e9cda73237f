"""agent.properties: a Java-properties line editor and the keys the spec derives.

The editor follows ``java.util.Properties.load`` (what the CloudStack agent uses) for
reading: ``#``/``!`` comments, ``=``, ``:`` or whitespace as separator, backslash line
continuations and escapes, ISO-8859-1 bytes. Keys match exactly (``host`` never touches
``host.tags``). Writing changes only the lines of keys it sets or removes; every other
byte stays, so parse -> render is the identity.

Values are written escaped the way ``Properties.store`` would (backslash, leading blank,
control and non-ASCII characters), so the agent reads back exactly the value the spec
gives; for the usual values (hostnames, class names, paths) that is the text as given.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from bootstrap.errors import InvalidDocument
from bootstrap.host.root import HostRoot
from bootstrap.model.spec import Spec
from bootstrap.resources.filestate import FileResource

AGENT_PROPERTIES = "/etc/cloudstack/agent/agent.properties"
DIRECT_VIF_DRIVER = "com.cloud.hypervisor.kvm.resource.DirectVifDriver"
NETWORK_KEYS = (
    "network.bridge.type",
    "public.network.device",
    "private.network.device",
    "guest.network.device",
    "storage.network.device",
)
DEVICE_KEYS = {
    "management": "private.network.device",  # CloudStack's "private" = management
    "public": "public.network.device",
    "guest": "guest.network.device",
    "storage": "storage.network.device",
}
"""Which agent.properties key names the bridge carrying each traffic type."""
DIRECT_KEYS = ("libvirt.vif.driver", "network.direct.source.mode", "network.direct.device")
ALWAYS_OWNED = ("hypervisor.type", "guest.cpu.mode", "guest.cpu.model", *DIRECT_KEYS)

_LINE_BREAK = re.compile(r"\r\n|\r|\n")
_BLANK = " \t\f"


@dataclass(frozen=True, slots=True)
class Entry:
    """One key/value pair, on physical lines ``start`` up to (not including) ``end``."""

    key: str
    value: str
    start: int
    end: int
    prefix: str  # raw text up to the value on a one-line entry ("" when it spans lines)


@dataclass(frozen=True, slots=True)
class Properties:
    lines: tuple[str, ...]  # physical lines, each with its own line break
    entries: tuple[Entry, ...]

    def render(self) -> str:
        return "".join(self.lines)

    def mapping(self) -> dict[str, str]:
        """What Java sees: the last occurrence of a key wins."""
        return {e.key: e.value for e in self.entries}

    def occurrences(self, key: str) -> list[Entry]:
        return [e for e in self.entries if e.key == key]


def split_lines(text: str) -> list[str]:
    """Physical lines with their breaks (Java's: ``\\n``, ``\\r``, ``\\r\\n`` only)."""
    lines, pos = [], 0
    for m in _LINE_BREAK.finditer(text):
        lines.append(text[pos : m.end()])
        pos = m.end()
    if pos < len(text):
        lines.append(text[pos:])
    return lines


def _content(line: str) -> str:
    return _LINE_BREAK.sub("", line)


def _continues(content: str) -> bool:
    trailing = len(content) - len(content.rstrip("\\"))
    return trailing % 2 == 1


def parse(text: str) -> Properties:
    lines = split_lines(text)
    entries: list[Entry] = []
    i = 0
    while i < len(lines):
        first = _content(lines[i]).lstrip(_BLANK)
        if not first or first[0] in "#!":
            i += 1
            continue
        start, logical = i, first
        while _continues(logical) and i + 1 < len(lines):
            i += 1
            logical = logical[:-1] + _content(lines[i]).lstrip(_BLANK)
        if _continues(logical):
            logical = logical[:-1]
        i += 1
        raw_key, value_at = _split(logical)
        prefix = ""
        if i - start == 1:
            content = _content(lines[start])
            lead = len(content) - len(content.lstrip(_BLANK))
            prefix = content[: lead + value_at]
            if value_at == len(raw_key):  # a bare key: give the new value a separator
                prefix += "="
        entries.append(Entry(_unescape(raw_key), _unescape(logical[value_at:]), start, i, prefix))
    return Properties(tuple(lines), tuple(entries))


def _split(logical: str) -> tuple[str, int]:
    """The raw key, and where the value starts, as ``Properties.load`` decides."""
    n, k = len(logical), 0
    while k < n and logical[k] not in "=:" + _BLANK:
        k += 2 if logical[k] == "\\" else 1
    k = min(k, n)
    v = k
    while v < n and logical[v] in _BLANK:
        v += 1
    if v < n and logical[v] in "=:":
        v += 1
        while v < n and logical[v] in _BLANK:
            v += 1
    return logical[:k], v


_ESCAPES = {"t": "\t", "n": "\n", "r": "\r", "f": "\f"}


def _unescape(raw: str) -> str:
    out, i = [], 0
    while i < len(raw):
        c = raw[i]
        if c != "\\" or i + 1 >= len(raw):
            out.append(c)
            i += 1
            continue
        nxt = raw[i + 1]
        if nxt == "u" and re.fullmatch(r"[0-9A-Fa-f]{4}", raw[i + 2 : i + 6]):
            out.append(chr(int(raw[i + 2 : i + 6], 16)))
            i += 6
            continue
        out.append(_ESCAPES.get(nxt, nxt))
        i += 2
    # Java reads UTF-16 units: join surrogate pairs written as two \\u escapes.
    return "".join(out).encode("utf-16", "surrogatepass").decode("utf-16", "replace")


def _escape(text: str, *, key: bool) -> str:
    out = []
    for i, c in enumerate(text):
        if c == "\\":
            out.append("\\\\")
        elif c in "\t\n\r\f":
            out.append("\\" + {"\t": "t", "\n": "n", "\r": "r", "\f": "f"}[c])
        elif c == " " and (key or i == 0):
            out.append("\\ ")
        elif ((key or i == 0) and c in "=:") or (key and i == 0 and c in "#!"):
            out.append("\\" + c)
        elif not 0x20 <= ord(c) < 0x7F:
            units = c.encode("utf-16-be", "surrogatepass")
            out.extend(f"\\u{units[j] << 8 | units[j + 1]:04x}" for j in range(0, len(units), 2))
        else:
            out.append(c)
    return "".join(out)


def edit(text: str, set_: Mapping[str, str], remove: Iterable[str] = ()) -> str:
    """Pure: set keys (the last occurrence is edited in place, new keys are appended in
    the order given) and remove keys (every occurrence). Nothing else changes."""
    props = parse(text)
    lines: list[str | None] = list(props.lines)
    gone = set(remove) - set(set_)
    for entry in props.entries:
        if entry.key in gone:
            lines[entry.start : entry.end] = [None] * (entry.end - entry.start)
    eol = _dominant_eol(props.lines)
    in_entry = {i for e in props.entries for i in range(e.start, e.end)}
    edited: set[int] = set()
    added: list[str] = []
    for key, value in set_.items():
        found = props.occurrences(key)
        if not found:
            added.append(f"{_escape(key, key=True)}={_escape(value, key=False)}{eol}")
            continue
        last = found[-1]
        if last.value == value:
            continue
        prefix = last.prefix or f"{_escape(key, key=True)}="
        ending = _LINE_BREAK.search(props.lines[last.end - 1])
        new = prefix + _escape(value, key=False) + (ending.group() if ending else "")
        lines[last.start : last.end] = [new] + [None] * (last.end - last.start - 1)
        edited.add(last.start)
    kept = [line for line in lines if line is not None]
    if added and kept:
        if not _LINE_BREAK.search(kept[-1][-1:]):
            kept[-1] += eol
        tail = max(i for i, line in enumerate(lines) if line is not None)
        if tail not in edited and tail in in_entry and _continues(_content(props.lines[tail])):
            # End a dangling continuation, or it would swallow our lines; repeat the line's
            # own break so "\r" + "\n" cannot merge into one "\r\n".
            kept.append(_LINE_BREAK.findall(kept[-1])[-1])
    return "".join(kept + added)


def _dominant_eol(lines: Iterable[str]) -> str:
    for line in lines:
        if m := _LINE_BREAK.search(line):
            return m.group()
    return "\n"


def describe(old: str, new: str) -> str:
    """Pure: the key-level difference, e.g. ``hypervisor.type: kvm -> lxc``."""
    before, after = parse(old), parse(new)
    was, now = before.mapping(), after.mapping()
    parts = []
    for key in list(now) + [k for k in was if k not in now]:
        if was.get(key) == now.get(key):
            continue
        left = was.get(key, "(unset)")
        right = now.get(key, "(removed)" if key in was else "(unset)")
        part = f"{key}: {left} -> {right}"
        dups = len(before.occurrences(key))
        if dups > 1 and key in now:
            part += f" (duplicate key: edited the last of {dups})"
        parts.append(part)
    return "; ".join(parts)


def derived(spec: Spec) -> tuple[dict[str, str], frozenset[str]]:
    """The keys the spec owns: (values to set, keys to remove). Pure."""
    values: dict[str, str] = {"hypervisor.type": spec.hypervisor, "guest.cpu.mode": spec.cpu.mode}
    owned = set(ALWAYS_OWNED)
    if spec.cpu.mode == "custom" and spec.cpu.model:
        values["guest.cpu.model"] = spec.cpu.model
    if spec.network is not None:
        owned.update(NETWORK_KEYS)
        values["network.bridge.type"] = spec.network.backend
        for traffic, key in DEVICE_KEYS.items():
            if (bridge := spec.network.device(traffic)) is not None:
                values[key] = bridge.name
    if spec.agent.direct is not None:
        values["libvirt.vif.driver"] = DIRECT_VIF_DRIVER
        values["network.direct.source.mode"] = spec.agent.direct.source_mode
        values["network.direct.device"] = spec.agent.direct.device
    return values, frozenset(owned - set(values))


class AgentProperties(FileResource):
    """/etc/cloudstack/agent/agent.properties: derived keys plus ``spec.agent.properties``.

    A user property that names a key the spec derives (``hypervisor.type``, ...; the
    network keys only when ``network`` is managed) is rejected: two sources for one key
    would make the file depend on which one wins, and "never hand-edited twice" holds.
    """

    restarts = frozenset({"cloudstack-agent"})

    def __init__(
        self, spec: Spec, host: HostRoot, *, released: frozenset[str] = frozenset()
    ) -> None:
        super().__init__(host, AGENT_PROPERTIES)
        values, remove = derived(spec)
        owned = set(values) | remove
        for key in spec.agent.properties:
            if key in owned:
                raise InvalidDocument(
                    "is derived from the spec; set it through the spec, not agent.properties",
                    field=f"spec.agent.properties.{key}",
                )
        # after the hand-off CloudStack's setup owns ``released``: neither set nor removed
        wanted = {**values, **spec.agent.properties}
        self.values = {k: v for k, v in wanted.items() if k not in released}
        self.remove = remove - released

    def edit(self, data: bytes | None) -> bytes:
        text = (data or b"").decode("latin-1")
        return edit(text, self.values, self.remove).encode("latin-1")

    def describe(self, old: bytes | None, new: bytes | None) -> str:
        return describe((old or b"").decode("latin-1"), (new or b"").decode("latin-1"))

    def owned(self) -> str:
        """The keys we own, for ``csboot plan``'s hand-off listing."""
        return ", ".join([*self.values, *sorted(self.remove)])
