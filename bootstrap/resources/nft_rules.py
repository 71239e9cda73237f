"""The host firewall as data: desired state -> one libnftables JSON batch, listing -> state.

Pure functions only; ``firewall.py`` talks to the kernel. Everything lives in one table of
our own, ``inet cloudstack_bootstrap``, so other tools' tables (firewalld, libvirt, docker,
an operator's ``table ip filter``) are never read for modification nor touched.

Why ``priority filter - 10`` for our input chain: it must run after conntrack (-200) so
``ct state`` works, and it must not share priority 0 with other filter chains, because the
kernel orders chains of equal priority by registration, and replacing our table
re-registers it; a fixed, earlier priority keeps the evaluation order the same after every
apply. An ``accept`` here only ends *our* chain, so with policy ``accept`` other tables
still decide as before; a ``drop`` (our policy ``drop``) is final.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from bootstrap.model.ports import Span, merge_spans
from bootstrap.model.spec import Firewall

FAMILY = "inet"
TABLE = "cloudstack_bootstrap"
CHAIN = "input"
PRIORITY = -10
PORTS_SET = "allow_tcp"
SOURCES_SETS = {4: "sources4", 6: "sources6"}
COMMENT = "managed by cloudstack-bootstrap; replaced whole on every apply"

Policy = Literal["accept", "drop"]
Json = dict[str, Any]

TABLE_REF: Json = {"family": FAMILY, "name": TABLE}


@dataclass(frozen=True, slots=True)
class FirewallState:
    """Our table as observed or desired; comparable, and JSON-serialisable for the journal.

    ``rules`` and ``extras`` hold canonical JSON (handles and counter values removed), so
    a rule deleted or edited by hand shows as drift and a snapshot can be re-applied as is.
    """

    policy: Policy | None  # None: our ``input`` base chain is missing
    allow_tcp: tuple[Span, ...]  # merged, sorted port ranges
    sources: tuple[str, ...]  # collapsed CIDRs, IPv4 first; empty = from anywhere
    rules: tuple[str, ...]  # the rules of chain ``input``, in order
    priority: int | None = PRIORITY
    extras: tuple[str, ...] = ()  # objects in our table we did not make (chains, sets...)


# ---------------------------------------------------------------- normalising


def collapse_sources(
    networks: Iterable[ipaddress.IPv4Network | ipaddress.IPv6Network],
) -> tuple[str, ...]:
    v4 = [n for n in networks if isinstance(n, ipaddress.IPv4Network)]
    v6 = [n for n in networks if isinstance(n, ipaddress.IPv6Network)]
    # separate calls (not a single one): collapse_addresses refuses mixed families
    return tuple(str(n) for n in ipaddress.collapse_addresses(v4)) + tuple(
        str(n) for n in ipaddress.collapse_addresses(v6)
    )


def canonical(obj: Any) -> str:
    """Stable text of a JSON object, without what changes by itself (handles, counts)."""
    return json.dumps(_strip(obj), sort_keys=True, separators=(",", ":"))


def _strip(obj: Any) -> Any:
    if isinstance(obj, dict):
        out = {k: _strip(v) for k, v in obj.items() if k not in {"handle", "expires"}}
        if "packets" in out and "bytes" in out:
            out["packets"] = out["bytes"] = 0
        return out
    if isinstance(obj, list):
        return [_strip(v) for v in obj]
    return obj


# ---------------------------------------------------------------- desired state


def _match(left: Json, right: Any, op: str = "==") -> Json:
    return {"match": {"op": op, "left": left, "right": right}}


def _rule(comment: str, *exprs: Json) -> str:
    return canonical({"comment": comment, "expr": list(exprs)})


def base_rules(policy: Policy, sources: Sequence[str]) -> tuple[str, ...]:
    """The chain's rules, written exactly as libnftables lists them back."""
    accept: Json = {"accept": None}
    rules = [
        _rule("loopback", _match({"meta": {"key": "iif"}}, "lo"), accept),
        _rule(
            "replies to this host's own connections (the agent's broker session)",
            _match({"ct": {"key": "state"}}, ["established", "related"], "in"),
            accept,
        ),
    ]
    if policy == "drop":
        rules.append(
            _rule(
                "not part of any valid connection",
                _match({"ct": {"key": "state"}}, "invalid", "in"),
                {"drop": None},
            )
        )
    rules += [
        _rule("ping", _match({"meta": {"key": "l4proto"}}, "icmp"), accept),
        _rule(
            "ping and neighbour discovery",
            _match({"meta": {"key": "l4proto"}}, "ipv6-icmp"),
            accept,
        ),
    ]
    dport = _match({"payload": {"protocol": "tcp", "field": "dport"}}, f"@{PORTS_SET}")
    families = sorted({ipaddress.ip_network(s).version for s in sources})
    if not families:
        rules.append(_rule("allowed TCP ports", dport, accept))
    for version in families:
        proto = "ip" if version == 4 else "ip6"
        saddr = _match(
            {"payload": {"protocol": proto, "field": "saddr"}}, f"@{SOURCES_SETS[version]}"
        )
        rules.append(_rule(f"allowed TCP ports, from sources (IPv{version})", saddr, dport, accept))
    return tuple(rules)


