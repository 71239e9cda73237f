"""``csboot rollout | status | broker-acl``: the fleet commands, registered into csboot.

Exit codes: rollout 0 every host converged with checks ok, 1 aborted or hosts failed
(summary names them), 3 another controller holds the role's lock, 2 bad arguments or
no broker. status 0. broker-acl 0, 1 on an invalid inventory.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path

from bootstrap.agent.topics import DEFAULT_PREFIX
from bootstrap.errors import BootstrapError, ConfigError, InvalidDocument


def add_broker_args(p: argparse.ArgumentParser) -> None:
    """The broker options (read by ``connect.config_from_args``); here, so that building
    csboot's parser does not import the MQTT client."""
    g = p.add_argument_group("broker (like agent.toml)")
    g.add_argument("-c", "--config", metavar="TOML", help="controller config: broker, tls, auth")
    g.add_argument("--broker", action="append", metavar="URL", help="mqtt[s]://HOST[:PORT]")
    g.add_argument("--prefix", help=f"topic prefix (default {DEFAULT_PREFIX})")
    g.add_argument("--ca", type=Path, help="CA bundle for mqtts://")
    g.add_argument("--cert", type=Path, help="client certificate")
    g.add_argument("--key", type=Path, help="client certificate key")
    g.add_argument("--username")
    g.add_argument("--password-file", type=Path)


def _error(exc: BootstrapError, code: int = 1) -> int:
    print(f"csboot: error: {exc.message}", file=sys.stderr)
    return code


def cmd_rollout(args: argparse.Namespace) -> int:
    from bootstrap.errors import RolloutLocked
    from bootstrap.fleet.acl import load_inventory
    from bootstrap.fleet.connect import config_from_args
    from bootstrap.fleet.rollout import Options, run_rollout
    from bootstrap.fleet.waves import AbortPolicy, Amount, parse_waves
    from bootstrap.model.document import parse_document
    from bootstrap.model.signing import load_private_key

    try:
        doc = parse_document(Path(args.file).read_bytes())
        if doc.kind != "Role" or doc.name != args.role:
            raise InvalidDocument(f"DOC must be the Role document of {args.role}", field="-f")
        try:
            waves = parse_waves(args.waves)
            max_unavailable = Amount.parse(args.max_unavailable)
            policy = AbortPolicy(Amount.parse(args.abort_after), args.min_sample)
        except ValueError as exc:
            raise InvalidDocument(
                str(exc), field="--waves/--max-unavailable/--abort-after"
            ) from exc
        config = config_from_args(args)
        inventory: tuple[str, ...] = ()
        inventory_file = args.inventory or config.inventory
        if inventory_file:
            inventory = tuple(load_inventory(Path(inventory_file)).role_hosts(args.role))
        key = None
        if args.sign:
            if not args.key_id:
                raise InvalidDocument("--sign needs --key-id", field="--key-id")
            key = load_private_key(Path(args.sign).read_bytes())
    except OSError as exc:
        print(f"csboot: error: {exc}", file=sys.stderr)
        return 2
    except BootstrapError as exc:
        return _error(exc, 2)
    opts = Options(
        role=args.role,
        document=doc,
        waves=waves,
        max_unavailable=max_unavailable,
        policy=policy,
        timeout=args.timeout,
        heartbeat=args.heartbeat,
        inventory=inventory,
        canaries=tuple(args.canary),
        key=key,
        key_id=args.key_id or "",
    )

    def say(line: str) -> None:
        print(line, flush=True)

    try:
        result = asyncio.run(run_rollout(config, opts, say))
    except RolloutLocked as exc:
        return _error(exc, 3)
    except BootstrapError as exc:
        return _error(exc, 2)
    except KeyboardInterrupt:
        print("csboot: interrupted; run the same command again to resume", file=sys.stderr)
        return 130
    out = sys.stdout if result.ok else sys.stderr
    if args.json:
        json.dump(result.state.to_json(), sys.stdout, indent=2)
        print()
    for line in result.summary:
        print(line, file=out)
    return 0 if result.ok else 1


def cmd_status(args: argparse.Namespace) -> int:
    from bootstrap.fleet.connect import config_from_args
    from bootstrap.fleet.status import show_status

    try:
        config = config_from_args(args)
        return show_status(config, args.role, watch=args.watch, as_json=args.json)
    except BootstrapError as exc:
        return _error(exc, 2)


