"""The payloads of issue 10's reproductions, and generators of hostile ones (shared by the
pure and the live fault tests)."""

from __future__ import annotations

import functools
import json
from typing import Any

from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

API = "cloudstack-bootstrap/v1"


def doc(version: Any = 1, name: str = "kvm", kind: str = "Role", **spec: Any) -> dict[str, Any]:
    return {"apiVersion": API, "kind": kind, "name": name, "version": version, "spec": spec}


def reproductions(host: str) -> dict[str, tuple[str, bytes, str]]:
    """name -> (topic key, payload, the error field the rejection must name)."""
    role = json.dumps(doc(3, hypervisor="kvm"))
    return {
        # 1: a version of 5,000 digits, JSON nested 100,000 deep (as a role and as a host doc)
        "big-int": (
            f"hosts/{host}",
            (
                '{"apiVersion":"cloudstack-bootstrap/v1","kind":"Host","name":"'
                + host
                + '","version":1'
                + "0" * 5000
                + ',"spec":{}}\n'
            ).encode(),
            "",
        ),
        "deep-json": ("roles/kvm", b"[" * 100_000 + b"]" * 100_000 + b"\n", ""),
        "deep-object": ("roles/kvm", b'{"a":' * 100_000 + b"1" + b"}" * 100_000, ""),
        "deep-yaml": ("roles/kvm", b"- " * 100_000 + b"x\n", ""),
        "yaml-alias-bomb": (
            "roles/kvm",
            b"a: &a [x, x]\nb: &b [*a, *a]\nc: &c [*b, *b]\nd: [*c, *c]\n",
            "",
        ),
        "yaml-python-tag": ("roles/kvm", b"!!python/object/apply:os.system [true]\n", ""),
        # 8: a 50 MB field (capped at intake: 1 MiB)
        "50MB-field": (
            f"hosts/{host}",
            json.dumps(
                doc(4, name=host, kind="Host", network={"uplink": "e" * (50 * 1024 * 1024)})
            ).encode(),
            "",
        ),
        # 11: duplicate keys (JSON and YAML), invalid UTF-8, non-integer versions
        "dup-json": ("roles/kvm", role[:-1].encode() + b', "version": 9}', "version"),
        "dup-yaml": (
            "roles/kvm",
            b"apiVersion: cloudstack-bootstrap/v1\nkind: Role\nname: kvm\nname: kvm\nversion: 4\n",
            "name",
        ),
        "bad-utf8": (
            "roles/kvm",
            role.replace("kvm", "kv\udcff", 1).encode("utf-8", "surrogateescape"),
            "",
        ),
        "version-2.0": ("roles/kvm", json.dumps(doc(2.0)).encode(), "version"),
        "version-true": ("roles/kvm", json.dumps(doc(True)).encode(), "version"),
        "version-string": ("roles/kvm", json.dumps(doc("5")).encode(), "version"),
        "version-huge": ("roles/kvm", json.dumps(doc(2**64)).encode(), ""),
        "lone-surrogate": ("roles/kvm", role.replace('"kvm"}', '"kvm\\ud800"}').encode(), ""),
        "not-an-object": ("roles/kvm", b"[1, 2, 3]", ""),
        "nan": ("roles/kvm", role.replace("3", "NaN", 1).encode(), ""),
    }


SPEC_KEYS = ["hypervisor", "cpu", "network", "firewall", "libvirt", "agent", "security", "x"]
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False),
    st.text(max_size=20),
)
json_values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.sampled_from(SPEC_KEYS) | st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
documents = st.fixed_dictionaries(
    {
        "apiVersion": st.sampled_from([API, API, "v2", 1]),
        "kind": st.sampled_from(["Role", "Host", "role", None]),
        "name": st.sampled_from(["kvm", "h1", "KVM", "", "a/b"]),
        "version": st.one_of(
            st.integers(min_value=-5, max_value=2**64), st.floats(), st.booleans(), st.text()
        ),
        "spec": st.dictionaries(st.sampled_from(SPEC_KEYS), json_values, max_size=4),
    },
    optional={"rollout": json_values, "signature": json_values, "extra": json_values},
)


@functools.cache
def generated(count: int) -> list[bytes]:
    """``count`` hostile payloads from ``count // 4`` hypothesis examples, four each: a
    document near the schema, the same truncated, the same with bytes flipped where
    hypothesis chose, and raw bytes. Deterministic (derandomised), cached per session."""
    out: list[bytes] = []

    @settings(
        max_examples=count // 4,
        database=None,
        derandomize=True,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
        deadline=None,
    )
    @given(
        documents,
        st.binary(min_size=1, max_size=64),
        st.lists(st.integers(0, 10**6), min_size=1, max_size=3),
    )
    def collect(document: dict[str, Any], noise: bytes, flips: list[int]) -> None:
        text = json.dumps(document, allow_nan=True).encode()
        flipped = bytearray(text)
        for at in flips:
            flipped[at % len(flipped)] ^= 0x80 | (at & 0x7F)
        out.extend((text, text[: len(text) // 2], bytes(flipped), noise))

    collect()
    return out
