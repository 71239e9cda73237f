"""Issue 6 in the simulator: ``csboot rollout`` over 20 OVS hosts (nets/fleet-20.yaml).

The real broker runs in its namespace with the ACL ``csboot broker-acl`` writes, the real
agents in their host namespaces; ``csboot rollout`` runs as a process inside the broker
namespace as the simulator's operator (``Sim.csboot``), so nothing leaves the run's
namespaces. One fleet for the module: each test reads the versions the previous one left,
never assumes them. What hosts did is read from the wire (an operator's mosquitto_sub in
the broker namespace), from their files and from their nftables rulesets.
"""

from __future__ import annotations

import contextlib
import copy
import json
import secrets
import selectors
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import nftables
import pytest

from simulator.fleet import Sim
from simulator.hosts import PREFIX, SimHost
from simulator.pytest_plugin import SimFactory
from simulator.rollout import ADMIN
from tests.sim.marks import FLEET

pytestmark = FLEET

HOSTS = [f"kvm{i:02d}" for i in range(1, 21)]
LIBVIRTD = Path("etc/libvirt/libvirtd.conf")
PROPERTIES = Path("etc/cloudstack/agent/agent.properties")
Status = dict[str, Any]
DEAD_BEAT = 3.0  # the killed controller's heartbeat: its lock is fresh for 9 s, then stale


@pytest.fixture(scope="module")
def fleet(sim_module: SimFactory) -> Sim:
    fleet = sim_module("nets/fleet-20.yaml")
    assert sorted(fleet.hosts) == HOSTS
    assert [(r.host, r.detail) for r in fleet.rollout_rows if not r.ok] == []
    return fleet


# -- reading the fleet ------------------------------------------------------------------


def _sub_argv(fleet: Sim, *args: str) -> list[str]:
    """mosquitto_sub as the operator (to run inside the broker namespace)."""
    assert fleet.broker is not None
    b = fleet.broker
    auth = ["-h", b.address, "-p", str(b.port), "-u", ADMIN, "-P", b.admin_password]
    return ["mosquitto_sub", *auth, *args]


def retained(fleet: Sim, topic: str, count: int = 1) -> dict[str, Any]:
    """The retained messages on ``topic`` (a filter) by topic."""
    assert fleet.broker_ns is not None
    argv = _sub_argv(fleet, "-t", topic, "--retained-only", "-C", str(count), "-W", "3")
    argv += ["-F", "%t %x"]
    out = fleet.broker_ns.run(argv, capture_output=True, text=True, timeout=10, check=False)
    found = {}
    for line in out.stdout.splitlines():
        name, _, hexload = line.partition(" ")
        found[name] = json.loads(bytes.fromhex(hexload))
    return found


def statuses(fleet: Sim) -> dict[str, Status]:
    got = retained(fleet, f"{PREFIX}/hosts/+/status", len(HOSTS))
    return {t.split("/")[-2]: s for t, s in got.items()}


def rollout_state(fleet: Sim) -> dict[str, Any]:
    state: dict[str, Any] = retained(fleet, f"{PREFIX}/rollouts/kvm").get(
        f"{PREFIX}/rollouts/kvm", {}
    )
    return state


def kvm(status: Status) -> int:
    return int(status["applied"]["roles"]["kvm"])


def wait_all(fleet: Sim, version: int, timeout: float = 30.0) -> dict[str, Status]:
    deadline = time.monotonic() + timeout
    while True:
        st = statuses(fleet)
        ok = [
            h for h in HOSTS if h in st and st[h]["state"] == "converged" and kvm(st[h]) == version
        ]
        if len(ok) == len(HOSTS):
            return st
        assert time.monotonic() < deadline, f"not at v{version}: {sorted(set(HOSTS) - set(ok))}"
        time.sleep(0.3)


@contextlib.contextmanager
def recording(fleet: Sim) -> Iterator[Callable[[], list[Status]]]:
    """Every status published while the block runs, in the broker's order (not retained)."""
    assert fleet.broker_ns is not None
    out = fleet.workdir / f"statuses-{time.monotonic_ns()}.log"
    with out.open("w") as sink:
        proc = fleet.broker_ns.popen(
            _sub_argv(fleet, "-q", "1", "-t", f"{PREFIX}/hosts/+/status", "-F", "%r %x"),
            stdout=sink,
            stderr=subprocess.DEVNULL,
            stdin=subprocess.DEVNULL,
        )

    def lines() -> list[tuple[str, Status]]:
        text = out.read_text()
        # whole lines only: mosquitto_sub's buffered output can end mid-line as it is read
        whole = text[: text.rfind("\n") + 1]
        rows = [line.split(" ", 1) for line in whole.splitlines() if " " in line]
        return [(flag, json.loads(bytes.fromhex(x))) for flag, x in rows]

    def read() -> list[Status]:
        """New statuses; a status repeated as it was (same ``at``: an agent republishes its
        last one when it reconnects) counts once."""
        seen: set[tuple[str, str, str]] = set()
        out = []
        for flag, status in lines():
            key = (status["host"], status["state"], status["at"])
            if flag == "0" and key not in seen:
                seen.add(key)
                out.append(status)
        return out

    try:
        deadline = time.monotonic() + 10
        while len(lines()) < len(HOSTS):  # the retained ones: the subscription is live
            assert time.monotonic() < deadline, "the recorder never subscribed"
            time.sleep(0.05)
        yield read
    finally:
        proc.terminate()
        proc.wait(5)


