"""The simulated fleet: ``Sim.up`` builds it, ``rollout`` converges it, ``check``, ``down``.

Everything a run makes is named by its run id (namespaces ``<run>-switch``,
``<run>-broker``, ``<run>-<host>``, guests ``<run>-<host>-g<vlan>``) and recorded in a state
file (``/run/csboot-sim/<run>.json``, plus ``latest``) *before* it is made, so
``down_run`` removes exactly what that run created, even after a crash: every daemon of a
run (mosquitto, ovsdb-server, ovs-vswitchd, agents, QEMU) lives inside one of its
namespaces, and removing a namespace stops what is in it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from simulator.checks import CheckResult
from simulator.fabric import Fabric
from simulator.hosts import SimHost
from simulator.namespaces import Namespace, new_run_id, remove_run
from simulator.nets import Layout, Net, load_net
from simulator.rollout import BrokerHandle, start_broker, wait_connected, wait_converged
from simulator.zygote import Zygote

__all__ = ["STATE_DIR", "RolloutRow", "Sim", "SimError", "down_run", "list_runs"]

STATE_DIR = Path(os.environ.get("CSBOOT_SIM_STATE", "/run/csboot-sim"))
UP_WORKERS = 8
AGENT_GRACE = 3.0  # seconds the agents get to stop before everything else is
_STATE_LOCK = threading.Lock()


class SimError(RuntimeError):
    """The fleet could not be built (exit code 2): what failed and for which part."""


@dataclass(frozen=True, slots=True)
class RolloutRow:
    host: str
    ok: bool
    state: str
    detail: str
    seconds: float  # from the publish to the final status
    applying: float | None = None  # from the publish to the host's "applying"
    warnings: tuple[str, ...] = ()  # the final status's: insecure settings, plan warnings


@dataclass(slots=True)
class Sim:
    net: Net
    net_path: str
    layout: Layout
    run_id: str
    workdir: Path
    switch_ns: Namespace | None = None
    broker_ns: Namespace | None = None
    fabric: Fabric | None = None
    broker: BrokerHandle | None = None
    hosts: dict[str, SimHost] = field(default_factory=dict)
    namespaces: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    rollout_rows: list[RolloutRow] = field(default_factory=list)
    zygote: Zygote | None = None

    # -- state file -------------------------------------------------------------------

    @property
    def state_path(self) -> Path:
        return STATE_DIR / f"{self.run_id}.json"

    def save_state(self) -> None:
        STATE_DIR.mkdir(parents=True, exist_ok=True)
        data = {
            "run": self.run_id,
            "net": self.net_path,
            "workdir": str(self.workdir),
            "namespaces": self.namespaces,
            "pid": os.getpid(),
            "broker_password": self.broker.admin_password if self.broker else None,
        }
        tmp = self.state_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, indent=1))
        tmp.replace(self.state_path)
        latest = STATE_DIR / "latest"
        latest.unlink(missing_ok=True)
        latest.symlink_to(self.state_path.name)

    def record_namespace(self, *names: str) -> None:
        """Recorded before they are created (threads call this: one writer at a time)."""
        with _STATE_LOCK:
            self.namespaces.extend(names)
            self.save_state()

    def _ns(self, suffix: str) -> Namespace:
        name = f"{self.run_id}-{suffix}"
        self.record_namespace(name)
        return Namespace.create(name)

    # -- up ---------------------------------------------------------------------------

    @classmethod
    def create(cls, net_path: str | Path) -> Sim:
        net = load_net(net_path)
        run = new_run_id()
        workdir = Path(tempfile.mkdtemp(prefix=f"csboot-sim-{run}-"))
        sim = cls(net=net, net_path=str(net_path), layout=net.layout(), run_id=run, workdir=workdir)
        sim.save_state()
        return sim

    @classmethod
    def up(cls, net_path: str | Path, *, fork_agents: bool = True) -> Sim:
        """Build the fleet; on any failure tear down what was made and raise SimError.
        ``fork_agents=False``: every agent starts as its own ``csboot agent`` process, as
        on a real host (``bench/agent_footprint.py`` measures those), not from the zygote."""
        sim = cls.create(net_path)
        try:
            sim.build(fork_agents=fork_agents)
        except BaseException as exc:
            sim.down()
            if isinstance(exc, Exception) and not isinstance(exc, SimError):
                where = traceback.extract_tb(exc.__traceback__)[-1]
                raise SimError(
                    f"could not build {sim.net.name}: {type(exc).__name__}: {exc} "
                    f"({Path(where.filename).name}:{where.lineno})"
                ) from exc
            raise
        return sim

    def build(self, *, fork_agents: bool = True) -> None:
        t0 = time.monotonic()
        self.switch_ns = self._ns("switch")
        self.fabric = Fabric.build(self.switch_ns, self.workdir / "switch", self.net.switch)
        self.broker_ns = self._ns("broker")
        # the agents' warm interpreter imports while the rest comes up (simulator/zygote.py)
        if fork_agents:
            self.zygote = Zygote.start(self.broker_ns.argv([]))
        for vlan, addresses in self.layout.routers():  # the broker's namespace routes too
            self.fabric.add_access(self.broker_ns, f"v{vlan}", f"r{vlan}", vlan, addresses)
        self.broker_ns.sysctl("net.ipv4.ip_forward", "1")
        self.broker = start_broker(
            self.broker_ns, self.workdir / "broker", self.net.broker, self.layout
        )
        self.save_state()
        self.timings["fabric"] = time.monotonic() - t0
        t1 = time.monotonic()
        names = [h.name for h in self.layout.hosts]
        for name in names:  # recorded before they exist, so a crash mid-way is cleaned up
            self.namespaces.append(f"{self.run_id}-{name}")
        self.save_state()
        # namespaces and cables in parallel, every switch port in one transaction, then
        # each host's OVS daemons, install-time network and agent in parallel
        self.fabric.defer()
        with ThreadPoolExecutor(UP_WORKERS) as pool:
            spaces = list(pool.map(self._cable_host, self.layout.hosts))
        self.fabric.commit()
        self.timings["cables"] = time.monotonic() - t1
        with ThreadPoolExecutor(UP_WORKERS) as pool:
            built = list(pool.map(self._build_host, self.layout.hosts, spaces))
        self.hosts = {h.name: h for h in built}
        self.timings["hosts"] = time.monotonic() - t1
        # up means the agents are connected: a rollout then times convergence alone
        t2 = time.monotonic()
        late = wait_connected(self.broker, self.layout, timeout=self.net.converge_timeout)
        if late:
            raise SimError(f"agents not connected to the broker: {', '.join(late[:10])}")
        self.timings["agents"] = time.monotonic() - t2

    def _cable_host(self, layout: Any) -> Namespace:
        assert self.fabric is not None
        ns = Namespace.create(f"{self.run_id}-{layout.name}")
        try:
            SimHost.cable(layout, ns, self.fabric)
        except Exception as exc:
            raise SimError(f"host {layout.name}: {exc}") from exc
        return ns

    def _build_host(self, layout: Any, ns: Namespace) -> SimHost:
        assert self.fabric is not None and self.broker is not None
        try:
            host = SimHost.build(
                layout,
                ns,
                self.workdir / "hosts" / layout.name,
                self.fabric,
                mgmt_vlan=self.layout.mgmt_vlan,
                cable=False,
            )
            host.zygote = self.zygote
            host.start_agent(self.broker.url, self.broker.passwords[layout.name])
        except Exception as exc:
            raise SimError(f"host {layout.name}: {exc}") from exc
        return host

    # -- rollout ----------------------------------------------------------------------

    def rollout(self, timeout: float | None = None) -> list[RolloutRow]:
        """Publish the documents retained; wait for every host's status to say converged."""
        assert self.broker is not None
        t0 = time.monotonic()
        self.broker.publish_documents(self.layout)
        rows = wait_converged(
            self.broker, self.layout, timeout=timeout or self.net.converge_timeout, start=t0
        )
        self.timings["rollout"] = time.monotonic() - t0
        self.rollout_rows = [RolloutRow(**r) for r in rows]
        return self.rollout_rows

    def csboot(self, command: str, *args: str, **popen: Any) -> subprocess.Popen[str]:
        """``csboot COMMAND ARGS`` (``rollout``, ``status``) as a process inside the broker
        namespace, connected as the operator: nothing leaves the run's namespaces, and the
        fleet tools do the publishing and waiting. Output is piped (text) unless overridden."""
        assert self.broker_ns is not None and self.broker is not None
        conf = self.broker.operator_config()
        argv = [str(Path(sys.executable).with_name("csboot")), command, *args, "-c", str(conf)]
        kwargs: dict[str, Any] = {
            "stdin": subprocess.DEVNULL,
            "stdout": subprocess.PIPE,
            "stderr": subprocess.STDOUT,
            "text": True,
        }
        return self.broker_ns.popen(argv, **(kwargs | popen))

    # -- checks -----------------------------------------------------------------------

    def check(self, only: list[str] | None = None) -> list[CheckResult]:
        return asyncio.run(self.check_async(only))

    async def check_async(self, only: list[str] | None = None) -> list[CheckResult]:
        """The checks, each as soon as what it needs is there: reach and isolation once
        the guests are attached; migration and cloudstack at once; ports after both, whose
        QEMU and libvirtd stand-in listen on ports the ports check holds (a listener on
        every allowed port). Each check's own time (from its start, not its wait) is kept
        in ``timings`` (they overlap); ``check`` is the wall time of all of them."""
        from simulator.checks.cloudstack import check_cloudstack
        from simulator.checks.isolation import check_isolation
        from simulator.checks.migration import check_migration
        from simulator.checks.ports import check_ports
        from simulator.checks.reach import attach_guests, check_reach

        exp = self.net.expect
        wanted = {
            "reach": True,
            "isolation": exp.isolated,
            "ports": exp.ports,
            "migration": exp.migration is not None,
            "cloudstack": exp.cloudstack,
        }
        checks: dict[str, Callable[[Sim], Awaitable[CheckResult]]] = {
            "reach": check_reach,
            "isolation": check_isolation,
            "ports": check_ports,
            "migration": check_migration,
            "cloudstack": check_cloudstack,
        }
        run = [n for n in checks if wanted[n] and (not only or n in only)]

        async def timed(name: str, after: Sequence[asyncio.Task[Any]] = ()) -> CheckResult:
            for needed in after:
                await needed
            t = time.monotonic()
            result = await checks[name](self)
            self.timings[f"check.{name}"] = time.monotonic() - t
            return result

        async def guests() -> None:
            if {"reach", "isolation"} & set(run):
                await asyncio.to_thread(attach_guests, self)
                self.timings["check.guests"] = time.monotonic() - t0

        t0 = time.monotonic()
        tasks: dict[str, asyncio.Task[CheckResult]] = {}
        async with asyncio.TaskGroup() as tg:
            attached = tg.create_task(guests())
            for name in ("migration", "cloudstack"):
                if name in run:
                    tasks[name] = tg.create_task(timed(name))
            listeners = list(tasks.values())  # QEMU's, the libvirtd stand-in's
            for name in ("reach", "isolation"):
                if name in run:
                    tasks[name] = tg.create_task(timed(name, [attached]))
            if "ports" in run:
                tasks["ports"] = tg.create_task(timed("ports", listeners))
        self.timings["check"] = time.monotonic() - t0
        return [tasks[n].result() for n in run]

    # -- down -------------------------------------------------------------------------

    def down(self) -> list[str]:
        """Every process of the run is signalled at once (they all live in its namespaces),
        then the namespaces go; the children's exit statuses are collected after."""
        t0 = time.monotonic()
        # the agents first, all at once, while their broker still answers: each says
        # "offline" and exits at once (with the broker gone, saying so takes seconds)
        agents = [h.agent for h in self.hosts.values() if h.agent and h.agent.poll() is None]
        for agent in agents:
            agent.terminate()
        deadline = time.monotonic() + AGENT_GRACE
        for agent in agents:
            with contextlib.suppress(subprocess.TimeoutExpired):
                agent.wait(max(0.0, deadline - time.monotonic()))
        if self.zygote is not None:
            with contextlib.suppress(Exception):
                self.zygote.close()
        removed = down_run(self.run_id)
        for host in self.hosts.values():
            with contextlib.suppress(Exception):
                host.stop()
        if self.broker is not None:
            with contextlib.suppress(Exception):
                self.broker.stop()
        if self.fabric is not None:
            with contextlib.suppress(Exception):
                self.fabric.stop()
        self.timings["down"] = time.monotonic() - t0
        return removed

    # -- re-attach (a later `csboot-sim check` process) -------------------------------

    @classmethod
    def attach(cls, run: str | None = None) -> Sim:
        state = read_state(run)
        net = load_net(state["net"])
        sim = cls(
            net=net,
            net_path=state["net"],
            layout=net.layout(),
            run_id=state["run"],
            workdir=Path(state["workdir"]),
            namespaces=list(state["namespaces"]),
        )
        from simulator.ovs import HOST_CONFIG, OvsDaemons
        from simulator.rollout import attach_broker

        sim.broker_ns = Namespace(f"{sim.run_id}-broker")
        sim.broker = attach_broker(
            sim.broker_ns,
            sim.workdir / "broker",
            net.broker,
            sim.layout,
            state.get("broker_password") or "",
        )
        for layout in sim.layout.hosts:
            ns = Namespace(f"{sim.run_id}-{layout.name}")
            root = sim.workdir / "hosts" / layout.name
            host = SimHost(layout=layout, ns=ns, root=root)
            if layout.backend == "openvswitch":
                host.ovs = OvsDaemons(root, ns, other_config=HOST_CONFIG)
            sim.hosts[layout.name] = host
        return sim


def read_state(run: str | None) -> dict[str, Any]:
    path = STATE_DIR / (f"{run}.json" if run else "latest")
    try:
        data: dict[str, Any] = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise SimError(f"no simulator run {run or '(latest)'} in {STATE_DIR}") from exc
    return data


def list_runs() -> list[str]:
    return sorted(p.stem for p in STATE_DIR.glob("csb*.json"))


def down_run(run: str | None = None) -> list[str]:
    """Remove one run (the latest by default): its namespaces, processes, files, state."""
    try:
        state = read_state(run)
    except SimError:
        if run is None:
            return []
        state = {"run": run, "workdir": None}
    run_id = state["run"]
    removed = remove_run(run_id)  # stops every process inside, then removes the namespace
    workdir = state.get("workdir")
    if workdir and Path(workdir).name.startswith(f"csboot-sim-{run_id}-"):
        shutil.rmtree(workdir, ignore_errors=True)
    (STATE_DIR / f"{run_id}.json").unlink(missing_ok=True)
    latest = STATE_DIR / "latest"
    with contextlib.suppress(OSError):
        if latest.is_symlink() and str(latest.readlink()) == f"{run_id}.json":
            latest.unlink()
    return removed
