"""One host's apply, ours against the seed's own commands, on the same fresh host.

    sudo .venv/bin/python bench/host_apply.py [REPEAT]

Each round builds a fresh host namespace (ovsdb-server + ovs-vswitchd, netdev datapath,
a veth ``eth0``) for each contender, then times the first full apply (OVS trunk and fake
bridges, the management address and route, the firewall, the libvirt files) and a second,
no-op, apply: ``csboot apply`` of nets/scale-100.yaml's KVM role and host document, the
engine alone (in-process: no interpreter start-up; fresh, and with its modules imported),
the agent's worker (forked per apply from a process holding what the agent holds, as on
a real host), and ``bench/seed_apply.sh`` (the seed's commands; idempotent, so its
second run is its no-op). For each it also reads what both applies cost the host's
ovs-vswitchd: its CPU and how many times it reconfigured its bridges (every database
change and every change of a link makes it reconfigure them all).
Prints medians; everything it made is removed.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

REPO = Path(__file__).resolve().parents[1]
NET = REPO / "nets/scale-100.yaml"


def inner(root: str, role: str, host: str, mode: str = "") -> None:
    """Inside the host's namespace: the first converge and a second one, in seconds.
    ``mode``: "" the engine in a fresh process, importing on the way; ``warm`` the engine
    with every module imported beforehand (the simulator's agents, forked warm); ``worker``
    in a worker forked at the apply from a process holding only what the agent holds,
    importing the engine on the way (``bootstrap.agent.worker``); ``early`` as a real
    host's agent runs it: that worker forked when the documents arrive, given its job
    once the agent's default debounce has passed (timed from then)."""
    if mode == "warm":
        import simulator.zygote

        simulator.zygote._warm()
    elif mode in ("worker", "early"):
        import bootstrap.agent.daemon  # noqa: F401  (the resident agent's imports)
    from bootstrap.model.document import effective_spec, parse_document

    docs = [parse_document(Path(p).read_bytes()) for p in (role, host)]
    spec = effective_spec(docs)
    times = []
    for _ in range(2):
        t = time.monotonic()
        if mode in ("worker", "early"):
            from bootstrap.agent.config import AgentConfig
            from bootstrap.agent.worker import Job, Worker

            job = Job("converge", root, spec=spec.model_dump(mode="json"))
            hand = Worker(root)
            if mode == "early":
                hand.spawn()
                time.sleep(AgentConfig.model_fields["debounce"].default)  # the agent's wait
                t = time.monotonic()
            outcome = asyncio.run(hand.run(job, lambda *_: None))
        else:
            from bootstrap.converge import Options, converge
            from bootstrap.host.root import HostRoot

            _plan, outcome = asyncio.run(converge(spec, HostRoot(Path(root)), Options()))
        times.append(time.monotonic() - t)
        assert outcome.ok, outcome.error
    print(json.dumps(times))


def vswitchd_work(ovs: Any) -> tuple[float, int]:
    """CPU seconds the host's ovs-vswitchd has used so far (every thread's, from
    ``schedstat``: nanoseconds, where ``stat`` counts 10 ms ticks) and how many times it
    has reconfigured its bridges (its own ``bridge_reconfigure`` counter): what an apply
    costs the daemon, which the apply's own timing does not show."""
    pid = ovs._procs["ovs-vswitchd"].pid
    tasks = Path(f"/proc/{pid}/task")
    cpu = sum(int((t / "schedstat").read_text().split()[0]) for t in tasks.iterdir()) / 1e9
    from sim_scale import coverage_totals  # this directory's: the same reading of them

    shown = ovs.appctl("ovs-vswitchd", "coverage/show")
    return cpu, coverage_totals(shown, ("bridge_reconfigure",)).get("bridge_reconfigure", 0)


def round_trip(kind: str, docs: tuple[Path, Path]) -> tuple[list[float], tuple[float, int]]:
    """The first apply's and the no-op's seconds, and the host's vswitchd's CPU seconds
    and reconfigurations over both."""
    from pyroute2 import IPRoute

    from simulator.namespaces import Namespace, new_run_id, remove_all
    from simulator.ovs import OvsDaemons

    with tempfile.TemporaryDirectory(prefix="csboot-bench-host-") as tmp:
        root = Path(tmp)
        ns = Namespace.create(f"{new_run_id()}-bench")
        ovs = None
        try:
            with ns.inside(), IPRoute() as ipr:
                ipr.link("add", ifname="eth0", kind="veth", peer="eth0p")  # no dummy module
                for name in ("eth0", "eth0p"):
                    (idx,) = ipr.link_lookup(ifname=name)
                    ipr.link("set", index=idx, state="up")
            ovs = OvsDaemons(root, ns).start()
            env = ovs.env
            cpu, reconfigured = vswitchd_work(ovs)
            times = _applies(kind, ns, env, root, docs)
            # the links' last notifications reach vswitchd after the apply (the kernel's
            # link watch runs up to a second later): read it once it has gone a second
            # without reconfiguring
            after = vswitchd_work(ovs)
            for _ in range(10):
                time.sleep(1.0)  # a measuring window, not a wait for an event
                before, after = after, vswitchd_work(ovs)
                if after[1] == before[1]:
                    break
            return times, (after[0] - cpu, after[1] - reconfigured)
        finally:
            if ovs is not None:
                ovs.stop()
            remove_all([ns])


def _applies(
    kind: str, ns: Any, env: dict[str, str], root: Path, docs: tuple[Path, Path]
) -> list[float]:
    """The first apply's and the no-op's seconds, by ``kind``."""
    role, host = map(str, docs)
    if kind in ("engine", "warm", "worker", "early"):
        argv = [sys.executable, __file__, "--inner", str(root), role, host]
        argv += [] if kind == "engine" else [kind]
        done = ns.run(argv, env=env, capture_output=True, text=True)
        times: list[float] = json.loads(done.stdout)
        return times
    if kind == "seed":
        argv = [str(REPO / "bench/seed_apply.sh"), str(root)]
    else:
        csboot = str(Path(sys.executable).with_name("csboot"))
        argv = [csboot, "apply", "-f", role, "-f", host, "--root", str(root), "--json"]
    out = []
    for _ in range(2):  # a command run twice: its first apply, then its no-op
        t = time.monotonic()
        ns.run(argv, env=env, capture_output=True)
        out.append(time.monotonic() - t)
    return out


def documents(tmp: Path) -> tuple[Path, Path]:
    from simulator.nets import load_net

    layout = load_net(NET).layout()
    host = layout.hosts[0]
    role = tmp / "role.json"
    role.write_text(json.dumps(layout.role_docs[host.roles[0]]))
    doc = tmp / "host.json"
    doc.write_text(json.dumps(host.host_doc))
    return role, doc


def main() -> int:
    if sys.argv[1:2] == ["--inner"]:
        inner(*sys.argv[2:6])
        return 0
    repeat = int(sys.argv[1]) if len(sys.argv) > 1 else 5
    results: dict[str, list[tuple[list[float], tuple[float, int]]]] = {
        "csboot apply": [],
        "engine": [],
        "engine, modules loaded": [],
        "a worker forked at the apply": [],
        "the agent: a worker forked as the documents arrive": [],
        "seed": [],
    }
    with tempfile.TemporaryDirectory(prefix="csboot-bench-docs-") as tmp:
        docs = documents(Path(tmp))
        Path(tmp).chmod(0o755)
        for _ in range(repeat):
            for kind, key in (
                ("cli", "csboot apply"),
                ("engine", "engine"),
                ("warm", "engine, modules loaded"),
                ("worker", "a worker forked at the apply"),
                ("early", "the agent: a worker forked as the documents arrive"),
                ("seed", "seed"),
            ):
                results[key].append(round_trip(kind, docs))
    print(
        "| contender | first full apply (median) | no-op re-apply (median) "
        "| the host's vswitchd over both: CPU, reconfigurations (medians) | rounds |"
    )
    print("|---|---|---|---|---|")
    for key, runs in results.items():
        first = statistics.median(times[0] for times, _ in runs)
        again = statistics.median(times[1] for times, _ in runs)
        cpu = statistics.median(work[0] for _, work in runs)
        reconfigured = statistics.median(work[1] for _, work in runs)
        print(
            f"| {key} | {first * 1000:.0f} ms | {again * 1000:.0f} ms "
            f"| {cpu * 1000:.1f} ms, {reconfigured:g} | {len(runs)} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
