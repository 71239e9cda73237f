"""``csboot agent | firstboot | keygen | sign``: the agent's commands, registered into csboot."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from bootstrap.agent.topics import DEFAULT_PREFIX, check_prefix
from bootstrap.errors import BootstrapError, InvalidDocument


def _error(exc: BootstrapError) -> int:
    print(f"csboot: error: {exc.message}", file=sys.stderr)
    return 1


def cmd_agent(args: argparse.Namespace) -> int:
    from bootstrap.agent.config import load_config
    from bootstrap.agent.daemon import run_agent
    from bootstrap.agent.notify import journal_logging

    journal_logging(args.verbose)
    try:
        config = load_config(Path(args.config))
        return run_agent(config, once=args.once, wait=args.timeout)
    except BootstrapError as exc:
        return _error(exc)


def cmd_firstboot(args: argparse.Namespace) -> int:
    from bootstrap.agent.firstboot import Settings, firstboot
    from bootstrap.agent.notify import journal_logging

    journal_logging(args.verbose)
    tls = {k: v for k, v in (("ca", args.ca), ("cert", args.cert), ("key", args.key)) if v}
    auth = {"username": args.username} if args.username else None
    if auth and args.password_file:
        auth["password_file"] = args.password_file
    settings = Settings(
        brokers=tuple(args.broker),
        roles=tuple(r for value in args.role for r in value.split(",") if r),
        host=args.host,
        prefix=args.prefix,
        trusted_keys=tuple(args.trusted_key),
        tls=tls or None,
        auth=auth,
        rollback_window=args.rollback_window,
        debounce=args.debounce,
    )
    try:
        cmdline = Path(args.cmdline).read_text()
    except OSError:
        cmdline = ""
    try:
        return firstboot(
            settings,
            root=Path(args.root).resolve(),
            cmdline=cmdline,
            config_path=args.config,
            timeout=args.timeout,
        )
    except BootstrapError as exc:
        return _error(exc)


def cmd_keygen(args: argparse.Namespace) -> int:
    from bootstrap.files import atomic_write
    from bootstrap.model.signing import generate_key, private_key_bytes, public_key_text

    out = Path(args.out)
    if out.exists() and not args.force:
        print(f"csboot: error: {out} exists (use --force to replace it)", file=sys.stderr)
        return 1
    key = generate_key()
    import base64

    atomic_write(out, base64.b64encode(private_key_bytes(key)) + b"\n", mode=0o600)
    key_id = args.key_id or out.stem
    entry = f"{key_id}:{public_key_text(key.verify_key)}"
    atomic_write(out.with_name(out.name + ".pub"), entry.encode() + b"\n", mode=0o644)
    print(entry)
    return 0


def cmd_sign(args: argparse.Namespace) -> int:
    from bootstrap.model.document import parse_document
    from bootstrap.model.signing import load_private_key, sign

    try:
        prefix = check_prefix(args.prefix)
    except ValueError as exc:
        return _error(InvalidDocument(str(exc), field="--prefix"))
    try:
        key = load_private_key(Path(args.key).read_bytes())
        raw = sys.stdin.buffer.read() if args.document == "-" else Path(args.document).read_bytes()
        doc = sign(parse_document(raw), args.key_id, key, prefix=prefix)
    except OSError as exc:
        return _error(InvalidDocument(f"cannot read: {exc.strerror}", field=str(exc.filename)))
    except BootstrapError as exc:
        return _error(exc)
    json.dump(doc.to_json(), sys.stdout, separators=(",", ":"))
    sys.stdout.write("\n")
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("agent", help="the host daemon: desired state over MQTT")
    p.add_argument("-c", "--config", default="/etc/cloudstack-bootstrap/agent.toml")
    p.add_argument("--once", action="store_true", help="converge once, report, exit 0/1")
    p.add_argument(
        "--timeout",
        type=float,
        default=60.0,
        metavar="S",
        help="with --once: how long to wait for the desired state",
    )
    p.set_defaults(handler=cmd_agent)

    p = sub.add_parser("firstboot", help="first-boot hook: config, converge once, enable")
    p.add_argument("--broker", action="append", default=[], metavar="URL")
    p.add_argument("--role", action="append", default=[], metavar="ROLE[,ROLE]")
    p.add_argument("--host", help="host name (default: csboot.host=, else the FQDN)")
    p.add_argument("--prefix")
    p.add_argument("--trusted-key", action="append", default=[], metavar="KEYID:BASE64")
    p.add_argument("--ca")
    p.add_argument("--cert")
    p.add_argument("--key")
    p.add_argument("--username")
    p.add_argument("--password-file")
    p.add_argument("--rollback-window", type=float)
    p.add_argument("--debounce", type=float)
    p.add_argument("--root", default="/", metavar="DIR")
    p.add_argument(
        "--config",
        default="/etc/cloudstack-bootstrap/agent.toml",
        help="where to write agent.toml (under --root)",
    )
    p.add_argument(
        "--cmdline",
        default="/proc/cmdline",
        metavar="FILE",
        help="kernel command line to read csboot.* settings from",
    )
    p.add_argument("--timeout", type=float, default=300.0, metavar="S")
    p.set_defaults(handler=cmd_firstboot)

    p = sub.add_parser("keygen", help="new Ed25519 signing key (private file 0600 + .pub)")
    p.add_argument("--out", required=True, metavar="KEYFILE")
    p.add_argument("--key-id", help="id in signatures and trusted_keys (default: file stem)")
    p.add_argument("--force", action="store_true")
    p.set_defaults(handler=cmd_keygen)

    p = sub.add_parser("sign", help="print DOC signed with KEYFILE")
    p.add_argument("-k", "--key", required=True, metavar="KEYFILE")
    p.add_argument("--key-id", required=True)
    p.add_argument(
        "--prefix",
        default=DEFAULT_PREFIX,
        help="topic prefix of the hosts that will verify it (signatures are bound to it)",
    )
    p.add_argument("document", metavar="DOC", help="JSON or YAML document, - for stdin")
    p.set_defaults(handler=cmd_sign)