def desired_state(firewall: Firewall) -> FirewallState:
    sources = collapse_sources(firewall.sources)
    return FirewallState(
        policy=firewall.policy,
        allow_tcp=merge_spans((p.first, p.last) for p in firewall.allow_tcp),
        sources=sources,
        rules=base_rules(firewall.policy, sources),
    )


# ---------------------------------------------------------------- state -> batch


def _port_elem(span: Span) -> Any:
    return span[0] if span[0] == span[1] else {"range": list(span)}


def _addr_elem(cidr: str) -> Any:
    net = ipaddress.ip_network(cidr)
    if net.prefixlen == net.max_prefixlen:
        return str(net.network_address)
    return {"prefix": {"addr": str(net.network_address), "len": net.prefixlen}}


def _set(name: str, kind: str, elems: list[Any]) -> Json:
    body: Json = {"family": FAMILY, "table": TABLE, "name": name, "type": kind}
    body["flags"] = ["interval"]
    if elems:
        body["elem"] = elems
    return {"add": {"set": body}}


def replace_batch(state: FirewallState | None) -> Json:
    """One atomic batch that replaces our table with ``state`` (None: just remove it).

    ``add table`` then ``delete table`` removes the table whether it exists or not, so
    the batch never depends on what was observed; if any later command fails, the kernel
    rejects the whole batch and the old table stays.
    """
    cmds: list[Json] = [{"add": {"table": dict(TABLE_REF)}}, {"delete": {"table": dict(TABLE_REF)}}]
    if state is None:
        return {"nftables": cmds}
    # nft 1.0.6 ignores table comments in JSON; later versions keep it: harmless either way
    cmds.append({"add": {"table": {**TABLE_REF, "comment": COMMENT}}})
    if state.policy is not None:
        chain: Json = {"family": FAMILY, "table": TABLE, "name": CHAIN, "type": "filter"}
        chain |= {
            "hook": "input",
            "prio": PRIORITY if state.priority is None else state.priority,
            "policy": state.policy,
        }
        cmds.append({"add": {"chain": chain}})
    elif state.rules:  # a snapshot whose base chain had lost its hook: keep its rules
        cmds.append({"add": {"chain": {"family": FAMILY, "table": TABLE, "name": CHAIN}}})
    cmds.append(_set(PORTS_SET, "inet_service", [_port_elem(s) for s in state.allow_tcp]))
    for version, name in SOURCES_SETS.items():
        nets = [s for s in state.sources if ipaddress.ip_network(s).version == version]
        cmds.append(_set(name, f"ipv{version}_addr", [_addr_elem(s) for s in nets]))
    extras = [json.loads(e) for e in state.extras]
    rules = [{"rule": {**json.loads(r), "chain": CHAIN}} for r in state.rules]
    # the objects rules may refer to (chains, sets, maps) come before any rule
    for obj in sorted(extras, key=lambda o: "rule" in o) + rules:
        ((kind, body),) = obj.items()
        cmds.append({"add": {kind: {**body, "family": FAMILY, "table": TABLE}}})
    return {"nftables": cmds}


# ---------------------------------------------------------------- listing -> state


def _port_span(elem: Any) -> Span:
    if isinstance(elem, int):
        return (elem, elem)
    first, last = elem["range"]
    return (int(first), int(last))


def _networks(elem: Any) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    if isinstance(elem, str):
        return [ipaddress.ip_network(elem)]
    if "prefix" in elem:
        return [ipaddress.ip_network(f"{elem['prefix']['addr']}/{elem['prefix']['len']}")]
    first, last = (ipaddress.ip_address(a) for a in elem["range"])
    return list(ipaddress.summarize_address_range(first, last))


