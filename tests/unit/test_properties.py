"""The agent.properties editor: Java semantics, exact keys, and edits that keep the rest."""

from __future__ import annotations

import string
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from bootstrap.host.root import HostRoot
from bootstrap.model import validate_spec
from bootstrap.resources.properties import AgentProperties, derived, describe, edit, parse

# Text built from the characters that matter to the format, so the odd cases come up.
_chars = st.sampled_from([*"ab.k=: \t\f\\#!\r\n", "é", "x", "\x00", "ÿ"])
texts = st.text(_chars, max_size=80)
keys = st.text(
    st.sampled_from(list(string.ascii_lowercase[:4] + ".=: \\#é")), min_size=1, max_size=6
)
values = st.text(st.sampled_from(list("ab =:\\ \t#é\u20ac\U0001f600")), max_size=6)
desired = st.dictionaries(keys, values, max_size=4)


@given(texts)
def test_parse_render_is_identity(text: str) -> None:
    assert parse(text).render() == text
    assert edit(text, {}) == text


@given(texts, desired)
@settings(max_examples=300)
def test_edit_is_idempotent_and_sets_values(text: str, want: dict[str, str]) -> None:
    once = edit(text, want)
    assert edit(once, want) == once
    after = parse(once).mapping()
    for key, value in want.items():
        assert after[key] == value


@given(texts, desired)
@settings(max_examples=300)
def test_untouched_keys_and_lines_survive(text: str, want: dict[str, str]) -> None:
    before = parse(text)
    after = parse(edit(text, want))
    assert set(after.mapping()) == set(before.mapping()) | set(want)
    for key, value in before.mapping().items():
        if key not in want:
            assert after.mapping()[key] == value
    # Every physical line that is not part of an edited entry is still there, in order.
    touched = {
        i
        for e in before.entries
        if e.key in want and e is before.occurrences(e.key)[-1]
        for i in range(e.start, e.end)
    }
    kept = [line for i, line in enumerate(before.lines) if i not in touched]
    out = iter(after.lines)
    for line in kept:
        stripped = line.rstrip("\r\n")
        assert any(o.rstrip("\r\n") == stripped for o in out), line


@given(texts, desired, st.lists(keys, max_size=3))
def test_remove_drops_every_occurrence(text: str, want: dict[str, str], gone: list[str]) -> None:
    out = edit(text, want, gone)
    mapping = parse(out).mapping()
    for key in gone:
        if key not in want:
            assert key not in mapping
    assert edit(out, want, gone) == out


def test_java_separators_and_continuations() -> None:
    text = "a=1\nb:2\nc 3\n  d  =  4\ne\\\n   xt = 5\\\n  6\n# f=7\n! g=8\nh\\:i=9\nj\n"
    assert parse(text).mapping() == {
        "a": "1",
        "b": "2",
        "c": "3",
        "d": "4",
        "ext": "56",
        "h:i": "9",
        "j": "",
    }


def test_exact_key_match_never_prefix() -> None:
    text = "host.tags=x\nhostname=h1\n"
    out = edit(text, {"host": "10.0.0.5"})
    assert out == "host.tags=x\nhostname=h1\nhost=10.0.0.5\n"
    out2 = edit(out, {"host": "10.0.0.6"})
    assert out2 == "host.tags=x\nhostname=h1\nhost=10.0.0.6\n"


def test_edit_in_place_keeps_separator_and_position() -> None:
    text = "# CloudStack agent\nzone : 1\nhost = a\nhost.tags=x\n"
    assert edit(text, {"host": "b"}) == "# CloudStack agent\nzone : 1\nhost = b\nhost.tags=x\n"


def test_duplicates_edit_the_last_and_say_so() -> None:
    text = "hypervisor.type=kvm\nfoo=1\nhypervisor.type=kvm\n"
    out = edit(text, {"hypervisor.type": "lxc"})
    assert out == "hypervisor.type=kvm\nfoo=1\nhypervisor.type=lxc\n"
    assert "duplicate key: edited the last of 2" in describe(text, out)


def test_escaping_round_trips_through_java_rules() -> None:
    out = edit("", {"path": "C:\\x", "lead": "  two", "uni": "€"})
    assert "path=C:\\\\x\n" in out
    assert "uni=\\u20ac\n" in out
    assert parse(out).mapping() == {"path": "C:\\x", "lead": "  two", "uni": "€"}


def test_no_trailing_newline_and_crlf_are_kept() -> None:
    assert edit("a=1", {"b": "2"}) == "a=1\nb=2\n"
    assert edit("a=1\r\n", {"b": "2", "a": "3"}) == "a=3\r\nb=2\r\n"


def test_describe_reads_like_a_change() -> None:
    assert describe("a=1\nb=2\n", "a=3\nc=4\n") == "a: 1 -> 3; c: (unset) -> 4; b: 2 -> (removed)"


def test_derived_keys_for_custom_cpu_and_network() -> None:
    spec = validate_spec(
        {
            "hypervisor": "kvm",
            "cpu": {"mode": "custom", "model": "SandyBridge"},
            "network": {
                "backend": "openvswitch",
                "uplink": "eth0",
                "bridges": [
                    {"name": "cloudbr0", "vlan": 200, "traffic": ["public"]},
                    {"name": "cloudbr1", "vlan": 300, "traffic": ["guest"]},
                ],
                "management": {"vlan": 100, "address": "192.168.42.11/24"},
            },
        }
    )
    values, remove = derived(spec)
    assert values["guest.cpu.model"] == "SandyBridge"
    assert values["network.bridge.type"] == "openvswitch"
    assert values["public.network.device"] == "cloudbr0"
    assert values["private.network.device"] == "mgmt0"  # implied by management.vlan
    assert values["guest.network.device"] == "cloudbr1"
    # no bridge carries storage traffic: we own the key, so it is removed
    assert "storage.network.device" in remove
    assert {"libvirt.vif.driver", "network.direct.device"} <= remove


def test_network_keys_are_not_owned_without_network() -> None:
    values, remove = derived(validate_spec({}))
    assert not {"network.bridge.type", "public.network.device"} & (set(values) | remove)
    assert "guest.cpu.model" in remove


@given(st.binary(max_size=120))
@settings(max_examples=300)
def test_agent_properties_bytes_round_trip_and_idempotent(data: bytes) -> None:
    text = data.decode("latin-1")  # Java reads properties files as ISO-8859-1
    assert parse(text).render().encode("latin-1") == data
    resource = AgentProperties(
        validate_spec({"agent": {"properties": {"host": "10.0.0.5"}}}),
        HostRoot(Path("/nonexistent")),
    )
    once = resource.edit(data)
    assert resource.edit(once) == once
    mapping = parse(once.decode("latin-1")).mapping()
    assert mapping["host"] == "10.0.0.5"
    assert mapping["hypervisor.type"] == "kvm"
