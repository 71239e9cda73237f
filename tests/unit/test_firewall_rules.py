"""The pure half of the firewall: spec -> state -> one JSON batch, listing -> state, words."""

from __future__ import annotations

import ipaddress
import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bootstrap.model.ports import merge_spans
from bootstrap.model.spec import Firewall, PortRange
from bootstrap.resources.firewall import FirewallResource
from bootstrap.resources.nft_rules import (
    FAMILY,
    PRIORITY,
    TABLE,
    FirewallState,
    canonical,
    collapse_sources,
    describe,
    desired_state,
    parse_listing,
    render_rule,
    replace_batch,
)


def as_listing(batch: dict[str, Any]) -> dict[str, Any]:
    """What the kernel would list after ``batch``: its last table, with handles."""
    cmds = batch["nftables"]
    start = max(i for i, c in enumerate(cmds) if "delete" in c) + 1
    objects: list[dict[str, Any]] = [{"metainfo": {"version": "1.0.6"}}]
    for handle, cmd in enumerate(cmds[start:], start=1):
        ((kind, body),) = cmd["add"].items()
        body = {k: v for k, v in body.items() if k != "comment" or kind == "rule"}
        objects.append({kind: {**body, "handle": handle}})
    return {"nftables": objects}


def ports(state: FirewallState) -> set[int]:
    return {p for a, b in state.allow_tcp for p in range(a, b + 1)}


def test_default_spec_is_the_seeds_port_list() -> None:
    state = desired_state(Firewall())
    assert state.policy == "accept"
    assert state.allow_tcp == (
        (22, 22), (1798, 1798), (5900, 6100), (16509, 16509), (16514, 16514), (49152, 49216)
    )  # fmt: skip
    assert state.sources == ()
    texts = [render_rule(r) for r in state.rules]
    assert "ct state invalid drop" not in texts  # only with policy drop
    assert texts[-1] == "tcp dport @allow_tcp accept"
    assert {"iif lo accept", "ct state established,related accept"} <= set(texts)
    assert {"meta l4proto icmp accept", "meta l4proto ipv6-icmp accept"} <= set(texts)


def test_drop_adds_invalid_drop_before_the_accepts() -> None:
    texts = [render_rule(r) for r in desired_state(Firewall(policy="drop")).rules]
    assert texts.index("ct state invalid drop") < texts.index("tcp dport @allow_tcp accept")
    assert texts.index("ct state established,related accept") < texts.index("ct state invalid drop")


def test_sources_limit_the_allow_rule_per_family() -> None:
    fw = Firewall.model_validate({"sources": ["10.1.0.0/16", "10.0.0.0/16", "fd00::/64"]})
    state = desired_state(fw)
    assert state.sources == ("10.0.0.0/15", "fd00::/64")  # collapsed
    texts = [render_rule(r) for r in state.rules]
    assert "tcp dport @allow_tcp accept" not in texts
    assert "ip saddr @sources4 tcp dport @allow_tcp accept" in texts
    assert "ip6 saddr @sources6 tcp dport @allow_tcp accept" in texts
    only_v6 = desired_state(Firewall.model_validate({"sources": ["fd00::/64"]}))
    assert not any("@sources4" in r for r in only_v6.rules)


def test_merge_spans_joins_overlaps_and_neighbours() -> None:
    assert merge_spans([(30, 40), (22, 22), (23, 25), (35, 50), (60, 60)]) == (
        (22, 25),
        (30, 50),
        (60, 60),
    )


def test_collapse_sources_keeps_families_apart() -> None:
    nets = [ipaddress.ip_network(n) for n in ("fd00::/8", "10.0.0.128/25", "10.0.0.0/25")]
    assert collapse_sources(nets) == ("10.0.0.0/24", "fd00::/8")


def test_batch_replaces_only_our_table_atomically() -> None:
    state = desired_state(Firewall.model_validate({"policy": "drop", "sources": ["10.9.0.0/24"]}))
    cmds = replace_batch(state)["nftables"]
    assert [next(iter(c)) for c in cmds[:3]] == ["add", "delete", "add"]
    assert all(set(c) <= {"add", "delete"} for c in cmds)  # no flush, no list
    for cmd in cmds:
        ((_, obj),) = cmd.items()
        ((kind, body),) = obj.items()
        assert body["family"] == FAMILY
        assert body["table" if kind != "table" else "name"] == TABLE
    chains = [c["add"]["chain"] for c in cmds if "chain" in c.get("add", {})]
    assert chains == [
        {"family": FAMILY, "table": TABLE, "name": "input", "type": "filter", "hook": "input",
         "prio": PRIORITY, "policy": "drop"}
    ]  # fmt: skip
    kinds = [next(iter(c["add"])) for c in cmds[3:]]
    assert kinds.index("set") < kinds.index("rule")  # rules refer to the sets
    assert kinds.count("rule") == len(state.rules)


def test_delete_batch_only_removes_our_table() -> None:
    ref = {"family": FAMILY, "name": TABLE}
    assert replace_batch(None) == {
        "nftables": [{"add": {"table": ref}}, {"delete": {"table": ref}}]
    }


@pytest.mark.parametrize(
    "spec",
    [
        {},
        {"policy": "drop"},
        {"policy": "drop", "allow_tcp": [], "sources": ["192.168.5.7/32", "fd00::1/128"]},
        {"allow_tcp": [22, 23, "100-200", "150-300"], "sources": ["10.0.0.0/8"]},
    ],
)
def test_listing_of_the_batch_parses_back_to_the_same_state(spec: dict[str, Any]) -> None:
    state = desired_state(Firewall.model_validate(spec))
    assert parse_listing(as_listing(replace_batch(state))) == state


