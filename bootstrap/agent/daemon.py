"""The host daemon: desired documents in, converged host and status documents out.

Start-up runs before any broker is needed: finish an interrupted apply (``recover_host``)
and re-apply the last known good documents. Then three named tasks share one lock on the
host: the MQTT session (feeds :class:`Desired`), the converge loop (debounces bursts,
merges roles + host overlay, converges, reports) and the drift loop (re-plans, reports
and optionally heals).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import signal
from collections.abc import Mapping, Sequence
from typing import Any

from bootstrap.agent.cache import LastKnownGood
from bootstrap.agent.checks import run_checks
from bootstrap.agent.config import AgentConfig
from bootstrap.agent.desired import Desired, Rejection
from bootstrap.agent.notify import sd_notify
from bootstrap.agent.session import Session
from bootstrap.agent.status import State, encode, now, status_document
from bootstrap.agent.topics import Topics
from bootstrap.converge import Options, converge, plan_host, recover_host
from bootstrap.engine.check import Check
from bootstrap.engine.probe import Probe, TcpProbe
from bootstrap.engine.resource import Change
from bootstrap.engine.transaction import Outcome
from bootstrap.errors import BootstrapError, InvalidDocument
from bootstrap.host.root import HostRoot
from bootstrap.model.document import Document, effective_spec
from bootstrap.model.signing import verify
from bootstrap.model.spec import Spec

log = logging.getLogger(__name__)
ROLES_WAIT = 10  # debounces a burst may wait for the roles' documents (see _roles_arrive)


class Agent:
    """One host's agent. ``once``: converge what the broker holds, report, and return."""

    def __init__(self, config: AgentConfig, *, once: bool = False, wait: float = 60.0) -> None:
        self.config = config
        self.once = once
        self.wait = wait
        self.host = HostRoot(config.root)
        self.topics = Topics(config.prefix, config.host, config.roles)
        self.desired = Desired(config.roles, config.host, config.trusted())
        self.cache = LastKnownGood(self.host)
        self.status = self._status("starting")
        self.applies = 0
        self.rejections = 0
        self._lock = asyncio.Lock()
        self._wake = asyncio.Event()
        self._stop = asyncio.Event()
        self._events: asyncio.Queue[dict[str, Any]] = asyncio.Queue(maxsize=100)
        self.session = Session(
            config,
            self.topics,
            will=lambda: encode(self._status("offline")),
            on_message=self._on_message,
            on_connect=self._on_connect,
        )

    # --- status and events --------------------------------------------------------------

    def _status(self, state: State, **kwargs: Any) -> dict[str, Any]:
        return status_document(
            host=self.config.host, state=state, applied=self.desired.versions(), **kwargs
        )

    async def _report(self, state: State, **kwargs: Any) -> None:
        self.status = self._status(state, **kwargs)
        error = self.status["error"]
        sd_notify(f"STATUS={state}" + (f": {error['message']}" if error else ""))
        log.log(
            logging.WARNING if error else logging.INFO,
            "status %s (in force: %s)%s",
            state,
            json.dumps(self.status["applied"]),
            f": {error['message']}" if error else "",
        )
        await self.session.publish(self.topics.status, encode(self.status), retain=True)

    def _event(self, event: str, data: Mapping[str, Any]) -> None:
        """Progress events are best effort: dropped when offline or when too many queue."""
        with contextlib.suppress(asyncio.QueueFull):
            self._events.put_nowait({"host": self.config.host, "event": event, "at": now(), **data})

    async def _publish_events(self) -> None:
        while True:
            item = await self._events.get()
            payload = json.dumps(item, default=str).encode()
            try:
                # Across a reconnect (e.g. the will renewal after every apply) retry for a
                # while: a publish can fail while the old connection is being torn down.
                async with asyncio.timeout(5):
                    while True:
                        await self.session.connected.wait()
                        if await self.session.publish(self.topics.events, payload, retain=False):
                            break
                        await asyncio.sleep(0.05)
            except TimeoutError:
                pass  # offline: progress events are not retained, so not queued either
            finally:
                self._events.task_done()

    # --- MQTT callbacks -----------------------------------------------------------------

    async def _on_connect(self) -> None:
        """Re-assert our status: the will may have said ``offline`` meanwhile."""
        await self.session.publish(self.topics.status, encode(self.status), retain=True)

    async def _on_message(self, topic: str, payload: bytes) -> None:
        key = self.topics.key_of(topic)
        if key is None:
            return
        result = self.desired.offer(key, payload)
        if isinstance(result, Rejection):
            await self._reject(result)
        elif result is not None:
            log.info("received %s v%d", key, result.version)
            self._event("received", {"document": key, "version": result.version})
            self._wake.set()

    async def _reject(self, rejection: Rejection) -> None:
        self.rejections += 1
        self._event("rejected", {"document": rejection.key, "reason": rejection.describe()})
        error = rejection.error.to_json()
        error["message"] = rejection.describe()
        if isinstance(rejection.error, InvalidDocument):
            error["field"] = rejection.error.field
        else:
            error["field"] = "version"
        async with self._lock:
            await self._report("rejected", error=error)
        self._wake.set()

    # --- converging ---------------------------------------------------------------------

    def _probes(self) -> list[Probe]:
        broker = self.session.broker or self.config.brokers[0]
        return [TcpProbe(broker.host, broker.port)]

    async def _converge(self, spec: Spec) -> Outcome:
        self.applies += 1
        options = Options(self._probes(), self.config.rollback_window, self._event)
        try:
            _plan, outcome = await converge(spec, self.host, options)
        except BootstrapError as exc:
            return Outcome("failed", error=exc)
        if outcome.ok:
            outcome.checks.extend(await run_checks(self.config.enabled_checks, spec))
        return outcome

    async def _apply_pending(self) -> bool | None:
        """Converge in-force + pending; None when nothing was pending."""
        async with self._lock:
            if not self.desired.pending:
                return None
            docs = self.desired.candidate()
            try:
                spec = effective_spec(self.desired.ordered(docs))
            except InvalidDocument as exc:
                # the combination is invalid: keep the pending ones parked for a fix
                self.rejections += 1
                await self._report("rejected", error=exc)
                return False
            targets = ", ".join(f"{k} v{d.version}" for k, d in docs.items())
            await self._report("applying")
            self._event("applying", {"documents": self.desired.versions(docs)})
            log.info("applying %s", targets)
            outcome = await self._converge(spec)
            if outcome.ok:
                self.desired.commit(docs)
                self.cache.save(docs)
            else:
                self.desired.drop_pending()
            await self._finish(outcome)
            if outcome.ok and not self.once:
                self.session.renew()  # the will now names the versions in force
            return outcome.ok

    async def _finish(self, outcome: Outcome, drift: Sequence[Change] | None = None) -> None:
        self._event("done", {"state": outcome.state, "changes": len(outcome.changes)})
        await self._report(
            outcome.state,
            changes=outcome.changes,
            checks=outcome.checks,
            error=outcome.error,
            drift=drift,
        )

    async def _debounced(self) -> None:
        """Wait for a wake-up, then until the burst is over."""
        await self._wake.wait()
        self._wake.clear()
        while True:
            try:
                await asyncio.wait_for(self._wake.wait(), self.config.debounce)
            except TimeoutError:
                return
            self._wake.clear()

    async def _roles_arrive(self) -> None:
        """A first burst that brought the host overlay before every role's document: wait
        up to ``ROLES_WAIT`` debounces more for the roles. The broker sends retained
        documents one by one, and on a loaded machine they can come further apart than one
        debounce; converging on the overlay alone would fail (and a failed version is not
        retried). Once the roles are there, or the wait is over, the burst is applied."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + ROLES_WAIT * self.config.debounce
        while self.desired.roles_missing() and (left := deadline - loop.time()) > 0:
            try:
                await asyncio.wait_for(self._wake.wait(), left)
            except TimeoutError:
                return
            self._wake.clear()

    async def _converge_loop(self) -> None:
        while True:
            await self._debounced()
            await self._roles_arrive()
            await self._apply_pending()

    async def _once(self) -> bool:
        """Until the first document set is dealt with, or ``wait`` runs out."""
        rejections = self.rejections
        try:
            async with asyncio.timeout(self.wait):
                await self.session.connected.wait()
                while True:
                    try:
                        async with asyncio.timeout(max(self.config.debounce, 1.0) + 1.0):
                            await self._debounced()
                    except TimeoutError:
                        if self.desired.in_force:  # the broker holds nothing newer
                            return bool(self.status["state"] == "converged")
                        continue
                    result = await self._apply_pending()
                    if result is not None:
                        return result
                    if self.rejections != rejections:
                        return False
        except TimeoutError:
            error = {
                "code": "timeout",
                "message": f"no desired state within {self.wait:g}s",
                "resource": "broker",
            }
            async with self._lock:
                await self._report("failed", error=error)
            return False

    # --- drift --------------------------------------------------------------------------

    async def _drift_loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.drift.interval)
            async with self._lock:
                if not self.desired.in_force:
                    continue
                try:
                    await self._check_drift()
                except BootstrapError as exc:
                    log.warning("drift check failed: %s", exc.message)

    async def _check_drift(self) -> None:
        spec = effective_spec(self.desired.ordered())
        plan = await plan_host(spec, self.host)
        drift = plan.changes
        known = self.status.get("drift") or []
        if not drift:
            if known:
                await self._report("converged", checks=[Check("drift", True, "none")])
            return
        self._event("drift", {"changes": [c.to_json() for c in drift]})
        log.warning("drift: %s", "; ".join(str(c) for c in drift))
        if self.config.drift.heal:
            await self._finish(await self._converge(spec), drift=drift)
        elif [c.to_json() for c in drift] != known:
            state: State = "converged" if self.status["state"] == "converged" else "failed"
            await self._report(
                state, checks=[Check("drift", False, f"{len(drift)} change(s)")], drift=drift
            )

    # --- start-up -----------------------------------------------------------------------

    def _cached(self) -> dict[str, Document]:
        docs = {}
        for key, doc in self.cache.load().items():
            if key not in self.desired.keys:
                continue
            try:
                verify(doc, self.desired.trusted)
            except InvalidDocument as exc:
                log.warning("cached %s no longer verifies: %s", key, exc.message)
                continue
            docs[key] = doc
        return docs

    async def startup(self) -> None:
        """Without the broker: finish an interrupted apply, then re-apply the cached state."""
        async with self._lock:
            try:
                reverted = await recover_host(self.host)
            except BootstrapError as exc:
                log.error("recovery failed: %s", exc.message)
                reverted = None
            if reverted:
                log.warning("reverted an interrupted apply: %s", ", ".join(reverted))
            docs = self._cached()
            if not docs:
                return
            self.desired.commit(docs)
            try:
                spec = effective_spec(self.desired.ordered())
            except InvalidDocument as exc:
                log.error("cached documents do not merge: %s", exc.message)
                return
            log.info("re-applying last known good: %s", json.dumps(self.desired.versions()))
            outcome = await self._converge(spec)
            await self._finish(outcome)

    # --- the whole ----------------------------------------------------------------------

    def _install_signals(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, self._stop.set)

    async def run(self) -> int:
        """0 when the host ends converged (``once``) or on a clean stop; 1 otherwise."""
        self._install_signals()
        sd_notify("STATUS=starting")
        await self.startup()
        sd_notify("READY=1", f"STATUS={self.status['state']}")
        tasks = [
            asyncio.create_task(self.session.run(), name="mqtt-session"),
            asyncio.create_task(self._publish_events(), name="events"),
        ]
        if not self.once:
            tasks.append(asyncio.create_task(self._converge_loop(), name="converge"))
            tasks.append(asyncio.create_task(self._drift_loop(), name="drift"))
        try:
            if self.once:
                main = asyncio.create_task(self._once(), name="once")
                stop = asyncio.create_task(self._stop.wait(), name="stop")
                await asyncio.wait({main, stop}, return_when=asyncio.FIRST_COMPLETED)
                stop.cancel()
                ok = main.done() and not main.cancelled() and main.result()
                main.cancel()
                await self._drain_events()
                return 0 if ok else 1
            stopper = asyncio.create_task(self._stop.wait(), name="stop")
            done, _ = await asyncio.wait({stopper, *tasks}, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                if task is not stopper and task.exception() is not None:
                    raise task.exception()  # type: ignore[misc]
            sd_notify("STOPPING=1")
            async with self._lock:
                await self._report("offline")
            return 0
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _drain_events(self) -> None:
        """Let queued progress events go out before a ``once`` run disconnects."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(2.0):
                await self._events.join()


def run_agent(config: AgentConfig, *, once: bool = False, wait: float = 60.0) -> int:
    async def main() -> int:
        return await Agent(config, once=once, wait=wait).run()

    return asyncio.run(main())
