"""The one entry point every shell calls: plan or converge a host to an effective spec.

``csboot plan|apply``, the agent and the simulator (through the agent and the CLI) all go
through here, so there is exactly one implementation of "make this host right".
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from bootstrap.engine.check import Check
from bootstrap.engine.journal import Journal
from bootstrap.engine.plan import Plan, make_plan
from bootstrap.engine.probe import IcmpProbe, Probe
from bootstrap.engine.services import services_for
from bootstrap.engine.transaction import EventSink, Outcome, apply_plan, recover
from bootstrap.host.root import HostRoot
from bootstrap.model.document import validate_spec
from bootstrap.model.spec import Spec
from bootstrap.resources import resources_for
from bootstrap.resources.firewall import nft_session
from bootstrap.resources.fwmanager import resolve as resolve_firewall
from bootstrap.resources.packages import install_resources


def _noop(_event: str, _data: Any) -> None:
    return None


@dataclass(frozen=True, slots=True)
class Options:
    """How to converge: extra probes (the agent adds its broker), the rollback window."""

    probes: Sequence[Probe] = ()
    rollback_window: float = 30.0
    on_event: EventSink = field(default=_noop)


def journal_for(host: HostRoot) -> Journal:
    return Journal(host.journal_path)


def probes_for(spec: Spec, extra: Sequence[Probe] = ()) -> list[Probe]:
    """The management gateway (when the spec names one), then the caller's probes."""
    probes: list[Probe] = []
    mgmt = spec.network.management if spec.network else None
    if mgmt is not None and mgmt.gateway is not None:
        probes.append(IcmpProbe(str(mgmt.gateway)))
    probes.extend(extra)
    return probes


async def recover_host(host: HostRoot) -> list[str] | None:
    """Finish what a crash interrupted: revert the journalled resources to their snapshots."""
    journal = journal_for(host)
    entry = journal.pending()
    if entry is None:
        return None
    spec = validate_spec(entry.spec, prefix="journal.spec")
    return await recover(journal, resources_for(spec, host, recovering=True))


async def plan_host(spec: Spec, host: HostRoot) -> Plan:
    return await make_plan(resources_for(spec, host))


async def converge(
    spec: Spec, host: HostRoot, options: Options = Options()
) -> tuple[Plan, Outcome]:
    """Recover from any interrupted run, plan, then apply the plan as one transaction.

    Packages go first, on their own: what they install (libvirtd.conf, chrony.conf, unit
    files) must be on disk before the rest is planned, or the plan would edit files that
    do not exist yet. A rollback of the rest leaves them, and the outcome says so.
    """
    # one libnftables context and one OVSDB connection for the transaction's calls
    with nft_session(), _ovsdb_session(spec):
        return await _converge(spec, host, options)


def _ovsdb_session(spec: Spec) -> contextlib.AbstractContextManager[None]:
    """The OVS resource's connection kept for the transaction, where the spec uses OVS
    (elsewhere the ``ovs`` library is not even imported)."""
    if spec.network is None or spec.network.backend != "openvswitch":
        return contextlib.nullcontext()
    from bootstrap.resources.ovsdb import ovsdb_session

    return ovsdb_session()


async def _converge(spec: Spec, host: HostRoot, options: Options) -> tuple[Plan, Outcome]:
    await recover_host(host)
    # a firewall backend this host cannot honour (our table beside an active firewalld or
    # ufw) refuses the whole transaction before anything, packages included, is applied
    resolve_firewall(spec, host)
    installed = await make_plan(install_resources(spec, host))
    services = services_for(host.is_real)
    if installed:
        first = await apply_plan(
            installed,
            services=services,
            journal=journal_for(host),
            journal_spec=spec.model_dump(mode="json"),
            on_event=options.on_event,
        )
        if not first.ok:
            return installed, first
    plan = await make_plan(resources_for(spec, host, installs=False))
    outcome = await apply_plan(
        plan,
        services=services,
        probes=probes_for(spec, options.probes),
        rollback_window=options.rollback_window,
        journal=journal_for(host),
        journal_spec=spec.model_dump(mode="json"),
        on_event=options.on_event,
    )
    if installed:
        outcome.changes[:0] = installed.changes
        if not outcome.ok:
            kept = ", ".join(c.resource for c in installed.changes)
            outcome.checks.append(Check("packages", True, f"the rollback left them: {kept}"))
    return Plan(installed.steps + plan.steps), outcome
