"""The host daemon: desired documents in, converged host and status documents out.

Start-up runs before any broker is needed: finish an interrupted apply (the journal's
recovery) and re-apply the last known good documents. Whatever touches the host runs in
a worker forked per job (:mod:`bootstrap.agent.worker`), so the engine is not held
between applies. Then the agent, an async context manager,
runs its named tasks in one :class:`asyncio.TaskGroup`: the MQTT session (itself an async
context manager over the same group), the event publisher, the converge loop and the
drift loop.

Rules that keep it alive whatever arrives:

- intake (:meth:`Agent._on_message`) never takes the host lock and never raises: it
  sorts a payload into a pending document or a rejection and wakes the converge loop;
- only *accepted* documents start or extend the debounce, and a burst that brought every
  document the host reads ends it at once; rejections (invalid, replayed,
  stale) are reported from the converge loop between applies, at most one status per
  ``reject_interval`` (the rest are counted in the event), so a replay storm can
  neither hold a valid document nor flood the broker;
- every loop survives every exception but its own cancellation; a converge that raises
  ends as ``failed`` (the transaction has reverted whatever it changed).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import logging
import signal
from collections.abc import Coroutine, Mapping, Sequence
from types import TracebackType
from typing import Any, cast

from bootstrap.agent import worker
from bootstrap.agent.cache import LastKnownGood
from bootstrap.agent.config import AgentConfig
from bootstrap.agent.desired import Desired, Rejection
from bootstrap.agent.notify import sd_notify
from bootstrap.agent.session import Session
from bootstrap.agent.status import State, encode, now, status_document
from bootstrap.agent.topics import Topics
from bootstrap.agent.worker import Job, Result, Worker
from bootstrap.engine.check import Check
from bootstrap.engine.resource import Change
from bootstrap.errors import InternalError, InvalidDocument, clip
from bootstrap.host.root import HostRoot
from bootstrap.model.document import Document, effective_spec
from bootstrap.model.spec import Spec

log = logging.getLogger(__name__)
ROLES_WAIT = 10  # debounces a burst may wait for the roles' documents (see _roles_arrive)
SETTLE_MAX = 10.0  # a burst of accepted documents holds the apply at most this long
STOP_REPORT = 5.0  # a stop waits this long at most for the broker to take our ``offline``


class Agent:
    """One host's agent. ``once``: converge what the broker holds, report, and return.

    ``async with Agent(config) as agent`` starts its tasks; leaving the block cancels them
    (an apply in progress reverts first).
    """

    def __init__(self, config: AgentConfig, *, once: bool = False, wait: float = 60.0) -> None:
        self.config = config
        self.once = once
        self.wait = wait
        self.host = HostRoot(config.root)
        self.topics = Topics(config.prefix, config.host, config.roles)
        self.desired = Desired(
            config.roles,
            config.host,
            config.trusted(),
            prefix=config.prefix,
            max_bytes=config.max_payload,
        )
        self.cache = LastKnownGood(self.host)
        self.worker = Worker(str(config.root))  # forked early by accepted documents
        self.warnings = config.warnings()
        self.plan_warnings: list[str] = []  # what the last plan could not do (e.g. persist)
        self.status = self._status("starting")
        self.applies = 0
        self.rejections = 0
        self._lock = asyncio.Lock()
        self._attention = asyncio.Event()  # accepted documents or rejections to report
        self._fresh = False  # accepted documents since the last apply started
        self._last_accept = 0.0
        self._rejected: collections.deque[Rejection] = collections.deque(maxlen=64)
        self._suppressed = 0
        self._next_reject_report = 0.0
        self._reject_timer: asyncio.TimerHandle | None = None
        self._stop = asyncio.Event()
        self._events: asyncio.Queue[dict[str, Any]] = asyncio.Queue(maxsize=100)
        self._group: asyncio.TaskGroup | None = None
        self._tasks: dict[str, asyncio.Task[Any]] = {}
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
            host=self.config.host,
            state=state,
            applied=self.desired.versions(),
            warnings=[*self.warnings, *self.plan_warnings, *self._waiting()],
            **kwargs,
        )

    def _waiting(self) -> list[str]:
        """What an accepted burst waits for: the roles the host lists that have no document."""
        if not self.desired.pending:
            return []
        return [
            f"waiting for {key}: the host lists it and no document for it has arrived; "
            "nothing is applied until it does"
            for key in self.desired.roles_missing()
        ]

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
            try:
                payload = json.dumps(item, default=str).encode()
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
            except Exception:
                log.exception("event not published")
            finally:
                self._events.task_done()

    # --- MQTT callbacks: intake, outside the host lock -----------------------------------

    async def _on_connect(self) -> None:
        """Re-assert our status: the will may have said ``offline`` meanwhile."""
        await self.session.publish(self.topics.status, encode(self.status), retain=True)

    async def _on_message(self, topic: str, payload: bytes) -> None:
        """Total and lock-free: sort the payload, wake the converge loop if it matters."""
        key = self.topics.key_of(topic)
        if key is None:
            return
        try:
            result = self.desired.offer(key, payload)
        except Exception as exc:  # offer is total; belt and braces
            log.exception("intake failed on %s", key)
            result = Rejection(key, None, InvalidDocument(type(exc).__name__, field=""))
        if isinstance(result, Rejection):
            self.rejections += 1
            if len(self._rejected) == self._rejected.maxlen:
                self._suppressed += 1
            self._rejected.append(result)
            self._attention.set()
        elif result is not None:
            log.info("received %s v%d", key, result.version)
            self._event("received", {"document": key, "version": result.version})
            self._fresh = True
            self._last_accept = asyncio.get_running_loop().time()
            self._attention.set()
            self._prepare_worker()

    def _prepare_worker(self) -> None:
        """Fork the next apply's worker now: it imports the engine while the burst settles,
        so the apply does not wait for it. Best effort: ``_converge`` forks one anyway."""
        try:
            self.worker.spawn()
        except OSError as exc:
            log.warning("cannot start the agent's worker yet: %s", exc)

    # --- rejections, reported from the converge loop -------------------------------------

    def _rejection_due(self) -> None:
        self._reject_timer = None
        self._attention.set()

    async def _report_rejections(self, *, now_: bool = False) -> None:
        """One status for what was rejected since the last one, at most every
        ``reject_interval``; an invalid document outranks a replay."""
        if not self._rejected:
            return
        loop = asyncio.get_running_loop()
        wait = self._next_reject_report - loop.time()
        if wait > 0 and not now_:
            if self._reject_timer is None:  # one wake-up, however many refusals wait for it
                self._reject_timer = loop.call_later(wait, self._rejection_due)
            return
        batch = list(self._rejected)
        self._rejected.clear()
        suppressed = self._suppressed + len(batch) - 1
        self._suppressed = 0
        invalid = [r for r in batch if not r.replay]
        shown = (invalid or batch)[-1]
        self._next_reject_report = loop.time() + self.config.reject_interval
        self._event(
            "rejected",
            {
                "document": shown.key,
                "reason": shown.describe(),
                "field": shown.field,
                "suppressed": suppressed,
            },
        )
        error = shown.error.to_json()
        error["message"] = clip(shown.describe())
        error["field"] = shown.field
        if suppressed:
            error["suppressed"] = suppressed
        async with self._lock:
            if shown.replay:
                # nothing changed on the host: keep the last outcome's checks
                await self._report(
                    "stale",
                    error=error,
                    checks=[Check(**c) for c in self.status.get("checks") or []],
                )
            else:
                await self._report("rejected", error=error)

    # --- converging ---------------------------------------------------------------------

    def _job(self, kind: worker.Kind, spec: Spec | None = None) -> Job:
        broker = self.session.broker or self.config.brokers[0]
        return Job(
            kind,
            str(self.config.root),
            spec=None if spec is None else spec.model_dump(mode="json"),
            probes=[(broker.host, broker.port)],  # a converge must not cut us off
            rollback_window=self.config.rollback_window,
            checks=self.config.enabled_checks,
        )

    async def _converge(self, spec: Spec) -> Result:
        """One transaction, in a worker; any failure ends as ``failed`` (the engine
        reverted, or the journal did: a dead worker's apply is recovered here)."""
        self.applies += 1
        try:
            outcome = await self.worker.run(self._job("converge", spec), self._event)
        except OSError as exc:  # no worker (out of processes or memory): nothing was applied
            log.error("cannot start the agent's worker: %s", exc)
            error = InternalError(f"cannot start a worker: {exc}", resource="agent")
            return Result("failed", error=error.to_json())
        except Exception as exc:  # a bug on our side of the pipe: still a failed outcome
            log.exception("the worker's job failed")
            error = InternalError(f"{type(exc).__name__}: {exc}", resource="agent")
            return Result("failed", error=error.to_json())
        if outcome.died:
            log.error("%s", (outcome.error or {}).get("message"))
            await self._recover()  # the journal reverts what the dead worker left
        else:
            self.plan_warnings = outcome.warnings
        return outcome

    async def _settle(self) -> None:
        """Until no document was accepted for ``debounce`` (rejections do not count), at
        most :data:`SETTLE_MAX`; at once when the burst is complete (every document the
        host reads is pending: a first boot, a rollout of the roles and the overlay
        together), as nothing the debounce waits for is left to come."""
        loop = asyncio.get_running_loop()
        limit = loop.time() + max(SETTLE_MAX, self.config.debounce)
        while not self.desired.complete():
            left = min(self._last_accept + self.config.debounce, limit) - loop.time()
            if left <= 0:
                return
            # woken by the next document (it may complete the burst) or by a refusal,
            # reported right after this wait
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._attention.wait(), left)
            self._attention.clear()

    async def _apply_pending(self) -> bool | None:
        """Converge in-force + pending; None when nothing was pending."""
        async with self._lock:
            self._fresh = False
            if not self.desired.pending:
                return None
            docs = self.desired.candidate()
            try:
                spec = effective_spec(self.desired.ordered(docs))
            except InvalidDocument as exc:
                # the combination is invalid: keep the pending ones parked for a fix
                self.rejections += 1
                await self.worker.dismiss()
                await self._report("rejected", error=exc)
                return False
            targets = ", ".join(f"{k} v{d.version}" for k, d in docs.items())
            await self._report("applying")
            self._event("applying", {"documents": self.desired.versions(docs)})
            log.info("applying %s", targets)
            outcome = await self._converge(spec)
            if outcome.ok:
                self.desired.commit(docs)
                self._save(self.cache.save, self.desired.in_force)
            else:
                self.desired.fail(docs)
                self._save(self.cache.save_failed, self.desired.failed)
            await self._finish(outcome)
            if self.desired.pending and not self.once:
                # arrived during the apply: applied next (the loop comes back here)
                self._fresh = True
                self._attention.set()
            if outcome.ok and not self.once:
                # progress events still queued go out on this connection first (a publish
                # cut by the reconnect would be sent again: a duplicate), then the will
                # is renewed to name the versions now in force
                await self._drain_events()
                self.session.renew()
            return outcome.ok

    @staticmethod
    def _save(save: Any, data: Any) -> None:
        try:
            save(data)
        except OSError as exc:
            log.error("cannot write the agent's state: %s", exc)

    async def _finish(self, outcome: Result, drift: Sequence[Change] | None = None) -> None:
        self._event("done", {"state": outcome.state, "changes": len(outcome.changes)})
        await self._report(
            cast(State, outcome.state),  # a converge's: one of the transaction's states
            changes=outcome.changes,
            checks=outcome.checks,
            error=outcome.error,
            drift=drift,
        )

    async def _converge_step(self, *, now_: bool = False) -> bool | None:
        """Report rejections, then apply what was accepted (after it settled)."""
        await self._report_rejections(now_=now_)
        if not self._fresh:
            return None
        await self._settle()
        await self._roles_arrive()
        # what was refused before this apply is reported before it, never after its outcome
        await self._report_rejections(now_=True)
        if self.desired.roles_missing():
            # never the overlay without its roles: the burst stays pending, ``_fresh`` stays
            # set, and the role's document, when it comes, brings the loop back here (and
            # a worker with it: none is kept waiting meanwhile)
            await self.worker.dismiss()
            async with self._lock:
                await self._report(self.status["state"], **self._kept())
            return None
        applied = await self._apply_pending()
        if not self.desired.pending:  # no apply left for a worker forked meanwhile
            await self.worker.dismiss()
        return applied

    def _kept(self) -> dict[str, Any]:
        """The last status's outcome fields, for a status that changes nothing on the host."""
        st = self.status
        kept: dict[str, Any] = {"error": st.get("error")}
        for name, kind in (("changes", Change), ("drift", Change), ("checks", Check)):
            if st.get(name) is not None:
                kept[name] = [kind(**item) for item in st[name]]
        return kept

    async def _roles_arrive(self) -> None:
        """A burst that brought the host overlay before every role's document: wait up to
        ``ROLES_WAIT`` debounces more for the roles before saying so. The broker sends
        retained documents one by one, and on a loaded machine they can come further apart
        than one debounce (a status per debounce would be noise)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + ROLES_WAIT * self.config.debounce
        while self.desired.roles_missing() and (left := deadline - loop.time()) > 0:
            try:
                await asyncio.wait_for(self._attention.wait(), left)
            except TimeoutError:
                return
            self._attention.clear()

    async def _converge_loop(self) -> None:
        while True:
            await self._attention.wait()
            self._attention.clear()
            try:
                await self._converge_step()
            except Exception as exc:  # the loop outlives every failure
                log.exception("converge loop")
                with contextlib.suppress(Exception):
                    error = InternalError(f"{type(exc).__name__}: {exc}", resource="agent")
                    await self._report("failed", error=error)

    async def _once(self) -> bool:
        """Until the first document set is dealt with, or ``wait`` runs out."""
        rejections = self.rejections
        try:
            async with asyncio.timeout(self.wait):
                await self.session.connected.wait()
                while True:
                    try:
                        async with asyncio.timeout(max(self.config.debounce, 1.0) + 1.0):
                            await self._attention.wait()
                    except TimeoutError:
                        if self.desired.in_force:  # the broker holds nothing newer
                            return bool(self.status["state"] == "converged")
                        continue
                    self._attention.clear()
                    result = await self._converge_step(now_=True)
                    if result is not None:
                        return result
                    if self.rejections != rejections:
                        return False
        except TimeoutError:
            missing = self.desired.roles_missing() if self.desired.pending else []
            what = f"no document for {', '.join(missing)}" if missing else "no desired state"
            error = {
                "code": "timeout",
                "message": f"{what} within {self.wait:g}s",
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
                except Exception:
                    log.exception("drift check failed")

    async def _check_drift(self) -> None:
        spec = effective_spec(self.desired.ordered())
        plan = await worker.run(self._job("plan", spec), self._event)
        if plan.error is not None:
            log.warning("drift check failed: %s", plan.error.get("message"))
            return
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
                self.desired.check(key, doc)
            except InvalidDocument as exc:
                log.warning("cached %s no longer verifies: %s", key, exc.message)
                continue
            docs[key] = doc
        return docs

    async def startup(self) -> None:
        """Without the broker: finish an interrupted apply, then re-apply the cached state."""
        for warning in self.warnings:
            log.warning("insecure setting: %s", warning)
        async with self._lock:
            if self.host.journal_path.exists():  # an apply was interrupted (or still ends)
                await self._recover()
            self.desired.failed = self.cache.load_failed()
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

    async def _recover(self) -> None:
        try:
            recovered = await worker.recover(str(self.config.root), self._event)
        except OSError as exc:
            recovered = Result("failed", error={"message": f"no worker: {exc}"})
        if recovered.error is not None:
            log.error("recovery failed: %s", recovered.error.get("message"))
        if recovered.reverted:
            log.warning("reverted an interrupted apply: %s", ", ".join(recovered.reverted))

    # --- the whole ----------------------------------------------------------------------

    def _spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> None:
        assert self._group is not None
        self._tasks[name] = self._group.create_task(coro, name=name)

    async def __aenter__(self) -> Agent:
        self._group = asyncio.TaskGroup()
        await self._group.__aenter__()
        await self.session.within(self._group).__aenter__()
        self._spawn(self._publish_events(), "events")
        if not self.once:
            self._spawn(self._converge_loop(), "converge")
            self._spawn(self._drift_loop(), "drift")
        return self

    async def _cancel(self, *names: str) -> None:
        """Cancel these tasks and wait for them (an apply reverts before it ends)."""
        tasks = [self._tasks.pop(n) for n in names if n in self._tasks]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._cancel(*list(self._tasks))
        await self.worker.dismiss()
        await self.session.__aexit__(exc_type, exc, tb)
        assert self._group is not None
        await self._group.__aexit__(exc_type, exc, tb)

    def _install_signals(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, self._stop.set)

    async def _until_stopped(self, work: Coroutine[Any, Any, bool]) -> bool | None:
        """``work``'s result, or None when a stop signal came first (``work`` is cancelled
        and awaited: an apply in progress reverts before this returns)."""
        main = asyncio.create_task(work, name="once")
        stop = asyncio.create_task(self._stop.wait(), name="stop")
        try:
            await asyncio.wait({main, stop}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop.cancel()
            if not main.done():
                main.cancel()
            await asyncio.gather(main, stop, return_exceptions=True)
        if main.cancelled():
            return None
        if main.exception() is not None:
            log.error("converge failed: %r", main.exception())
            return False
        return bool(main.result())

    async def _stopped(self) -> None:
        """SIGTERM: stop converging (reverting an apply in progress), say ``offline``."""
        sd_notify("STOPPING=1")
        await self._cancel("converge", "drift")
        async with self._lock:
            try:
                async with asyncio.timeout(STOP_REPORT):
                    await self._report("offline")
            except TimeoutError:  # a frozen broker: the will says it when the socket closes
                log.warning("the broker did not take our offline status within %gs", STOP_REPORT)

    async def run(self) -> int:
        """0 when the host ends converged (``once``) or on a clean stop; 1 otherwise."""
        self._install_signals()
        sd_notify("STATUS=starting")
        await self.startup()
        sd_notify("READY=1", f"STATUS={self.status['state']}")
        async with self:
            if self.once:
                ok = await self._until_stopped(self._once())
                if ok is None:
                    await self._stopped()
                await self._drain_events()
                return 0 if ok else 1
            await self._stop.wait()
            await self._stopped()
            return 0

    async def _drain_events(self) -> None:
        """Let queued progress events go out before a ``once`` run disconnects."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(2.0):
                await self._events.join()


def run_agent(config: AgentConfig, *, once: bool = False, wait: float = 60.0) -> int:
    async def main() -> int:
        return await Agent(config, once=once, wait=wait).run()

    return asyncio.run(main())
