"""``csboot rollout``: one role's new version, wave by wave, over the broker.

The imperative shell around :mod:`bootstrap.fleet.waves`: it hands the version to hosts by
republishing the same version with a growing ``rollout`` selector, judges each host from
its status (state, version and post-apply checks), aborts by publishing the previous spec
as a newer version, and keeps its own state retained on ``P/rollouts/{role}`` so that a
restarted controller resumes and a second one refuses.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import aiomqtt

from bootstrap.errors import RolloutError, RolloutLocked
from bootstrap.fleet.connect import FleetConfig, client_id, connect
from bootstrap.fleet.state import (
    Previous,
    RolloutState,
    iso,
    lock_holder,
    parse_iso,
    resumable,
    spec_digest,
    summarize,
    utcnow,
)
from bootstrap.fleet.view import FleetView
from bootstrap.fleet.waves import (
    AbortPolicy,
    Amount,
    admit,
    judge,
    order_hosts,
    split_waves,
)
from bootstrap.model.document import Document, RolloutSelector
from bootstrap.model.signing import PrivateKey, sign
from bootstrap.wire.status import MAX_VERSION, CheckItem
from bootstrap.wire.text import printable

Say = Callable[[str], None]


@dataclass(frozen=True)
class Options:
    role: str
    document: Document
    waves: tuple[Amount, ...]
    max_unavailable: Amount = field(default_factory=lambda: Amount(50, percent=True))
    policy: AbortPolicy = field(default_factory=AbortPolicy)
    timeout: float = 300.0
    heartbeat: float = 5.0
    inventory: tuple[str, ...] = ()
    canaries: tuple[str, ...] = ()
    key: PrivateKey | None = None
    key_id: str = ""


@dataclass
class Result:
    state: RolloutState
    summary: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.state.phase == "completed" and not self.state.failed


class Controller:
    def __init__(self, client: aiomqtt.Client, view: FleetView, opts: Options, say: Say) -> None:
        self.client = client
        self.view = view
        self.opts = opts
        self.say = say
        self.me = client_id("rollout") + "-" + secrets.token_hex(3)
        self.admitted_seq: dict[str, int] = {}
        self.baseline: dict[str, list[CheckItem]] = {}
        self.state: RolloutState | None = None
        # hosts are timed from when they were handed the version or from when this
        # controller began watching, whichever is later: the time nobody watched (a
        # broker outage, a dead controller) does not count against a host
        self.watching_since = utcnow()

    # --- publishing ---------------------------------------------------------------------

    def _signed(self, doc: Document) -> Document:
        if self.opts.key is None:
            return doc
        unsigned = doc.model_copy(update={"signature": None})
        return sign(unsigned, self.opts.key_id, self.opts.key, prefix=self.view.prefix)

    async def publish_doc(
        self, version: int, spec: Mapping[str, Any], hosts: Sequence[str] | None, rollout_id: str
    ) -> None:
        selector = None if hosts is None else RolloutSelector(id=rollout_id, hosts=tuple(hosts))
        doc = Document(
            api_version="cloudstack-bootstrap/v1",
            kind="Role",
            name=self.opts.role,
            version=version,
            spec=dict(spec),
            rollout=selector,
        )
        payload = _encode(self._signed(doc).to_json())
        await self.client.publish(
            self.view.topic("roles", self.opts.role, "desired"), payload, qos=1, retain=True
        )

    async def save(self) -> None:
        assert self.state is not None
        self.state.heartbeat = iso(utcnow())
        await self.client.publish(
            self.view.topic("rollouts", self.opts.role),
            _encode(self.state.to_json()),
            qos=1,
            retain=True,
        )

    async def sync(self) -> None:
        """Until every retained message of our subscriptions has arrived."""
        marker = secrets.token_hex(4)
        await self.client.publish(
            self.view.topic("rollouts", self.opts.role, "sync", marker), b"", qos=1
        )
        deadline = asyncio.get_running_loop().time() + 5
        while marker not in self.view.synced and asyncio.get_running_loop().time() < deadline:
            await self.view.wait(0.2)

    # --- set-up -------------------------------------------------------------------------

    def plan(self) -> RolloutState:
        role, doc = self.opts.role, self.opts.document
        current = self.view.role_docs.get(role)
        version = max(self.view.published_version(role) + 1, doc.version)
        if version > MAX_VERSION:
            raise RolloutError(f"version {version} of role {role!r} is beyond {MAX_VERSION}")
        # membership: the inventory, else whom the controller side named before; never
        # what a host's status claims
        hosts = set(self.opts.inventory) or set(self.view.published_hosts(role))
        if not hosts:
            raise RolloutError(
                f"no host for role {role!r}: pass --inventory (no earlier rollout of the "
                "role names its hosts)"
            )
        ordered = order_hosts(hosts, self.opts.canaries)
        now = iso(utcnow())
        previous = None
        if current is not None:
            previous = Previous(version=current.version, spec=dict(current.spec))
        return RolloutState(
            id=f"{role}-v{version}-{secrets.token_hex(3)}",
            role=role,
            version=version,
            digest=spec_digest(doc.spec),
            previous=previous,
            waves=[list(w) for w in split_waves(ordered, self.opts.waves)],
            controller=self.me,
            heartbeat=now,
            heartbeat_interval=self.opts.heartbeat,
            started=now,
        )

    async def acquire(self) -> RolloutState:
        existing = self.view.rollouts.get(self.opts.role)
        holder = lock_holder(existing, self.me, utcnow())
        if holder is not None:
            assert existing is not None
            raise RolloutLocked(
                f"rollout {printable(existing.id)} of role {self.opts.role} is run by "
                f"{printable(holder)} (heartbeat {printable(existing.heartbeat)}); it may be "
                "taken over once its heartbeat "
                f"is older than {3 * existing.heartbeat_interval:g}s"
            )
        if resumable(existing, spec_digest(self.opts.document.spec)):
            assert existing is not None
            state = existing.model_copy(deep=True)
            state.controller = self.me
            state.heartbeat_interval = self.opts.heartbeat
            self.say(
                f"resuming rollout {printable(state.id)} "
                f"(wave {state.wave + 1}/{len(state.waves)}, "
                f"{len(state.done)} done, phase {state.phase})"
            )
        elif existing is not None and existing.phase in ("running", "aborting"):
            raise RolloutLocked(
                f"an interrupted rollout {printable(existing.id)} of another spec is pending "
                f"on role "
                f"{self.opts.role}: finish it with its own document first"
            )
        else:
            state = self.plan()
            self.say(
                f"rollout {state.id}: version {state.version} to {len(state.hosts)} hosts "
                f"in waves {[len(w) for w in state.waves]}"
            )
        self.state = state
        await self.save()
        await asyncio.sleep(min(1.0, self.opts.heartbeat / 2))
        await self.sync()
        winner = self.view.rollouts.get(self.opts.role)
        if winner is None or winner.controller != self.me:
            raise RolloutLocked(f"another controller claimed role {self.opts.role} at once")
        for host in state.hosts:
            seen = self.view.statuses.get(host)
            reading = seen.for_judging(state.role, state.version) if seen else None
            status = reading.status if reading else None
            self.baseline[host] = list(status.checks) if status else []
        return state

    # --- judging ------------------------------------------------------------------------

    def outcome(self, host: str, version: int) -> tuple[str | None, str]:
        assert self.state is not None
        seen = self.view.statuses.get(host)
        reading = seen.for_judging(self.opts.role, version) if seen else None
        status = reading.status if reading else None
        admitted_at = self.state.admitted.get(host)
        fresh = False
        if reading is not None:
            if host in self.admitted_seq:
                fresh = reading.seq > self.admitted_seq[host]
            elif admitted_at is not None and status is not None:
                with contextlib.suppress(ValueError):
                    fresh = parse_iso(status.at) >= parse_iso(admitted_at)
        result, why = judge(
            status,
            role=self.opts.role,
            version=version,
            fresh=fresh,
            baseline_checks=self.baseline.get(host, ()),
        )
        if reading is not None and reading.invalid is not None:
            why = f"invalid status: {printable(reading.invalid)}"
        if result is None and admitted_at is not None:
            since = max(parse_iso(admitted_at), self.watching_since)
            age = (utcnow() - since).total_seconds()
            if age > self.opts.timeout:
                verdict = "offline" if why == "offline" else "timed_out"
                return verdict, f"no converged status within {self.opts.timeout:g}s ({why})"
        return result, why

    def unavailable(self, in_flight: set[str]) -> int:
        assert self.state is not None
        offline = {
            h
            for h in self.state.hosts
            if (s := self.view.statuses.get(h)) is not None and s.state == "offline"
        }
        return len((offline | set(self.state.failed)) - in_flight)

    # --- the waves ----------------------------------------------------------------------

    async def drive(self) -> None:
        state = self.state
        assert state is not None
        budget = max(1, self.opts.max_unavailable.of(len(state.hosts)))
        spec = self.opts.document.spec
        while state.wave < len(state.waves):
            wave = state.waves[state.wave]
            self.say(f"wave {state.wave + 1}/{len(state.waves)}: {', '.join(wave)}")
            while True:
                changed = False
                for host in [h for h in wave if h in state.admitted]:
                    if host in state.done or host in state.failed:
                        continue
                    result, why = self.outcome(host, state.version)
                    if result == "succeeded":
                        state.done.append(host)
                        self.say(f"  {host}: converged at v{state.version}")
                        changed = True
                    elif result is not None:
                        state.failed[host] = f"{result}: {why}"
                        self.say(f"  {host}: FAILED ({result}: {why})")
                        changed = True
                outcomes = dict.fromkeys(state.done, "succeeded")
                outcomes |= {h: why.split(":")[0] for h, why in state.failed.items()}
                reason = self.opts.policy.decide(outcomes)
                if reason:
                    state.phase, state.reason = "aborting", reason
                    await self.save()
                    return
                in_flight = {
                    h for h in state.admitted if h not in state.done and h not in state.failed
                }
                pending = [h for h in wave if h not in state.admitted]
                new = admit(
                    pending,
                    in_flight=len(in_flight),
                    unavailable=self.unavailable(in_flight),
                    budget=budget,
                )
                if new:
                    for host in new:
                        state.admitted[host] = iso(utcnow())
                        self.admitted_seq[host] = self.view.seq
                    await self.save()
                    await self.publish_doc(state.version, spec, state.selector_hosts(), state.id)
                    changed = False
                elif not pending and not in_flight:
                    break
                elif not in_flight:
                    state.phase = "aborting"
                    state.reason = (
                        f"unavailability budget {self.opts.max_unavailable} "
                        f"exhausted with hosts still to do: {', '.join(pending)}"
                    )
                    await self.save()
                    return
                if changed:
                    await self.save()
                await self.view.wait(0.5)
            state.wave += 1
            await self.save()
        # everyone has it: drop the selector so hosts that join the role later take it too;
        # with failed hosts keep it, so they do not retry behind the operator's back
        final = state.selector_hosts() if state.failed else None
        await self.publish_doc(state.version, spec, final, state.id)
        state.phase = "completed"
        await self.save()

    async def abort(self) -> None:
        state = self.state
        assert state is not None
        self.say(f"aborting: {state.reason}")
        if state.previous is None or not state.admitted:
            why = "no previous version to restore" if state.admitted else "no host was changed"
            state.phase, state.reason = "aborted", f"{state.reason}; {why}"
            await self.save()
            return
        if state.abort_version is None:
            state.abort_version = max(state.version, self.view.published_version(state.role)) + 1
            await self.save()
        version = state.abort_version
        await self.publish_doc(version, state.previous.spec, None, state.id)
        self.say(f"published v{version} = previous spec (v{state.previous.version})")
        changed = list(state.admitted)
        now = iso(utcnow())
        for host in changed:
            state.admitted[host] = now
            self.admitted_seq[host] = self.view.seq
        waiting = set(changed) - set(state.reverted)
        while waiting:
            for host in sorted(waiting):
                result, why = self.outcome(host, version)
                if result == "succeeded":
                    state.reverted.append(host)
                    self.say(f"  {host}: back on the previous spec (v{version})")
                    waiting.discard(host)
                elif result is not None:
                    self.say(f"  {host}: did NOT return ({result}: {why})")
                    waiting.discard(host)
            if waiting:
                await self.view.wait(0.5)
        state.phase = "aborted"
        await self.save()

    async def run(self) -> RolloutState:
        await self.sync()
        state = await self.acquire()
        beat = asyncio.create_task(self.heartbeat(), name="heartbeat")
        try:
            if state.phase == "running":
                await self.drive()
            if state.phase == "aborting":
                await self.abort()
        finally:
            beat.cancel()
        return state

    async def heartbeat(self) -> None:
        while True:
            await asyncio.sleep(self.opts.heartbeat)
            if self.state is not None:
                await self.save()


def _encode(data: Mapping[str, Any]) -> bytes:
    return json.dumps(data, separators=(",", ":")).encode()


async def run_rollout(config: FleetConfig, opts: Options, say: Say = print) -> Result:
    async with connect(config, client_id("rollout") + "-" + secrets.token_hex(3)) as client:
        view = FleetView(config.prefix)
        controller = Controller(client, view, opts, say)

        async def reader() -> None:
            async for message in client.messages:
                payload = message.payload if isinstance(message.payload, bytes) else b""
                view.feed(str(message.topic), payload)

        read = asyncio.create_task(reader(), name="reader")
        try:
            for topic in (
                view.topic("hosts", "+", "status"),
                view.topic("roles", opts.role, "desired"),
                view.topic("rollouts", opts.role),
                view.topic("rollouts", opts.role, "sync", "+"),
            ):
                await client.subscribe(topic, qos=1)
            main = asyncio.create_task(controller.run(), name="controller")
            await asyncio.wait({main, read}, return_when=asyncio.FIRST_COMPLETED)
            if not main.done():  # the reader ended: the connection is gone
                main.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await main
                raise RolloutError(
                    "lost the broker connection (if the broker binds client ids to user "
                    "names, another tool logged in with the same account); run the same "
                    "command to resume"
                )
            state = main.result()
        except aiomqtt.MqttError as exc:
            raise RolloutError(f"broker: {exc}; run the same command to resume") from exc
        finally:
            read.cancel()
            with contextlib.suppress(asyncio.CancelledError, aiomqtt.MqttError):
                await read
        return Result(state, summarize(state))
