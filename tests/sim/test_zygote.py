"""The fleet's agents forked from one warm interpreter: each in its own namespace, with its
own environment and log, stopped and killed like a process the simulator started itself;
a request that cannot be served fails that agent alone, never the zygote."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from simulator.hosts import SimHost
from simulator.namespaces import Namespace, new_run_id, remove_all
from simulator.nets import load_net
from simulator.zygote import Forked, Zygote

pytestmark = [pytest.mark.sim, pytest.mark.root, pytest.mark.netns]

REPO = Path(__file__).resolve().parents[2]
CSBOOT = "csboot"  # argv[0] only: the zygote runs the entry point in-process


@pytest.fixture
def spaces() -> Iterator[tuple[Namespace, Namespace]]:
    run = new_run_id()
    home, host = Namespace.create(f"{run}-zhome"), Namespace.create(f"{run}-zhost")
    try:
        yield home, host
    finally:
        remove_all([home, host])


@pytest.fixture
def zygote(spaces: tuple[Namespace, Namespace]) -> Iterator[Zygote]:
    z = Zygote.start(spaces[0].argv([]))
    try:
        yield z
    finally:
        z.close()


def agent_conf(tmp_path: Path) -> Path:
    """An agent whose broker never answers: it runs, retrying, until it is stopped."""
    conf = tmp_path / "agent.toml"
    conf.write_text(
        f'brokers = ["mqtt://192.0.2.1:1883"]\nhost = "kvm1"\nroles = ["kvm"]\n'
        f'root = "{tmp_path}"\n[reconnect]\ninitial = 0.2\nmax = 0.5\n'
    )
    return conf


def wait_for(what: str, ok: object, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not ok():  # type: ignore[operator]
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


def ready(sock: socket.socket) -> None:
    """Until the agent says READY=1 on ``$NOTIFY_SOCKET`` (systemd's protocol)."""
    while b"READY=1" not in sock.recv(4096):
        pass


def test_a_forked_agent_runs_in_its_host_namespace_and_stops_like_a_process(
    tmp_path: Path, spaces: tuple[Namespace, Namespace], zygote: Zygote
) -> None:
    home, host = spaces
    log = tmp_path / "agent.log"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as notify:
        notify.bind(str(tmp_path / "notify"))
        notify.settimeout(30)
        # the host's environment, not the zygote's: the agent finds its NOTIFY_SOCKET there
        env = {"PATH": os.environ["PATH"], "NOTIFY_SOCKET": str(tmp_path / "notify")}
        argv = [CSBOOT, "agent", "-c", str(agent_conf(tmp_path))]
        agent = zygote.spawn(host.path, argv, env, log)
        # the host's namespace, not the zygote's, as soon as spawn returns
        assert os.stat(f"/proc/{agent.pid}/ns/net").st_ino == host.path.stat().st_ino
        assert os.stat(f"/proc/{zygote.proc.pid}/ns/net").st_ino == home.path.stat().st_ino
        assert Path(f"/proc/{agent.pid}/comm").read_text().strip() == "csboot-agent"
        ready(notify)
    assert agent.poll() is None
    with pytest.raises(subprocess.TimeoutExpired):
        agent.wait(0.2)
    # the real agent, logging to the host's log: it tries its (absent) broker
    wait_for("the agent never logged its broker", lambda: "192.0.2.1" in log.read_text())
    agent.terminate()
    assert agent.wait(15) == 0, log.read_text()  # a clean stop, as under systemd
    assert agent.poll() == 0


def test_a_killed_agent_and_a_bad_request_leave_the_zygote_serving(
    tmp_path: Path, spaces: tuple[Namespace, Namespace], zygote: Zygote
) -> None:
    _, host = spaces
    env = {"PATH": os.environ["PATH"]}
    killed = zygote.spawn(
        host.path, [CSBOOT, "agent", "-c", str(agent_conf(tmp_path))], env, tmp_path / "a.log"
    )
    killed.send_signal(signal.SIGKILL)
    assert killed.wait(10) == -1  # died of a signal: it wrote no exit code

    # a namespace that does not exist: that agent fails, with the reason in its log
    gone = zygote.spawn(
        tmp_path / "no-such-netns", [CSBOOT, "agent", "-c", "x"], env, tmp_path / "b.log"
    )
    assert gone.wait(10) == 1
    assert "no-such-netns" in (tmp_path / "b.log").read_text()

    # a malformed request line is answered with an error; the zygote goes on serving
    assert zygote.proc.stdin is not None
    zygote.proc.stdin.write("{not json\n")
    zygote.proc.stdin.flush()
    assert "error" in zygote._answer(10)
    again = zygote.spawn(
        host.path, [CSBOOT, "agent", "-c", str(agent_conf(tmp_path))], env, tmp_path / "c.log"
    )
    assert isinstance(again, Forked) and again.poll() is None
    wait_for("the agent never started", lambda: "192.0.2.1" in (tmp_path / "c.log").read_text())
    again.terminate()
    assert again.wait(15) == 0


def test_a_dead_zygote_fails_fast_and_the_host_starts_its_agent_the_plain_way(
    tmp_path: Path, spaces: tuple[Namespace, Namespace], zygote: Zygote
) -> None:
    _, host_ns = spaces
    zygote.proc.kill()
    zygote.proc.wait()
    t0 = time.monotonic()
    with pytest.raises((OSError, RuntimeError)):
        zygote.spawn(host_ns.path, [CSBOOT, "agent", "-c", "x"], {}, tmp_path / "x.log")
    assert time.monotonic() - t0 < 5  # an answer that never comes is not waited for

    layout = load_net(REPO / "nets/ovs.yaml").layout().hosts[0]
    host = SimHost(layout=layout, ns=host_ns, root=tmp_path / "root", zygote=zygote)
    host.start_agent("mqtt://192.0.2.1:1883", "secret")
    try:
        assert isinstance(host.agent, subprocess.Popen) and host.zygote is None
        log = host.root / "var/log/csboot-agent.log"
        wait_for("the agent never started", lambda: "192.0.2.1" in log.read_text())
        assert host.agent.poll() is None
    finally:
        host.stop()