def cmd_broker_acl(args: argparse.Namespace) -> int:
    from bootstrap.fleet.acl import (
        Listener,
        group_id,
        load_inventory,
        unreachable,
        write_broker_files,
    )

    try:
        inv = load_inventory(Path(args.inventory))
        tls = {"cafile": args.cafile, "certfile": args.certfile, "keyfile": args.keyfile}
        if any(tls.values()) and not all(tls.values()):
            raise ConfigError("a TLS listener needs --cafile, --certfile and --keyfile")
        listeners = [Listener.parse(text, **tls) for text in args.listener or ["1883"]]
        write_broker_files(inv, Path(args.out), group=args.group or None, listeners=listeners)
        blocked = unreachable(Path(args.out), group_id(args.group or None))
    except OSError as exc:
        print(f"csboot: error: {exc}", file=sys.stderr)
        return 1
    except BootstrapError as exc:
        return _error(exc)
    if blocked is not None:
        print(
            f"csboot: warning: {blocked} cannot be entered by group {args.group or '-'}: "
            "the broker will not be able to read the files after dropping privileges",
            file=sys.stderr,
        )
    print(
        f"wrote {args.out}/acl, passwd, mosquitto-auth.conf "
        f"({len(inv.hosts)} hosts, {len(inv.operators)} operators)"
    )
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:

    p = sub.add_parser("rollout", help="roll a role's new version out in waves over MQTT")
    p.add_argument("-f", "--file", required=True, metavar="DOC", help="the Role document")
    p.add_argument("--role", required=True)
    p.add_argument(
        "--waves", default="1,10%,50%,100%", help="cumulative: N or P%%, comma-separated"
    )
    p.add_argument(
        "--max-unavailable",
        default="50%",
        metavar="N|P%",
        help="hosts applying, failed or offline at once (default 50%%)",
    )
    p.add_argument(
        "--abort-after",
        default="1",
        metavar="F|P%",
        help="failures (or %% of reported hosts) that abort (default 1)",
    )
    p.add_argument(
        "--min-sample",
        type=int,
        default=1,
        metavar="N",
        help="hosts that must have reported before aborting on a percentage",
    )
    p.add_argument(
        "--timeout",
        type=float,
        default=300.0,
        metavar="S",
        help="seconds a host may take to converge (then it counts as failed)",
    )
    p.add_argument(
        "--heartbeat",
        type=float,
        default=5.0,
        metavar="S",
        help="rollout-lock heartbeat; stale (taken over) after 3 missed",
    )
    p.add_argument(
        "--inventory",
        metavar="FILE",
        help="the hosts of ROLE (as for broker-acl; or `inventory` in -c TOML); without it, "
        "the hosts an earlier rollout of ROLE named. Never what hosts claim.",
    )
    p.add_argument(
        "--canary",
        action="append",
        default=[],
        metavar="HOST",
        help="goes first (default: first by name)",
    )
    p.add_argument("--sign", metavar="KEY", help="Ed25519 private key file: sign publications")
    p.add_argument("--key-id", metavar="ID")
    p.add_argument("--json", action="store_true", help="print the final rollout state")
    add_broker_args(p)
    p.set_defaults(handler=cmd_rollout)

    p = sub.add_parser("status", help="the fleet at a glance from retained statuses")
    p.add_argument("--role")
    p.add_argument("--watch", action="store_true", help="live view")
    p.add_argument("--json", action="store_true")
    add_broker_args(p)
    p.set_defaults(handler=cmd_status)

    p = sub.add_parser("broker-acl", help="mosquitto acl_file and password_file from an inventory")
    p.add_argument("--inventory", required=True, metavar="FILE")
    p.add_argument("--out", required=True, metavar="DIR")
    p.add_argument(
        "--group",
        default="mosquitto",
        help="group the broker runs as: passwd and acl become root:GROUP 0640 "
        "(default mosquitto; '' = owner-only 0600)",
    )
    p.add_argument(
        "--listener",
        action="append",
        metavar="[ADDR:]PORT",
        help="a listener the snippet defines, with client ids bound to user names "
        "(repeatable; default 1883)",
    )
    p.add_argument("--cafile", type=Path, help="TLS for the listeners: CA of client certs")
    p.add_argument("--certfile", type=Path, help="TLS: the broker's certificate")
    p.add_argument("--keyfile", type=Path, help="TLS: the broker's key")
    p.set_defaults(handler=cmd_broker_acl)