def parse_listing(listing: Mapping[str, Any]) -> FirewallState | None:
    """The state of our table from ``list table inet cloudstack_bootstrap`` (JSON)."""
    objects: list[Json] = [o for o in listing.get("nftables", []) if "metainfo" not in o]
    if not any(o.get("table", {}).get("name") == TABLE for o in objects):
        return None
    policy: Policy | None = None
    priority: int | None = None
    spans: list[Span] = []
    nets: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
    rules: list[str] = []
    extras: list[str] = []
    for obj in objects:
        ((kind, body),) = obj.items()
        if body.get("table") != TABLE or body.get("family") != FAMILY:
            continue
        own = {k: v for k, v in body.items() if k not in {"family", "table", "handle"}}
        if kind == "chain" and body["name"] == CHAIN:
            if "hook" in body:
                policy, priority = body.get("policy", "accept"), int(body.get("prio", 0))
        elif kind == "set" and body["name"] == PORTS_SET:
            spans += [_port_span(e) for e in body.get("elem", [])]
        elif kind == "set" and body["name"] in SOURCES_SETS.values():
            nets += [n for e in body.get("elem", []) for n in _networks(e)]
        elif kind == "rule" and body.get("chain") == CHAIN:
            rules.append(canonical({k: v for k, v in own.items() if k != "chain"}))
        else:
            extras.append(canonical({kind: own}))
    extras.sort(key=lambda e: e.startswith('{"rule"'))  # what rules refer to comes first
    return FirewallState(
        policy=policy,
        allow_tcp=merge_spans(spans),
        sources=collapse_sources(nets),
        rules=tuple(rules),
        priority=priority,
        extras=tuple(extras),
    )


# ---------------------------------------------------------------- words


def _spans_text(spans: Iterable[Span]) -> str:
    return ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in spans)


def _subtract(spans: Sequence[Span], minus: Sequence[Span]) -> tuple[Span, ...]:
    """Ports in ``spans`` but not in ``minus``, as ranges."""
    out: list[Span] = []
    for first, last in spans:
        start = first
        for a, b in minus:
            if b < start or a > last:
                continue
            if a > start:
                out.append((start, a - 1))
            start = max(start, b + 1)
        if start <= last:
            out.append((start, last))
    return tuple(out)


_BARE_META = {"iif", "oif", "iifname", "oifname", "mark"}


def _value(value: Any) -> str:
    if isinstance(value, list):
        return ",".join(_value(v) for v in value)
    if isinstance(value, dict):
        if "set" in value:
            return "{ " + ", ".join(_value(v) for v in value["set"]) + " }"
        if "range" in value:
            return "-".join(_value(v) for v in value["range"])
        if "prefix" in value:
            return f"{value['prefix']['addr']}/{value['prefix']['len']}"
        if "meta" in value:
            key = value["meta"]["key"]
            return key if key in _BARE_META else f"meta {key}"
        if "ct" in value:
            return f"ct {value['ct']['key']}"
        if "payload" in value:
            return f"{value['payload']['protocol']} {value['payload']['field']}"
        return canonical(value)
    return "" if value is None else str(value)


def _expr(expr: Json) -> str:
    ((kind, body),) = expr.items()
    if kind == "match":
        op = "" if body["op"] in {"==", "in"} else f"{body['op']} "
        return f"{_value(body['left'])} {op}{_value(body['right'])}"
    if kind in {"accept", "drop", "return", "continue", "reject", "counter"}:
        return kind
    if kind in {"jump", "goto"}:
        return f"{kind} {body['target']}"
    return canonical(expr)


def render_rule(rule: str) -> str:
    """A rule in nft-like words, for plans: ``ct state invalid drop``."""
    data = json.loads(rule)
    return " ".join(_expr(e) for e in data.get("expr", []))


def describe(current: FirewallState, target: FirewallState) -> list[str]:
    """What changes from ``current`` to ``target``, one line per difference."""
    lines: list[str] = []
    if current.policy != target.policy:
        lines.append(f"policy {current.policy or 'missing'} -> {target.policy or 'missing'}")
    if current.priority != target.priority:
        lines.append(f"priority {current.priority} -> {target.priority}")
    if added := _subtract(target.allow_tcp, current.allow_tcp):
        lines.append(f"+ tcp {_spans_text(added)}")
    if removed := _subtract(current.allow_tcp, target.allow_tcp):
        lines.append(f"- tcp {_spans_text(removed)}")
    lines += [f"+ source {s}" for s in target.sources if s not in current.sources]
    lines += [f"- source {s}" for s in current.sources if s not in target.sources]
    missing = [r for r in target.rules if r not in current.rules]
    unexpected = [r for r in current.rules if r not in target.rules]
    lines += [f"+ rule {render_rule(r)}" for r in missing]
    lines += [f"- rule {render_rule(r)}" for r in unexpected]
    if not missing and not unexpected and current.rules != target.rules:
        lines.append("rules reordered or duplicated")
    lines += [f"- {e} (not ours)" for e in current.extras if e not in target.extras]
    lines += [f"+ {e}" for e in target.extras if e not in current.extras]
    return lines


def summary(state: FirewallState) -> str:
    """One line for a table about to be created."""
    text = f"policy {state.policy}, tcp {_spans_text(state.allow_tcp) or 'none'}"
    return text + (f" from {', '.join(state.sources)}" if state.sources else "")
