"""Pure rollout planning: wave sizes, unavailability budget, abort decisions, lock rules."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

import pytest

from bootstrap.agent.status import status_document
from bootstrap.errors import ConfigError
from bootstrap.fleet.acl import acl_text, hash_password, parse_inventory
from bootstrap.fleet.state import RolloutState, iso, lock_holder, resumable, utcnow
from bootstrap.fleet.view import FleetView
from bootstrap.fleet.waves import (
    AbortPolicy,
    Amount,
    admit,
    failed_checks,
    judge,
    order_hosts,
    parse_waves,
    split_waves,
    wave_targets,
)
from bootstrap.wire.status import StatusDocument, parse_status

DEFAULT = parse_waves("1,10%,50%,100%")


@pytest.mark.parametrize(
    ("total", "expected"),
    [
        (1, [1]),
        (2, [1, 2]),
        (5, [1, 3, 5]),  # 10% of 5 rounds up to 1 (dropped: no new host), 50% -> 3
        (10, [1, 5, 10]),
        (20, [1, 2, 10, 20]),
        (100, [1, 10, 50, 100]),
        (101, [1, 11, 51, 101]),
    ],
)
def test_default_waves(total: int, expected: list[int]) -> None:
    assert wave_targets(DEFAULT, total) == expected


def test_waves_cover_every_host_once_in_order() -> None:
    hosts = [f"h{i:02d}" for i in range(37)]
    waves = split_waves(hosts, DEFAULT)
    assert [h for w in waves for h in w] == hosts
    assert len(waves[0]) == 1 and all(waves)


def test_a_last_wave_for_everyone_is_always_added() -> None:
    assert wave_targets(parse_waves("1,25%"), 20) == [1, 5, 20]
    assert wave_targets(parse_waves("3"), 2) == [2]
    assert wave_targets(parse_waves("1"), 0) == []


@pytest.mark.parametrize("bad", ["", "0", "1,x", "150%", "-1", "1,,0%"])
def test_bad_waves(bad: str) -> None:
    with pytest.raises(ValueError):
        parse_waves(bad)


def test_canary_first_then_by_name() -> None:
    assert order_hosts({"c", "a", "b"}) == ["a", "b", "c"]
    assert order_hosts({"c", "a", "b"}, ["c", "zz"]) == ["c", "a", "b"]


def test_max_unavailable_counts_in_flight_and_broken_hosts() -> None:
    pending = ["a", "b", "c", "d"]
    assert admit(pending, in_flight=0, unavailable=0, budget=3) == ["a", "b", "c"]
    assert admit(pending, in_flight=2, unavailable=0, budget=3) == ["a"]
    # an offline host elsewhere in the role eats the budget like one in flight
    assert admit(pending, in_flight=1, unavailable=1, budget=3) == ["a"]
    assert admit(pending, in_flight=0, unavailable=3, budget=3) == []
    assert Amount.parse("25%").of(20) == 5 and Amount.parse("25%").of(3) == 1


def test_abort_after_count() -> None:
    policy = AbortPolicy(Amount(2))
    assert policy.decide({"a": "succeeded", "b": "failed"}) is None
    reason = policy.decide({"a": "succeeded", "b": "failed", "c": "timed_out"})
    assert reason is not None and "b" in reason and "c" in reason


def test_abort_percent_waits_for_the_minimum_sample() -> None:
    policy = AbortPolicy(Amount(30, percent=True), min_sample=5)
    early = {"a": "failed", "b": "succeeded"}  # 50% failed, but only 2 reported
    assert policy.decide(early) is None
    five = {"a": "failed", "b": "succeeded", "c": "succeeded", "d": "succeeded", "e": "succeeded"}
    assert policy.decide(five) is None  # 20% < 30%
    five["e"] = "check_failed"
    reason = policy.decide(five)
    assert reason is not None and "40%" in reason


def test_offline_and_timeouts_count_as_failures_never_success() -> None:
    policy = AbortPolicy(Amount(1))
    assert policy.decide({"a": "offline"}) is not None
    assert policy.decide({"a": "timed_out"}) is not None
    assert policy.decide({"a": "succeeded"}) is None


def _status(
    state: str,
    version: int,
    checks: list[dict[str, Any]] | None = None,
    error: dict[str, Any] | None = None,
    host: str = "h1",
) -> StatusDocument:
    doc = status_document(host=host, state=state, applied={"roles": {"kvm": version}}, error=error)
    doc["checks"] = [{"detail": "", **c} for c in checks or []]
    return parse_status(json.dumps(doc).encode())


def test_judge_reads_state_version_and_checks() -> None:
    ok = {"name": "libvirt-listening", "ok": True}
    bad = {"name": "libvirt-listening", "ok": False}
    assert judge(_status("converged", 8, [ok]), role="kvm", version=8, fresh=True)[0] == (
        "succeeded"
    )
    assert judge(_status("converged", 7), role="kvm", version=8, fresh=True)[0] is None
    assert judge(_status("converged", 8, [bad]), role="kvm", version=8, fresh=True)[0] == (
        "check_failed"
    )
    # a check that already failed before the rollout is not this version's fault
    before = _status("converged", 7, [bad]).checks
    assert (
        judge(
            _status("converged", 8, [bad]),
            role="kvm",
            version=8,
            fresh=True,
            baseline_checks=before,
        )[0]
        == "succeeded"
    )
    assert judge(_status("failed", 7), role="kvm", version=8, fresh=True)[0] == "failed"
    assert judge(_status("failed", 7), role="kvm", version=8, fresh=False)[0] is None
    # offline: waited for (the controller's timeout makes it a failure), never a success
    assert judge(_status("offline", 8), role="kvm", version=8, fresh=True) == (None, "offline")
    assert judge(None, role="kvm", version=8, fresh=True)[0] is None
    assert failed_checks(_status("converged", 8, [bad, {"name": "x", "ok": True}]).checks) == [
        "libvirt-listening"
    ]


def test_judge_ignores_replays_and_rejections_of_other_versions() -> None:
    stale = {"code": "stale", "message": "v3 is not newer than v8 (replay)", "field": "version"}
    mine = {"code": "signature", "message": "bad", "document": "roles/kvm", "version": 8}
    other = {**mine, "version": 3}
    other_doc = {**mine, "document": "hosts/h1"}
    assert judge(_status("rejected", 8, error=stale), role="kvm", version=8, fresh=True) == (
        None,
        "waiting (rejected)",
    )
    assert judge(_status("rejected", 7, error=mine), role="kvm", version=8, fresh=True)[0] == (
        "rejected"
    )
    view = FleetView("p")
    converged = status_document(host="h1", state="converged", applied={"roles": {"kvm": 8}})
    view.feed("p/hosts/h1/status", json.dumps(converged).encode())
    for error in (stale, other, other_doc):
        rejected = status_document(
            host="h1", state="rejected", applied={"roles": {"kvm": 8}}, error=error
        )
        view.feed("p/hosts/h1/status", json.dumps(rejected).encode())
        reading = view.statuses["h1"].for_judging("kvm", 8)
        assert reading is not None and reading.state == "converged", error  # skipped
    rejected = status_document(host="h1", state="rejected", applied={"roles": {}}, error=mine)
    view.feed("p/hosts/h1/status", json.dumps(rejected).encode())
    reading = view.statuses["h1"].for_judging("kvm", 8)
    assert reading is not None and reading.state == "rejected"  # about what it was handed


def _rollout(controller: str, beat_age: float, phase: str = "running") -> RolloutState:
    now = utcnow()
    return RolloutState.model_validate(
        {
            "id": "kvm-v2-x",
            "role": "kvm",
            "version": 2,
            "digest": "d1",
            "waves": [["a"], ["b"]],
            "controller": controller,
            "heartbeat": iso(now - timedelta(seconds=beat_age)),
            "heartbeat_interval": 1.0,
            "started": iso(now),
            "phase": phase,
        }
    )


def test_lock_fresh_stale_and_finished() -> None:
    now = utcnow()
    assert lock_holder(_rollout("other", 0.5), "me", now) == "other"
    assert lock_holder(_rollout("other", 3.5), "me", now) is None  # 3 missed heartbeats
    assert lock_holder(_rollout("other", 0.5, "completed"), "me", now) is None
    assert lock_holder(None, "me", now) is None
    assert resumable(_rollout("other", 9), "d1") and not resumable(_rollout("o", 9), "d2")


def test_rollout_state_round_trips() -> None:
    state = _rollout("c", 0)
    state.admitted["a"] = iso(utcnow())
    again = RolloutState.model_validate_json(RolloutState.model_dump_json(state, by_alias=True))
    assert again == state and again.selector_hosts() == ["a"]


def test_mosquitto_hash_format() -> None:
    salt = bytes(range(12))
    text = hash_password("secret", salt=salt)
    assert text.startswith("$7$101$") and text != hash_password("other", salt=salt)
    assert hash_password("secret") != text  # a fresh salt each time


def test_acl_grants_hosts_only_their_topics() -> None:
    inv = parse_inventory(
        {"hosts": {"kvm1": {"roles": ["kvm"]}, "lxc1": {"roles": ["lxc"]}}, "operators": ["ops"]}
    )
    text = acl_text(inv)
    block = text.split("user kvm1\n")[1].split("\n\n")[0]
    assert "roles/kvm/desired" in block and "roles/lxc" not in block
    assert "hosts/lxc1" not in block and "topic readwrite cloudstack/bootstrap/v1/#" not in block
    with pytest.raises(ConfigError):
        parse_inventory({"hosts": {"Bad_Host": {}}})
    with pytest.raises(ConfigError):
        parse_inventory({"hosts": {"a": {}}, "operators": ["a"]})


def test_view_never_takes_membership_or_versions_from_statuses() -> None:
    view = FleetView("p")

    def status(host: str, roles: dict[str, int], state: str = "converged") -> bytes:
        doc = status_document(host=host, state=state, applied={"roles": roles})
        return json.dumps(doc).encode()

    view.feed("p/hosts/a/status", status("a", {"kvm": 4}))
    view.feed("p/hosts/evil/status", status("evil", {"kvm": 999999999999, "web": 7}))
    view.feed("p/hosts/d/status", b"not json")
    view.feed("p/hosts/e/status", status("not-e", {"kvm": 1}))
    assert view.statuses["d"].status is None and view.statuses["d"].state == "invalid"
    assert "host" in str(view.statuses["e"].latest.invalid)
    assert view.published_hosts("kvm") == [] and view.published_version("kvm") == 0
    doc = {
        "apiVersion": "cloudstack-bootstrap/v1",
        "kind": "Role",
        "name": "kvm",
        "version": 5,
        "spec": {},
        "rollout": {"id": "r1", "hosts": ["a", "b"]},
    }
    view.feed("p/roles/kvm/desired", json.dumps(doc).encode())
    assert view.published_hosts("kvm") == ["a", "b"] and view.published_version("kvm") == 5
    state = _rollout("c", 0).model_copy(update={"version": 7, "abort_version": 8})
    view.feed("p/rollouts/kvm", state.model_dump_json(by_alias=True).encode())
    assert view.published_hosts("kvm") == ["a", "b"] and view.published_version("kvm") == 8
    view.feed("p/roles/kvm/desired", b"[" * 100_000 + b"]" * 100_000)  # ignored, no crash
    seq = view.statuses["a"].seq
    view.feed("p/hosts/a/status", status("a", {"kvm": 5}))
    assert view.statuses["a"].seq > seq  # a later status is recognisably newer
    view.feed("p/hosts/a/status", b"")  # a cleared retained status forgets the host
    assert "a" not in view.statuses
    inv = parse_inventory({"hosts": {"x": {"roles": ["kvm"]}, "y": {"roles": ["lxc"]}}})
    assert inv.role_hosts("kvm") == ["x"]


def test_a_resumed_controller_times_hosts_from_when_it_began_watching() -> None:
    """A host handed the version before a broker outage or a controller's death, and not
    back yet (its will said ``offline``), gets a whole ``--timeout`` from the resume: the
    time nobody watched does not count against it. A host the same controller timed out
    is still judged so."""
    from bootstrap.fleet.rollout import Controller, Options
    from bootstrap.model.document import parse_document

    view = FleetView("p")
    offline = status_document(host="a", state="offline", applied={"roles": {"kvm": 1}})
    view.feed("p/hosts/a/status", json.dumps(offline).encode())
    doc = parse_document(
        {"apiVersion": "cloudstack-bootstrap/v1", "kind": "Role", "name": "kvm", "version": 2}
    )
    opts = Options("kvm", doc, parse_waves("1,100%"), timeout=15.0)
    controller = Controller(None, view, opts, say=lambda _line: None)  # type: ignore[arg-type]
    admitted = iso(utcnow() - timedelta(seconds=45))  # handed v2 45 s ago, then the outage
    controller.state = _rollout("c", 0).model_copy(update={"admitted": {"a": admitted}})
    assert controller.outcome("a", 2) == (None, "offline")  # resumed just now: waiting
    controller.watching_since = utcnow() - timedelta(seconds=16)  # watched it 16 s
    result, why = controller.outcome("a", 2)
    assert result == "offline" and "within 15s" in why


def test_a_rollout_state_whose_admission_time_does_not_parse_is_not_resumed() -> None:
    """From the wire: a retained rollout state naming a host admitted "yesterday" is
    ignored at intake (a resumed controller judging the host would fail on it)."""
    state = _rollout("c", 0).model_dump(by_alias=True)
    view = FleetView("p")
    for admitted in ({"a": "yesterday"}, {"a": "2026-12-03T10:00:00"}, {"a": "9" * 5000}):
        view.feed("p/rollouts/kvm", json.dumps({**state, "admitted": admitted}).encode())
        assert "kvm" not in view.rollouts, admitted
    view.feed("p/rollouts/kvm", json.dumps({**state, "admitted": {"a": iso(utcnow())}}).encode())
    assert view.rollouts["kvm"].admitted.keys() == {"a"}
