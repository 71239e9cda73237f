"""One host's apply, ours against the seed's own commands, on the same fresh host.

    sudo .venv/bin/python bench/host_apply.py [REPEAT]

Each round builds a fresh host namespace (ovsdb-server + ovs-vswitchd, netdev datapath,
a veth ``eth0``) for each contender, then times the first full apply (OVS trunk and fake
bridges, the management address and route, the firewall, the libvirt files) and a second,
no-op, apply: ``csboot apply`` of nets/scale-100.yaml's KVM role and host document, the
engine alone (in-process: no interpreter start-up; fresh, and with its modules imported),
the agent's worker (forked per apply from a process holding what the agent holds, as on
a real host), and ``bench/seed_apply.sh`` (the seed's commands; idempotent, so its
second run is its no-op).
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

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

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


def round_trip(kind: str, docs: tuple[Path, Path]) -> list[float]:
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
            if kind == "seed":
                argv = [str(REPO / "bench/seed_apply.sh"), str(root)]
                out = []
                for _ in range(2):
                    t = time.monotonic()
                    ns.run(argv, env=env, capture_output=True)
                    out.append(time.monotonic() - t)
                return out
            role, host = map(str, docs)
            if kind in ("engine", "warm", "worker", "early"):
                argv = [sys.executable, __file__, "--inner", str(root), role, host]
                argv += [] if kind == "engine" else [kind]
                done = ns.run(argv, env=env, capture_output=True, text=True)
                times: list[float] = json.loads(done.stdout)
                return times
            csboot = str(Path(sys.executable).with_name("csboot"))
            argv = [csboot, "apply", "-f", role, "-f", host, "--root", str(root), "--json"]
            out = []
            for _ in range(2):
                t = time.monotonic()
                ns.run(argv, env=env, capture_output=True)
                out.append(time.monotonic() - t)
            return out
        finally:
            if ovs is not None:
                ovs.stop()
            remove_all([ns])


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
    results: dict[str, list[list[float]]] = {
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
    print("| contender | first full apply (median) | no-op re-apply (median) | rounds |")
    print("|---|---|---|---|")
    for key, runs in results.items():
        first = statistics.median(r[0] for r in runs)
        again = statistics.median(r[1] for r in runs)
        print(f"| {key} | {first * 1000:.0f} ms | {again * 1000:.0f} ms | {len(runs)} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