def test_absent_table_is_none() -> None:
    assert parse_listing({"nftables": [{"metainfo": {"version": "1.0.6"}}]}) is None


def test_parse_reads_every_element_form() -> None:
    listing = as_listing(replace_batch(desired_state(Firewall())))
    for obj in listing["nftables"]:
        body = obj.get("set", {})
        if body.get("name") == "allow_tcp":
            body["elem"] = [22, {"range": [23, 30]}, 8080]
        if body.get("name") == "sources4":
            body["elem"] = ["10.0.0.1", {"prefix": {"addr": "10.1.0.0", "len": 16}}]
        if body.get("name") == "sources6":
            body["elem"] = [{"range": ["fd00::", "fd00::ff"]}]
    state = parse_listing(listing)
    assert state is not None
    assert state.allow_tcp == ((22, 30), (8080, 8080))
    assert state.sources == ("10.0.0.1/32", "10.1.0.0/16", "fd00::/120")


def test_counters_and_handles_do_not_count_as_drift() -> None:
    state = desired_state(Firewall())
    listing = as_listing(replace_batch(state))
    for obj in listing["nftables"]:
        if "rule" in obj:
            obj["rule"]["expr"].insert(0, {"counter": {"packets": 7, "bytes": 900}})
    quiet, busy = parse_listing(listing), parse_listing(listing)
    for obj in listing["nftables"]:
        for expr in obj.get("rule", {}).get("expr", []):
            if "counter" in expr:
                expr["counter"]["packets"] += 1
    assert quiet == busy == parse_listing(listing)


def test_a_rule_deleted_by_hand_is_drift_in_words() -> None:
    state = desired_state(Firewall(policy="drop"))
    listing = as_listing(replace_batch(state))
    listing["nftables"] = [
        o for o in listing["nftables"] if "invalid" not in json.dumps(o.get("rule", {}))
    ]
    current = parse_listing(listing)
    assert current is not None
    assert describe(current, state) == ["+ rule ct state invalid drop"]


def test_foreign_objects_in_our_table_are_kept_in_snapshots() -> None:
    state = desired_state(Firewall())
    listing = as_listing(replace_batch(state))
    extra_chain = {"family": FAMILY, "table": TABLE, "name": "forward", "handle": 99}
    extra_rule = {"family": FAMILY, "table": TABLE, "chain": "forward", "handle": 100,
                  "expr": [{"jump": {"target": "input"}}]}  # fmt: skip
    listing["nftables"] += [{"rule": extra_rule}, {"chain": extra_chain}]
    snapshot = parse_listing(listing)
    assert snapshot is not None
    assert len(snapshot.extras) == 2
    assert any(line.endswith("(not ours)") for line in describe(snapshot, state))
    # re-applying the snapshot re-creates them, chains before the rules using them
    kinds = [next(iter(c["add"])) for c in replace_batch(snapshot)["nftables"] if "add" in c]
    assert kinds.index("chain", 2) < max(i for i, k in enumerate(kinds) if k == "rule")
    assert parse_listing(as_listing(replace_batch(snapshot))) == snapshot


def test_describe_names_policy_and_port_changes() -> None:
    old = desired_state(Firewall())
    new = desired_state(
        Firewall.model_validate({"policy": "drop", "allow_tcp": [22, 8080, "49152-49199"]})
    )
    lines = describe(old, new)
    assert "policy accept -> drop" in lines
    assert "+ tcp 8080" in lines
    assert "- tcp 1798, 5900-6100, 16509, 16514, 49200-49216" in lines
    assert describe(new, new) == []


spans = st.lists(
    st.tuples(st.integers(1, 300), st.integers(0, 40)).map(lambda t: (t[0], t[0] + t[1])),
    max_size=8,
)


@given(spans, spans)
def test_port_words_match_port_sets(a: list[tuple[int, int]], b: list[tuple[int, int]]) -> None:
    base = desired_state(Firewall())
    cur = FirewallState("accept", merge_spans(a), (), base.rules)
    tgt = FirewallState("accept", merge_spans(b), (), base.rules)
    added: set[int] = set()
    removed: set[int] = set()
    for line in describe(cur, tgt):
        sign, _, text = line.partition(" tcp ")
        for part in text.split(", "):
            first, _, last = part.partition("-")
            span = set(range(int(first), int(last or first) + 1))
            (added if sign == "+" else removed).update(span)
    assert added == ports(tgt) - ports(cur)
    assert removed == ports(cur) - ports(tgt)


def test_resource_pure_parts() -> None:
    res = FirewallResource(Firewall(policy="drop"))
    assert res.name == "nft/inet cloudstack_bootstrap"
    target = res.target(None)
    assert target is not None
    (create,) = res.diff(None, target)
    assert create.action == "create"
    assert "policy drop" in create.detail
    assert "49152-49216" in create.detail
    (delete,) = res.diff(target, None)
    assert delete.action == "delete"
    assert res.diff(target, target) == []
    loose = desired_state(Firewall())
    assert {c.action for c in res.diff(loose, target)} == {"modify"}
    assert FirewallResource(None).target(loose) == loose  # no section: unmanaged


@pytest.mark.parametrize("state", [None, desired_state(Firewall(policy="drop"))])
def test_state_survives_the_journal(state: FirewallState | None) -> None:
    res = FirewallResource(Firewall())
    dumped = json.loads(json.dumps(res.dump(state)))
    assert res.load(dumped) == state


def test_rule_text_falls_back_to_json_for_unknown_expressions() -> None:
    rule = canonical({"expr": [{"limit": {"rate": 5, "per": "second"}}, {"accept": None}]})
    assert render_rule(rule).endswith(" accept")
    assert '"limit"' in render_rule(rule)
    assert PortRange.parse("5-6").last == 6
