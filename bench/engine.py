"""How fast is the engine on host files, and how much memory does it hold?

Plans and applies the seed's KVM host files (libvirt, security, agent.properties) for N hosts,
each under its own --root, then re-plans (the steady state the agent's drift check runs).
Prints a table. Usage: ``.venv/bin/python bench/engine.py [N]``.
"""

from __future__ import annotations

import asyncio
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

from bootstrap.converge import plan_host
from bootstrap.engine.services import NoServices
from bootstrap.engine.transaction import apply_plan
from bootstrap.host.root import HostRoot
from bootstrap.model import effective_spec, parse_document

REPO = Path(__file__).resolve().parent.parent


def seed_root(root: Path) -> None:
    (root / "etc/libvirt").mkdir(parents=True)
    (root / "etc/libvirt/libvirtd.conf").write_text("#listen_tcp = 1\n" * 50)
    (root / "etc/default").mkdir(parents=True)
    (root / "etc/default/libvirtd").write_text('LIBVIRTD_ARGS=""\n')
    (root / "etc/cloudstack/agent").mkdir(parents=True)
    (root / "etc/cloudstack/agent/agent.properties").write_text(
        "".join(f"key.{i}=value {i}\n" for i in range(200))
    )


async def main(count: int) -> None:
    doc = parse_document((REPO / "examples/role-kvm-files.yaml").read_bytes())
    spec = effective_spec([doc])
    timings: dict[str, list[float]] = {"plan": [], "apply": [], "re-plan": []}
    with tempfile.TemporaryDirectory() as tmp:
        roots = [HostRoot(Path(tmp) / f"h{i}") for i in range(count)]
        for host in roots:
            seed_root(host.root)
        for host in roots:
            t0 = time.perf_counter()
            plan = await plan_host(spec, host)
            t1 = time.perf_counter()
            outcome = await apply_plan(plan, services=NoServices())
            t2 = time.perf_counter()
            assert outcome.ok, outcome.error
            again = await plan_host(spec, host)
            t3 = time.perf_counter()
            assert not again
            timings["plan"].append(t1 - t0)
            timings["apply"].append(t2 - t1)
            timings["re-plan"].append(t3 - t2)
    rss_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"engine on host files, {count} hosts (seed KVM files, 200-key agent.properties)")
    print(f"{'step':<10}{'median ms':>12}{'p95 ms':>10}{'max ms':>10}")
    for step, values in timings.items():
        ordered = sorted(values)
        p95 = ordered[int(0.95 * (len(ordered) - 1))]
        print(
            f"{step:<10}{statistics.median(values) * 1e3:>12.2f}{p95 * 1e3:>10.2f}"
            f"{ordered[-1] * 1e3:>10.2f}"
        )
    print(f"peak RSS of the process: {rss_mib:.1f} MiB")


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 100))
