"""The agent's footprint: start-up to READY, resident memory after converging, idle CPU.

    sudo .venv/bin/python bench/agent_footprint.py [NET] [--idle 10]

Start-up: ``csboot agent`` in a fresh namespace with an empty file root, timed from the
process start to its ``READY=1`` on ``$NOTIFY_SOCKET`` (systemd's protocol; the broker is
not needed for READY). Memory and idle CPU: a simulated fleet (nets/ovs.yaml by default)
rolled out, then every agent's VmRSS, and its CPU seconds over ``--idle`` seconds. Its
agents start as on a real host, each its own ``csboot agent`` (not forked from the
simulator's zygote, whose children show less resident memory: they share its pages).

TLS: the simulator's broker is plain MQTT, so what TLS costs is measured beside it, on one
mosquitto with a plain and a TLS listener (a client certificate required): two agents,
one on each, converging the same files-only role (their hosts are directories), then the
VmRSS of each, ``--rounds`` times.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from simulator.fleet import Sim
from simulator.namespaces import Namespace, new_run_id, remove_all

TICK = os.sysconf("SC_CLK_TCK")


def startup_to_ready(rounds: int = 5) -> list[float]:
    csboot = str(Path(sys.executable).with_name("csboot"))
    out = []
    for _ in range(rounds):
        with tempfile.TemporaryDirectory(prefix="csboot-bench-agent-") as tmp:
            ns = Namespace.create(f"{new_run_id()}-agent")
            try:
                conf = Path(tmp, "agent.toml")
                conf.write_text(
                    'broker = "mqtt://192.0.2.1:1883"\nhost = "bench"\nroles = ["kvm"]\n'
                    f'root = "{tmp}"\n'
                )
                path = str(Path(tmp, "notify"))
                with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
                    sock.bind(path)
                    sock.settimeout(30)
                    env = {**os.environ, "NOTIFY_SOCKET": path}
                    t = time.monotonic()
                    proc = ns.popen(
                        [csboot, "agent", "-c", str(conf)],
                        env=env,
                        stdout=subprocess.DEVNULL,
                        stderr=subprocess.DEVNULL,
                    )
                    try:
                        while b"READY=1" not in sock.recv(4096):
                            pass
                        out.append(time.monotonic() - t)
                    finally:
                        proc.terminate()
                        proc.wait()
            finally:
                remove_all([ns])
    return out


def tls_cost(rounds: int = 2) -> list[tuple[float, float]]:
    """(plain, TLS) VmRSS in MiB of two converged agents on one broker, per round."""
    from simulator.broker import Mosquitto, TlsListener
    from tests.mqtt.conftest import PREFIX, AgentProcess, Client, role_doc, write_config
    from tests.pki import make_pki

    out = []
    for _ in range(rounds):
        with tempfile.TemporaryDirectory(prefix="csboot-bench-tls-") as name:
            tmp = Path(name)
            pki = make_pki(tmp / "pki")
            tls = TlsListener(pki / "ca.crt", pki / "broker.crt", pki / "broker.key")
            with Mosquitto(tmp / "broker", tls=tls) as broker:
                client = Client(broker)
                client.publish(f"{PREFIX}/roles/kvm/desired", role_doc(1))
                certs = {"cert": str(pki / "tls1.lab.crt"), "key": str(pki / "tls1.lab.key")}
                hosts = {
                    "plain1.lab": ([broker.url], {}),
                    "tls1.lab": ([broker.tls_url], {"tls": {"ca": str(pki / "ca.crt"), **certs}}),
                }
                agents = []
                for host, (urls, extra) in hosts.items():
                    (tmp / host).mkdir()
                    conf = write_config(tmp / f"{host}.toml", urls, tmp / host, host=host, **extra)
                    agents.append(AgentProcess(conf))
                try:
                    for host in hosts:
                        client.wait_status(lambda s: s["state"] == "converged", host=host)
                    pids = [a.proc.pid for a in agents]
                    _quiet(pids)
                    plain, secure = (_rss_mib(pid) for pid in pids)
                finally:
                    for agent in agents:
                        agent.kill(signal.SIGTERM)
            out.append((plain, secure))
    return out


def _quiet(pids: list[int], window: float = 0.5, limit: float = 30.0) -> None:
    """Until the agents used less than 1 % CPU over one ``window`` (their worker reaped,
    the will renewed): memory is measured on agents at rest."""
    deadline = time.monotonic() + limit
    before = sum(map(_cpu, pids))
    while time.monotonic() < deadline:
        time.sleep(window)  # a measuring window, not a wait for an event
        after = sum(map(_cpu, pids))
        if after - before < 0.01 * window * len(pids) + 1.0 / TICK:
            return
        before = after


def _rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("net", nargs="?", default="nets/ovs.yaml")
    p.add_argument("--idle", type=float, default=10.0)
    p.add_argument("--rounds", type=int, default=2, help="of the TLS measurement")
    args = p.parse_args()
    ready = startup_to_ready()
    print(f"start-up to READY: median {statistics.median(ready):.2f} s, max {max(ready):.2f} s")
    for plain, secure in tls_cost(args.rounds):
        print(
            f"files-only host, RSS after converging: plain MQTT {plain:.1f} MiB,"
            f" TLS with a client certificate {secure:.1f} MiB ({secure - plain:+.1f})"
        )
    fleet = Sim.up(args.net, fork_agents=False)  # each agent started as on a real host
    try:
        rows = fleet.rollout()
        if not all(r.ok for r in rows):
            print("rollout failed", rows, file=sys.stderr)
            return 1
        pids = [h.agent.pid for h in fleet.hosts.values() if h.agent is not None]
        rss = [_rss_mib(pid) for pid in pids]
        before = [_cpu(pid) for pid in pids]
        time.sleep(args.idle)  # the measurement window: what the agents do when idle
        used = [_cpu(pid) - b for pid, b in zip(pids, before, strict=True)]
    finally:
        fleet.down()
    print(f"RSS after converging: median {statistics.median(rss):.1f} MiB, max {max(rss):.1f} MiB")
    pct = [100 * u / args.idle for u in used]
    med, top = statistics.median(pct), max(pct)
    print(f"idle CPU over {args.idle:g} s: median {med:.2f} %, max {top:.2f} %")
    return 0


if __name__ == "__main__":
    sys.exit(main())