def port_of(fleet: Sim, host: str) -> str:
    text = (fleet.hosts[host].root / LIBVIRTD).read_text()
    return next(line for line in text.splitlines() if line.startswith("tcp_port"))


def mtimes(fleet: Sim, hosts: list[str]) -> dict[str, tuple[int, int]]:
    root = {h: fleet.hosts[h].root for h in hosts}
    return {
        h: ((root[h] / LIBVIRTD).stat().st_mtime_ns, (root[h] / PROPERTIES).stat().st_mtime_ns)
        for h in hosts
    }


def tcp_ports(host: SimHost) -> set[int]:
    """TCP ports in the host's ``allow_tcp`` nftables set, ranges expanded (libnftables JSON)."""
    with host.ns.entered():
        nft = nftables.Nftables()
        nft.set_json_output(True)
        rc, out, err = nft.cmd("list ruleset")
    assert rc == 0, err
    found: set[int] = set()
    for item in json.loads(out)["nftables"]:
        nset = item.get("set") or {}
        if nset.get("table") == "cloudstack_bootstrap" and nset.get("name") == "allow_tcp":
            for elem in nset.get("elem") or []:
                low, high = elem["range"] if isinstance(elem, dict) else (elem, elem)
                found.update(range(int(low), int(high) + 1))
    return found


# -- driving a rollout ------------------------------------------------------------------


def rollout(
    fleet: Sim, changes: dict[str, Any], *args: str, beat: float = 1.0
) -> subprocess.Popen[str]:
    """``csboot rollout`` of the nets file's kvm role with ``changes`` over its spec."""
    doc = copy.deepcopy(fleet.layout.role_docs["kvm"])
    doc["spec"].update(changes)
    path = fleet.workdir / f"kvm-{time.monotonic_ns()}.json"
    path.write_text(json.dumps(doc))
    common = ["-f", str(path), "--role", "kvm", "--timeout", "60", "--heartbeat", str(beat)]
    return fleet.csboot("rollout", *common, *args)


def libvirt(port: int) -> dict[str, Any]:
    return {"libvirt": {"tcp_port": port}}


# -- the must-shows ---------------------------------------------------------------------


def test_waves_complete_and_only_the_canary_changes_in_wave_one(fleet: Sim) -> None:
    before = statuses(fleet)
    version = max(kvm(s) for s in before.values()) + 1
    canary = "kvm05"
    others = [h for h in HOSTS if h != canary]
    files = mtimes(fleet, HOSTS)
    agent = fleet.hosts[canary].agent
    assert agent is not None
    with recording(fleet) as seen:
        # the canary's agent is paused, so wave 1 stays in flight while we look at the rest
        agent.send_signal(signal.SIGSTOP)
        try:
            proc = rollout(fleet, libvirt(16600), "--waves", "1,25%,100%", "--canary", canary)
            deadline = time.monotonic() + 20
            while not (
                (st := rollout_state(fleet)).get("version") == version and st.get("admitted")
            ):
                assert time.monotonic() < deadline, "the controller never handed out wave 1"
                time.sleep(0.2)
            time.sleep(2.0)  # every chance to move on too early (it must not)
            state = rollout_state(fleet)
            doc = retained(fleet, f"{PREFIX}/roles/kvm/desired")[f"{PREFIX}/roles/kvm/desired"]
            mid = statuses(fleet)
            mid_files = mtimes(fleet, others)
        finally:
            agent.send_signal(signal.SIGCONT)
        out, _ = proc.communicate(timeout=120)
        time.sleep(0.3)
        events = seen()
    assert proc.returncode == 0, out
    assert "waves [1, 4, 15]" in out

    # while wave 1 was in flight: the version was handed to the canary alone, nobody moved
    assert state["version"] == version and state["wave"] == 0, state
    assert list(state["admitted"]) == [canary] and state["done"] == []
    assert doc["version"] == version and doc["rollout"]["hosts"] == [canary]
    for host in others:
        assert mid[host]["at"] == before[host]["at"], host
        assert mid_files[host] == files[host], host

    # on the wire: the canary converged on the version before any other host started
    firsts = [i for i, s in enumerate(events) if s["host"] == canary and kvm(s) == version]
    canary_done = next(i for i in firsts if events[i]["state"] == "converged")
    moved = [
        i
        for i, s in enumerate(events)
        if s["host"] != canary and (kvm(s) == version or s["state"] == "applying")
    ]
    assert moved and min(moved) > canary_done, [(s["host"], s["state"]) for s in events]
    started = [s["host"] for s in events if s["state"] == "applying"]
    assert sorted(started) == HOSTS  # each applied exactly once
    final = wait_all(fleet, version, timeout=5)
    assert all(port_of(fleet, h) == 'tcp_port = "16600"' for h in HOSTS)
    assert rollout_state(fleet)["phase"] == "completed"
    assert all(final[h]["state"] == "converged" for h in HOSTS)


