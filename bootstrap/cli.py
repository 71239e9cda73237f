"""``csboot``: the one-shot shell around the engine, and the entry to the agent and fleet tools.

Exit codes (contract section 5): plan 0 nothing to change / 2 changes pending / 1 invalid
or error; apply 0 converged / 1 failed (and rolled back); check 0 all pass / 1 a failure.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bootstrap import __version__
from bootstrap.agent.cli import register as register_agent
from bootstrap.errors import BootstrapError, InvalidDocument
from bootstrap.fleet.cli import register as register_fleet
from bootstrap.host.root import HostRoot

# Each command imports what it needs when it runs (`csboot check` in every simulated host,
# `csboot agent` on start-up): measure with `python -X importtime -m bootstrap.cli ...`.
if TYPE_CHECKING:
    from bootstrap.engine.probe import Probe
    from bootstrap.engine.resource import Change
    from bootstrap.model.document import Document
    from bootstrap.model.spec import Spec

Handler = Callable[[argparse.Namespace], int]


def emit_json(data: Any) -> None:
    json.dump(data, sys.stdout, indent=2, sort_keys=False)
    sys.stdout.write("\n")


def fail(error: BootstrapError, as_json: bool) -> int:
    if as_json:
        emit_json({"error": error.to_json()})
    else:
        print(f"csboot: error: {error.message}", file=sys.stderr)
    return 1


def load_documents(paths: Sequence[str]) -> list[Document]:
    from bootstrap.model.document import parse_document

    docs = []
    for path in paths:
        try:
            raw = sys.stdin.buffer.read() if path == "-" else Path(path).read_bytes()
        except OSError as exc:
            raise InvalidDocument(f"cannot read {path}: {exc.strerror}", field="-f") from exc
        try:
            docs.append(parse_document(raw))
        except InvalidDocument as exc:
            raise InvalidDocument(exc.reason, field=exc.field) from exc
    return docs


def load_spec(paths: Sequence[str]) -> tuple[list[Document], Spec]:
    from bootstrap.model.document import effective_spec

    docs = load_documents(paths)
    return docs, effective_spec(docs)


def render_change(change: Change) -> str:
    """One line per change, each of its details indented below it."""
    sign = {"create": "+", "delete": "-", "modify": "~", "restart": "↻"}[change.action]
    parts = [p for p in change.detail.split("; ") if p]
    if len(parts) <= 1:
        return f"  {change}"
    return "\n".join([f"  {sign} {change.resource}:", *(f"      {p}" for p in parts)])


def describe_docs(docs: Sequence[Document]) -> str:
    return ", ".join(f"{d.kind.lower()} {d.name} v{d.version}" for d in docs)


# --- plan ------------------------------------------------------------------------------


def cmd_plan(args: argparse.Namespace) -> int:
    from bootstrap.converge import plan_host
    from bootstrap.resources.handoff import ownership

    try:
        docs, spec = load_spec(args.file)
        host = HostRoot(Path(args.root))
        plan = asyncio.run(plan_host(spec, host))
        owned = ownership(spec, host)
    except BootstrapError as exc:
        return fail(exc, args.json)
    restarts = plan.restarts
    if args.json:
        emit_json(
            {
                "documents": [d.topic_key() + f"@{d.version}" for d in docs],
                "changes": [c.to_json() for c in plan.changes],
                "restarts": restarts,
                "warnings": plan.warnings,
                "ownership": owned,
            }
        )
    else:
        print(f"plan for {describe_docs(docs)} (root {args.root}):")
        for change in plan.changes:
            print(render_change(change))
        for service in restarts:
            print(f"  ↻ service/{service}: restart (reads a changed file)")
        print(f"{len(plan.changes)} change(s) pending." if plan else "nothing to change.")
        for warning in plan.warnings:
            print(f"  ! {warning}")
        for line in owned:
            print(line)
    return 2 if plan else 0


# --- apply -----------------------------------------------------------------------------


def _probes(specs: Sequence[str]) -> list[Probe]:
    from bootstrap.engine.probe import probe_for

    probes = []
    for text in specs:
        try:
            probes.append(probe_for(text))
        except ValueError as exc:
            raise InvalidDocument(f"{text!r} is not ADDR or HOST:PORT", field="--probe") from exc
    return probes


def cmd_apply(args: argparse.Namespace) -> int:
    from bootstrap.converge import Options, converge

    try:
        docs, spec = load_spec(args.file)
        options = Options(probes=_probes(args.probe), rollback_window=args.rollback_window)
        _plan, outcome = asyncio.run(converge(spec, HostRoot(Path(args.root)), options))
    except BootstrapError as exc:
        return fail(exc, args.json)
    if args.json:
        emit_json(
            {
                "state": outcome.state,
                "changes": [c.to_json() for c in outcome.changes],
                "checks": [c.to_json() for c in outcome.checks],
                "error": outcome.error.to_json() if outcome.error else None,
            }
        )
    else:
        for change in outcome.changes:
            print(render_change(change))
        for check in outcome.checks:
            print(f"  {'ok ' if check.ok else 'BAD'} {check.name}: {check.detail}")
        if outcome.error:
            print(f"csboot: {outcome.state}: {outcome.error.message}", file=sys.stderr)
        else:
            print(f"{outcome.state}: {describe_docs(docs)} ({len(outcome.changes)} change(s)).")
    return 0 if outcome.ok else 1


def cmd_recover(args: argparse.Namespace) -> int:
    from bootstrap.converge import recover_host

    try:
        reverted = asyncio.run(recover_host(HostRoot(Path(args.root))))
    except BootstrapError as exc:
        return fail(exc, args.json)
    if args.json:
        emit_json({"reverted": reverted or []})
    else:
        print("nothing to recover." if reverted is None else f"reverted: {', '.join(reverted)}")
    return 0


# --- check / schema --------------------------------------------------------------------


def cmd_check(args: argparse.Namespace) -> int:
    host = HostRoot(Path(args.root))
    if args.cloudstack:
        from bootstrap.host.cloudstack import run_cloudstack_checks

        checks = asyncio.run(run_cloudstack_checks(host))
    else:
        from bootstrap.host.preflight import evaluate, gather_facts

        checks = evaluate(gather_facts(host))
    from bootstrap.host.fwcheck import run_firewall_checks

    checks += run_firewall_checks(host)
    if args.json:
        emit_json({"ok": all(c.ok for c in checks), "checks": [c.to_json() for c in checks]})
    else:
        for check in checks:
            print(f"{'ok  ' if check.ok else 'FAIL'} {check.name}: {check.detail}")
    return 0 if all(c.ok for c in checks) else 1


def document_schema() -> dict[str, Any]:
    """The JSON Schema of a desired document, its ``spec`` being the full typed spec."""
    from bootstrap.model.document import Document
    from bootstrap.model.spec import Spec

    doc = Document.model_json_schema(by_alias=True)
    spec = Spec.model_json_schema()
    defs = {**doc.pop("$defs", {}), **spec.pop("$defs", {})}
    doc["properties"]["spec"] = spec
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": "https://cloudstack-bootstrap/schema/v1/document.json",
        **doc,
        "$defs": defs,
    }


def cmd_schema(args: argparse.Namespace) -> int:
    emit_json(document_schema())
    return 0


# --- parser ----------------------------------------------------------------------------


def _docs_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "-f",
        "--file",
        action="append",
        required=True,
        metavar="DOC",
        help="desired document (JSON or YAML); repeat to merge roles, then host",
    )
    p.add_argument("--root", default="/", metavar="DIR", help="prefix every file path with DIR")
    p.add_argument("--json", action="store_true", help="machine-readable output")


def register_core(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("plan", help="show what apply would change (exit 0 none, 2 pending)")
    _docs_args(p)
    p.set_defaults(handler=cmd_plan)

    p = sub.add_parser("apply", help="converge this host as one transaction with rollback")
    _docs_args(p)
    p.add_argument(
        "--probe",
        action="append",
        default=[],
        metavar="ADDR",
        help="also require ADDR (ICMP) or HOST:PORT (TCP) to stay reachable",
    )
    p.add_argument(
        "--rollback-window",
        type=float,
        default=30.0,
        metavar="S",
        help="seconds a lost probe may take to come back before reverting",
    )
    p.set_defaults(handler=cmd_apply)

    p = sub.add_parser("recover", help="revert an apply that a crash interrupted")
    p.add_argument("--root", default="/", metavar="DIR")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=cmd_recover)

    p = sub.add_parser("check", help="preflight: the seed's host requirements")
    p.add_argument("--root", default="/", metavar="DIR")
    p.add_argument("--json", action="store_true")
    p.add_argument(
        "--cloudstack",
        action="store_true",
        help="instead: would CloudStack's own KVM agent start on this host and work?",
    )
    p.set_defaults(handler=cmd_check)

    p = sub.add_parser("schema", help="print the JSON Schema of desired documents")
    p.set_defaults(handler=cmd_schema)


REGISTRARS: list[Callable[[argparse._SubParsersAction[argparse.ArgumentParser]], None]] = [
    register_core,
    register_agent,
    register_fleet,
]


class _Formatter(argparse.HelpFormatter):
    """argparse's, as wide as the terminal the way ``shutil.get_terminal_size`` finds it,
    without importing ``shutil``: argparse makes a formatter for every argument it checks,
    and ``shutil`` brings its compression modules into the agent (0.5 MiB) for nothing."""

    def __init__(self, prog: str, indent_increment: int = 2, max_help_position: int = 24) -> None:
        columns = 0
        with contextlib.suppress(KeyError, ValueError):
            columns = int(os.environ["COLUMNS"])
        if columns <= 0:
            with contextlib.suppress(AttributeError, ValueError, OSError):
                columns = os.get_terminal_size(sys.__stdout__.fileno()).columns  # type: ignore[union-attr]
        width = (columns if columns > 0 else 80) - 2
        super().__init__(prog, indent_increment, max_help_position, width)


class _Parser(argparse.ArgumentParser):
    """Every parser of ``csboot``, its sub-commands' too, with :class:`_Formatter`."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", _Formatter)
        super().__init__(*args, **kwargs)


def build_parser() -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = _Parser(
        prog="csboot",
        description="Converge Apache CloudStack KVM/LXC hypervisor hosts to desired state.",
    )
    parser.add_argument("--version", action="version", version=f"csboot {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug details")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for register in REGISTRARS:
        register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    handler: Handler = args.handler
    return handler(args)


if __name__ == "__main__":
    sys.exit(main())
