"""Issue 10, items 4, 5 and 6 (fleet half) against a real ``csboot rollout`` and 3 real agents.

- Hostile statuses (reproduction 4) on other hosts' topics never crash the controller and
  never reach its output as escape sequences.
- A status claiming roles and versions (reproduction 5) puts no host into a rollout and does
  not raise the version the controller signs: membership comes from ``--inventory``, the
  version from the controller's own retained document.
- A ``rejected`` status caused by a replay (``stale``), or a rejection of another version,
  published after the host was handed the version, is not a wave failure.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import pytest

from bootstrap.agent.status import status_document
from bootstrap.errors import StaleDocument
from tests.faults.test_fleet_status import ESCAPES, HOSTILE, _valid
from tests.mqtt.conftest import CSBOOT, PREFIX, role_doc
from tests.mqtt.test_rollout import ROLE_TOPIC, Fleet, port_of, spec, start_fleet

pytestmark = pytest.mark.mqtt

HOSTS = ["r0.lab", "r1.lab", "r2.lab"]
CLAIM = 999_999_999_999
CONTROL = re.compile(r"[\x00-\x09\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    with start_fleet(tmp_path_factory.mktemp("faults-fleet"), HOSTS, 16509) as fleet:
        yield fleet


def publish_raw(fleet: Fleet, topic: str, payload: bytes) -> None:
    path = fleet.tmp / f"raw-{time.monotonic_ns()}"
    path.write_bytes(payload)
    base = ["-h", fleet.broker.host, "-p", str(fleet.broker.port)]
    argv = ["mosquitto_pub", *base, "-q", "1", "-r", "-t", topic, "-f", str(path)]
    subprocess.run(argv, check=True, capture_output=True, timeout=30)


def claims(host: str, roles: dict[str, int]) -> bytes:
    """A perfectly valid status in which a host claims roles and versions it never got."""
    return _valid(host, applied={"roles": roles, "host": None})


def test_hostile_statuses_and_claims_neither_crash_nor_steer_the_rollout(fleet: Fleet) -> None:
    before = fleet.version()
    for host, payload in HOSTILE.items():
        publish_raw(fleet, f"{PREFIX}/hosts/{host}/status", payload)
    publish_raw(fleet, f"{PREFIX}/hosts/evil.lab/status", claims("evil.lab", {"kvm": CLAIM}))
    publish_raw(fleet, f"{PREFIX}/hosts/evil-web/status", claims("evil-web", {"web": CLAIM}))
    publish_raw(  # the reproduction 5, verbatim
        fleet,
        f"{PREFIX}/hosts/evil-repro/status",
        b'{"state":"converged","applied":{"roles":{"kvm":999999999999}}}',
    )
    publish_raw(
        fleet,
        f"{PREFIX}/hosts/evil-text/status",
        _valid("evil-text", state="failed", error={"code": "x", "message": ESCAPES}),
    )

    proc = fleet.rollout(role_doc(1, **spec(16601)), "--waves", "1,100%")
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out
    assert "Traceback" not in out and not CONTROL.search(out), repr(out)
    doc = fleet.client.retained(ROLE_TOPIC)
    assert doc is not None and doc["version"] == before + 1  # not CLAIM + 1
    state = fleet.client.retained(f"{PREFIX}/rollouts/kvm")
    assert state is not None and state["version"] == before + 1
    assert sorted(h for wave in state["waves"] for h in wave) == HOSTS  # the inventory only
    final = fleet.wait_all(before + 1)
    assert all(final[h]["state"] == "converged" for h in HOSTS)
    assert all(port_of(fleet.roots[h]) == 'tcp_port = "16601"' for h in HOSTS)


def test_a_claimed_role_puts_nobody_into_its_rollout(fleet: Fleet) -> None:
    """Reproduction 5: ``evil`` claims role web at 999999999999; ``csboot rollout --role web``
    without an inventory has no host for web and publishes nothing (exit 2)."""
    publish_raw(fleet, f"{PREFIX}/hosts/evil-web/status", claims("evil-web", {"web": CLAIM}))
    path = fleet.tmp / "web.json"
    path.write_text(json.dumps(role_doc(1, name="web")))
    argv = [str(CSBOOT), "rollout", "-f", str(path), "--role", "web"]
    argv += ["--broker", fleet.broker.url, "--timeout", "5", "--heartbeat", "0.5"]
    argv += ["--sign", str(fleet.tmp / "ops.key"), "--key-id", "ops-test"]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 2, done.stdout + done.stderr
    assert "no host for role 'web'" in done.stderr
    assert fleet.client.retained(f"{PREFIX}/roles/web/desired") is None
    assert fleet.client.retained(f"{PREFIX}/rollouts/web") is None


def _handed_out(fleet: Fleet, host: str, version: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        doc = fleet.client.retained(ROLE_TOPIC) or {}
        hosts = (doc.get("rollout") or {}).get("hosts") or []
        if doc.get("version") == version and host in hosts:
            return
        assert time.monotonic() < deadline, f"{host} was never handed v{version}: {doc}"
        time.sleep(0.05)


def _rejected(host: str, applied: int, error: Any) -> bytes:
    doc = status_document(
        host=host, state="rejected", applied={"roles": {"kvm": applied}}, error=error
    )
    return json.dumps(doc).encode()


def test_replay_rejections_after_the_handout_are_not_wave_failures(fleet: Fleet) -> None:
    """The canary's agent is paused right after it is handed the version; meanwhile its
    status says ``rejected``: a replay of v1 (``stale``), and a signature rejection of
    another version. Resumed, it converges: the rollout completes, nobody failed."""
    before = fleet.wait_all(fleet.version())
    version = fleet.version() + 1
    canary, agent = HOSTS[1], fleet.agents[1]
    agent.proc.send_signal(signal.SIGSTOP)
    try:
        proc = fleet.rollout(role_doc(1, **spec(16602)), "--waves", "1,100%", "--canary", canary)
        _handed_out(fleet, canary, version)
        topic = f"{PREFIX}/hosts/{canary}/status"
        held = before[canary]["applied"]["roles"]["kvm"]
        replay = StaleDocument(f"version 1 is not newer than version {held} in force (replay)")
        publish_raw(fleet, topic, _rejected(canary, held, replay))
        other = {
            "code": "signature",
            "message": "roles/kvm v1: not signed by a trusted key",
            "field": "signature",
            "document": "roles/kvm",
            "version": 1,
        }
        publish_raw(fleet, topic, _rejected(canary, held, other))
    finally:
        agent.proc.send_signal(signal.SIGCONT)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out
    assert "FAILED" not in out and f"{canary}: converged at v{version}" in out
    state = fleet.client.retained(f"{PREFIX}/rollouts/kvm")
    assert state is not None and state["phase"] == "completed" and not state["failed"]
    assert fleet.wait_all(version)[canary]["state"] == "converged"


def test_a_rejection_of_the_version_handed_out_still_fails_the_host(fleet: Fleet) -> None:
    """The other side of the rule: rejecting exactly what it was handed is a failure."""
    before = fleet.wait_all(fleet.version())
    version = fleet.version() + 1
    canary, agent = HOSTS[2], fleet.agents[2]
    agent.proc.send_signal(signal.SIGSTOP)
    try:
        proc = fleet.rollout(role_doc(1, **spec(16603)), "--waves", "1,100%", "--canary", canary)
        _handed_out(fleet, canary, version)
        held = before[canary]["applied"]["roles"]["kvm"]
        mine = {
            "code": "signature",
            "message": f"roles/kvm v{version}: not signed by a trusted key",
            "field": "signature",
            "document": "roles/kvm",
            "version": version,
        }
        publish_raw(fleet, f"{PREFIX}/hosts/{canary}/status", _rejected(canary, held, mine))
        deadline = time.monotonic() + 20
        while canary not in (
            (fleet.client.retained(f"{PREFIX}/rollouts/kvm") or {}).get("failed") or {}
        ):
            assert time.monotonic() < deadline, "the controller never judged the rejection"
            time.sleep(0.05)
    finally:
        agent.proc.send_signal(signal.SIGCONT)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 1, out
    assert f"{canary}: FAILED (rejected" in out
    fleet.wait_all(version + 1)  # the previous spec, published as a newer version