def test_a_canary_failing_for_real_aborts_and_nobody_else_changes(fleet: Sim) -> None:
    before = wait_all(fleet, max(kvm(s) for s in statuses(fleet).values()))
    old = kvm(before[HOSTS[0]])
    canary = "kvm07"
    files = mtimes(fleet, HOSTS)
    ports = {h: port_of(fleet, h) for h in HOSTS}
    assert 8250 not in tcp_ports(fleet.hosts[canary]) and 16509 in tcp_ports(fleet.hosts[canary])
    firewall = copy.deepcopy(fleet.layout.role_docs["kvm"]["spec"]["firewall"])
    firewall["allow_tcp"].append(8250)  # applied before libvirt: the canary must undo it
    etc_libvirt = fleet.hosts[canary].root / LIBVIRTD.parent
    if subprocess.run(["chattr", "+i", str(etc_libvirt)], check=False).returncode:
        pytest.skip("chattr +i not possible here (needs root on ext4/xfs)")
    with recording(fleet) as seen:
        try:
            proc = rollout(fleet, {**libvirt(16700), "firewall": firewall}, "--canary", canary)
            out, _ = proc.communicate(timeout=120)
        finally:
            subprocess.run(["chattr", "-i", str(etc_libvirt)], check=True)
        assert proc.returncode == 1, out
        after = wait_all(fleet, old + 2)  # v+1 stopped at the canary, v+2 = the old spec
        time.sleep(0.3)
        events = seen()
    assert f"{canary}: FAILED" in out and "libvirtd.conf" in out
    state = rollout_state(fleet)
    assert state["phase"] == "aborted" and state["version"] == old + 1, state
    assert list(state["failed"]) == [canary] and list(state["admitted"]) == [canary]
    assert state["reverted"] == [canary]

    # the canary really applied part of it (its firewall), failed, and is back on the old spec
    mine = [s for s in events if s["host"] == canary]
    assert [s["state"] for s in mine if s["state"] != "applying"] == ["rolled_back", "converged"]
    failed = next(s for s in mine if s["state"] == "rolled_back")
    assert kvm(failed) == old and "libvirtd.conf" in failed["error"]["message"]
    assert "+ tcp 8250" in json.dumps(failed["changes"])  # made, then undone
    assert kvm(after[canary]) == old + 2
    assert after[canary]["at"] != before[canary]["at"]
    assert 8250 not in tcp_ports(fleet.hosts[canary]) and 16509 in tcp_ports(fleet.hosts[canary])

    # the other 19 never ran version old+1: the only thing they did was acknowledge the
    # restore version (the spec they already had: no change), and no file of theirs moved
    for status in events:
        if status["host"] != canary:
            assert kvm(status) in (old, old + 2), status
            assert status["state"] in ("applying", "converged"), status
            assert not status.get("changes"), status
    for host in HOSTS:
        assert port_of(fleet, host) == ports[host]
        assert mtimes(fleet, [host])[host] == files[host], host
        assert 8250 not in tcp_ports(fleet.hosts[host]), host


