"""The key = value / shell-variable editor shared by libvirt, /etc/default and SELinux."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from bootstrap.resources.conffile import LIBVIRT, SHELL, describe, edit_text, flag_rule, values


def test_sets_a_line_after_its_commented_example_and_keeps_the_comment() -> None:
    text = '# Listen for TCP\n#listen_tcp = 1\n\n#tcp_port = "16509"\nother = 2\n'
    out = edit_text(text, {"listen_tcp": "1", "tcp_port": '"16509"'}, LIBVIRT)
    assert out == (
        "# Listen for TCP\n#listen_tcp = 1\nlisten_tcp = 1\n\n"
        '#tcp_port = "16509"\ntcp_port = "16509"\nother = 2\n'
    )


def test_edits_value_in_place_keeping_spacing_and_trailing_comment() -> None:
    text = 'a=0\nlisten_tcp   =  0   # off for now\nb = "x"\n'
    out = edit_text(text, {"listen_tcp": "1", "b": '"x"'}, LIBVIRT)
    assert out == 'a=0\nlisten_tcp   =  1   # off for now\nb = "x"\n'


def test_every_occurrence_is_set() -> None:
    out = edit_text("k = 0\nx = 1\nk = 2\n", {"k": "1"}, LIBVIRT)
    assert values(out)["k"] == ["1", "1"]
    assert "2 occurrences" in describe("k = 0\nx = 1\nk = 2\n", out)


def test_missing_key_is_appended_even_without_final_newline() -> None:
    assert edit_text("A=1", {"B": '"2"'}, SHELL) == 'A=1\nB="2"\n'
    assert edit_text("", {"B": "2"}, SHELL) == "B=2\n"
    assert edit_text("A=1\r\n", {"B": "2"}, SHELL) == "A=1\r\nB=2\r\n"


def test_export_prefix_and_quoted_values_with_hash() -> None:
    text = 'export OPTS="-d # not a comment"\n'
    assert values(text) == {"OPTS": ['"-d # not a comment"']}
    out = edit_text(text, {"OPTS": flag_rule("-l", aliases=frozenset(), present=True)}, SHELL)
    assert out == 'export OPTS="-d # not a comment -l"\n'


def test_flag_rule_adds_and_removes_keeping_other_flags() -> None:
    listen = flag_rule("--listen", aliases=frozenset({"-l"}), present=True)
    quiet = flag_rule("--listen", aliases=frozenset({"-l"}), present=False)
    assert listen('"--timeout 120"') == '"--timeout 120 --listen"'
    assert listen('"-l --timeout 120"') == '"-l --timeout 120"'  # already there: untouched
    assert quiet('"--listen --timeout 120"') == '"--timeout 120"'
    assert quiet('"-d -l"') == '"-d"'
    assert quiet(None) is None
    assert flag_rule("-l", aliases=frozenset(), present=True, default=("-d",))(None) == '"-d -l"'


lines = st.lists(
    st.sampled_from(["a = 1", "#a = 0", "b=2", "", "  # c", 'a="x" # t', "[x", "c"]), max_size=8
)


@given(lines, st.sampled_from(["\n", "\r\n"]), st.booleans())
def test_edit_is_idempotent_and_keeps_other_lines(body: list[str], eol: str, final: bool) -> None:
    text = eol.join(body) + (eol if final and body else "")
    out = edit_text(text, {"a": "9", "d": '"new"'}, LIBVIRT)
    assert edit_text(out, {"a": "9", "d": '"new"'}, LIBVIRT) == out
    assert values(out)["a"] and set(values(out)["a"]) == {"9"}
    assert values(out)["d"] == ['"new"']
    kept = [ln for ln in text.splitlines() if not ln.lstrip().startswith("a")]
    rest = iter(out.splitlines())
    assert all(any(o == ln for o in rest) for ln in kept)  # in order, none lost
    assert edit_text(text, {}, LIBVIRT) == text
