"""What the agent's imports cost in resident memory, and what a lighter agent would hold.

    .venv/bin/python bench/agent_imports.py [--rounds 2]

The agent's import list comes from ``python -X importtime`` over what ``csboot agent``
loads before its first apply (``simulator.zygote._warm``: the daemon, every resource
module and what they import, libnftables' binding). Each figure is the VmRSS of a fresh
interpreter once a set of modules is in it, pyroute2 registered without its package
``__init__`` first, as the agent does (``bootstrap.netlink``):

- *everything*: the whole list;
- *without pydantic*: the list without pydantic's modules and what pydantic alone brought
  in (the subtrees under ``pydantic``, ``pydantic_core``, ``annotated_types`` and
  ``typing_inspection``), and without the agent's own modules, which cannot be imported
  without pydantic;
- *+ the agent's own code*: then the code objects of the agent's own modules, read from
  their ``.pyc``;
- *+ msgspec*: then msgspec, the lightest typed-document library measured (not a
  dependency: measured only where it is installed);
- *a resident process keeping pydantic's documents*: asyncio with ``ssl``, aiomqtt,
  PyNaCl and the agent's session, intake, status, configuration, cache and topics modules,
  imported (pydantic and the typed spec with them), without the engine;
- *light resident*: asyncio with ``ssl``, aiomqtt, PyNaCl, msgspec where installed, and
  the code of the modules a resident process without the engine would keep (the MQTT
  session, intake, status, topics, configuration, wire documents).

Converging adds ~3.4 MiB to a real agent on top of its imports (``bench/agent_footprint.py``
measures the agent itself). What the figures mean is in docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import re
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PYDANTIC = ("pydantic", "pydantic_core", "annotated_types", "typing_inspection")
LIGHT_MODULES = ["asyncio", "ssl", "json", "logging", "tomllib", "aiomqtt", "nacl.signing"]
KEPT = ("session", "desired", "status", "config", "cache", "notify", "topics")
LIGHT_CODE = [
    "bootstrap.agent",
    *(f"bootstrap.agent.{m}" for m in (*KEPT, "daemon", "cli")),
    *(f"bootstrap.{m}" for m in ("cli", "errors", "lazy", "files")),
    *(f"bootstrap.wire.{m}" for m in ("status", "jsonguard", "text")),
    *(f"bootstrap.model.{m}" for m in ("document", "payload", "signing", "names", "merge")),
]

CHILD = r"""
import importlib, json, marshal, sys
modules, pycs = json.loads(sys.argv[1])
if any(name.startswith("pyroute2") for name in modules):
    import bootstrap.netlink  # pyroute2 without its package __init__, as in the agent
for name in modules:
    try:
        importlib.import_module(name)
    except Exception:
        pass  # another platform's module (nt, org.python.core, ...), tried and missed
code = [marshal.loads(open(p, "rb").read()[16:]) for p in pycs]
for line in open("/proc/self/status"):
    if line.startswith("VmRSS:"):
        print(int(line.split()[1]) / 1024)
"""


def import_tree() -> list[tuple[str, int]]:
    """(module, depth) in the order ``-X importtime`` reports them: children before their
    parent, a child one level deeper."""
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", "import simulator.zygote as z; z._warm()"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    )
    rows = []
    for line in done.stderr.splitlines():
        m = re.match(r"import time:\s+\d+ \|\s+\d+ \|( *)(\S+)", line)
        if m:
            rows.append((m.group(2), len(m.group(1)) // 2))
    return rows


def without(rows: list[tuple[str, int]], roots: tuple[str, ...]) -> list[str]:
    """The modules, less those under ``roots`` and what each of them imported first."""
    dropped: set[str] = set()
    for i, (name, depth) in enumerate(rows):
        if name.split(".")[0] in roots:
            dropped.add(name)
            j = i - 1
            while j >= 0 and rows[j][1] > depth:
                dropped.add(rows[j][0])
                j -= 1
    return list(dict.fromkeys(n for n, _ in rows if n not in dropped))


def pyc(module: str) -> str:
    spec = importlib.util.find_spec(module)
    assert spec is not None and spec.origin is not None, module
    return importlib.util.cache_from_source(spec.origin)


def rss(modules: list[str], pycs: Sequence[str] = ()) -> float:
    out = subprocess.run(
        [sys.executable, "-c", CHILD, json.dumps([modules, list(pycs)])],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    )
    return float(out.stdout)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=2)
    args = p.parse_args()
    rows = import_tree()
    everything = list(dict.fromkeys(n for n, _ in rows))
    own = [n for n in everything if n == "bootstrap" or n.startswith("bootstrap.")]
    rest = [n for n in without(rows, PYDANTIC) if n not in own]
    own_pycs = [pyc(n) for n in own]
    msgspec = importlib.util.find_spec("msgspec") is not None
    extra = ["msgspec"] if msgspec else []
    sets: list[tuple[str, list[str], list[str]]] = [
        (f"everything ({len(everything)} modules)", everything, []),
        (f"without pydantic ({len(rest)} modules)", rest, []),
        (f"+ the agent's own code ({len(own)} modules)", rest, own_pycs),
    ]
    if msgspec:
        sets.append(("+ msgspec", [*rest, "msgspec"], own_pycs))
    typed = [*LIGHT_MODULES, *(f"bootstrap.agent.{m}" for m in KEPT)]
    sets.append(("a resident process keeping pydantic's documents", typed, []))
    light = [*LIGHT_MODULES, *extra]
    sets.append((f"light resident ({', '.join(light)})", light, [pyc(n) for n in LIGHT_CODE]))
    print(f"{'VmRSS after importing':<60} MiB")
    for label, modules, pycs in sets:
        figures = [rss(modules, pycs) for _ in range(args.rounds)]
        print(f"{label:<60} {' / '.join(f'{f:.1f}' for f in figures)}")
    if not msgspec:
        print("(msgspec is not installed: `pip install msgspec` to measure it)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