def test_killed_controller_resumes_without_reapplying(fleet: Sim) -> None:
    assert fleet.broker_ns is not None
    current = max(kvm(s) for s in statuses(fleet).values())
    wait_all(fleet, current)
    version = current + 1
    proc = rollout(
        fleet, libvirt(16800), "--waves", "1,50%,100%", "--max-unavailable", "2", beat=DEAD_BEAT
    )
    watch = fleet.broker_ns.popen(
        _sub_argv(fleet, "-t", f"{PREFIX}/rollouts/kvm", "-F", "%x"),
        stdout=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
    )
    assert watch.stdout is not None
    sel = selectors.DefaultSelector()
    sel.register(watch.stdout, selectors.EVENT_READ)
    deadline = time.monotonic() + 60
    killed: float | None = None
    try:
        while killed is None and time.monotonic() < deadline:
            if not sel.select(1.0):
                continue
            line = watch.stdout.readline()
            state = json.loads(bytes.fromhex(line.strip())) if line.strip() else {}
            if state.get("version") == version and state.get("wave", 0) >= 1:
                proc.send_signal(signal.SIGKILL)  # nsenter exec'd: this is csboot itself
                killed = time.monotonic()
    finally:
        watch.terminate()
        watch.wait(5)
    assert killed is not None, "never saw the rollout reach wave 2"
    assert proc.wait(5) == -signal.SIGKILL
    time.sleep(1.0)  # in-flight hosts finish; they count as converged before the restart
    st = statuses(fleet)
    converged = {
        h: st[h]["at"] for h in HOSTS if kvm(st[h]) == version and st[h]["state"] == "converged"
    }
    assert "kvm01" in converged and len(converged) < len(HOSTS), converged
    files = mtimes(fleet, list(converged))

    locked = rollout(fleet, libvirt(16800))  # its heartbeat is fresh: refused
    out, _ = locked.communicate(timeout=60)
    assert locked.returncode == 3, out
    assert "is run by" in out

    time.sleep(max(0.0, killed + 3 * DEAD_BEAT + 0.2 - time.monotonic()))  # the lock is stale
    again = rollout(fleet, libvirt(16800), "--waves", "1,50%,100%")
    out, _ = again.communicate(timeout=120)
    assert again.returncode == 0, out
    assert "resuming rollout" in out
    final = wait_all(fleet, version, timeout=5)
    for host, at in converged.items():
        assert final[host]["at"] == at, host  # not applied again
        assert mtimes(fleet, [host])[host] == files[host], host
    assert all(port_of(fleet, h) == 'tcp_port = "16800"' for h in HOSTS)
    assert rollout_state(fleet)["phase"] == "completed"


def test_a_host_cannot_publish_another_hosts_status_or_any_desired(fleet: Sim) -> None:
    """kvm03's own credentials, from inside kvm03's namespace: refused (PUBACK 0x87) and
    never delivered to an operator subscribed to everything."""
    assert fleet.broker is not None and fleet.broker_ns is not None
    host = fleet.hosts["kvm03"]
    password = (host.root / "etc/cloudstack-bootstrap/mqtt.pass").read_text().strip()
    assert password == fleet.broker.passwords["kvm03"]
    mark = secrets.token_hex(6)
    out = fleet.workdir / f"witness-{mark}.log"
    with out.open("w") as sink:
        witness = fleet.broker_ns.popen(
            _sub_argv(fleet, "-q", "1", "-t", f"{PREFIX}/#", "-v"),
            stdout=sink,
            stderr=subprocess.DEVNULL,
            stdin=subprocess.DEVNULL,
        )

    def publish(topic: str, *flags: str) -> str:
        assert fleet.broker is not None
        argv = ["mosquitto_pub", "-h", fleet.broker.address, "-p", str(fleet.broker.port)]
        argv += ["-u", "kvm03", "-P", password, "-V", "mqttv5", "-q", "1", "-d", *flags]
        argv += ["-i", f"acl-{mark}", "-t", topic, "-m", json.dumps({"forged": mark})]
        done = host.ns.run(argv, capture_output=True, text=True, timeout=10, check=False)
        return f"{done.stdout}{done.stderr}"

    denied = [
        f"{PREFIX}/hosts/kvm04/status",
        f"{PREFIX}/roles/kvm/desired",
        f"{PREFIX}/hosts/kvm04/desired",
        f"{PREFIX}/hosts/kvm03/desired",
        f"{PREFIX}/rollouts/kvm",
    ]
    try:
        deadline = time.monotonic() + 10
        while len(out.read_text().splitlines()) < len(HOSTS):  # retained: subscribed
            assert time.monotonic() < deadline, "the witness never subscribed"
            time.sleep(0.05)
        answers = {topic: publish(topic, "-r") for topic in denied}
        control = publish(f"{PREFIX}/hosts/kvm03/events")  # its own: allowed
        time.sleep(1.0)
    finally:
        witness.terminate()
        witness.wait(5)
    for topic, answer in answers.items():
        assert "RC:135" in answer and "Not authorized" in answer, (topic, answer)
    assert "received PUBACK" in control and "RC:135" not in control, control
    arrived = [line.split(" ", 1)[0] for line in out.read_text().splitlines() if mark in line]
    assert arrived == [f"{PREFIX}/hosts/kvm03/events"]
    # and the retained documents are still the operator's
    assert mark not in json.dumps(retained(fleet, f"{PREFIX}/roles/kvm/desired"))
    assert mark not in json.dumps(statuses(fleet)["kvm04"])
