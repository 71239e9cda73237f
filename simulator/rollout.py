"""The fleet's broker and the rollout through it: credentials, ACLs, publish, wait.

The real mosquitto runs in the broker namespace with one user per host and the ACL that
``csboot broker-acl`` writes (bootstrap.fleet.acl): a host reads its roles' and its own
desired documents and writes only its own status and events.
The simulator's own client (``sim``) publishes and watches from inside the broker namespace
with mosquitto_pub/mosquitto_sub, so nothing leaves the run's namespaces.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import selectors
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from bootstrap.fleet.acl import Account, Inventory, acl_text
from bootstrap.wire.jsonguard import load_bounded
from bootstrap.wire.status import MAX_DEPTH, MAX_STATUS_BYTES
from simulator.broker import Mosquitto
from simulator.hosts import PREFIX
from simulator.namespaces import Namespace
from simulator.nets import Broker, Layout

__all__ = ["ADMIN", "BrokerHandle", "attach_broker", "inventory", "start_broker", "wait_converged"]

ADMIN = "sim"
TERMINAL = ("failed", "rolled_back", "rejected")


def inventory(layout: Layout, passwords: dict[str, str], admin_password: str) -> Inventory:
    """The fleet as ``csboot broker-acl`` sees it: each host with its roles, one operator."""
    hosts = tuple(Account(h.name, tuple(h.roles), passwords[h.name]) for h in layout.hosts)
    return Inventory(PREFIX, hosts, (Account(ADMIN, (), admin_password, operator=True),))


@dataclass(slots=True)
class BrokerHandle:
    ns: Namespace
    directory: Path
    address: str
    port: int
    admin_password: str
    passwords: dict[str, str] = field(default_factory=dict)
    mosquitto: Mosquitto | None = None

    @property
    def url(self) -> str:
        return f"mqtt://{self.address}:{self.port}"

    def _auth(self) -> list[str]:
        return ["-h", self.address, "-p", str(self.port), "-u", ADMIN, "-P", self.admin_password]

    def publish(self, messages: list[tuple[str, dict[str, Any]]]) -> None:
        """Publish retained, QoS 1, over ONE connection from inside the broker namespace.

        One connection makes a whole fleet's documents land within milliseconds, so an
        agent's debounce sees its host overlay and its roles together, never a role alone
        (one mosquitto_pub per document took seconds for 100 hosts, and agents applied the
        role without the overlay that picks their backend).
        """
        outbox = self.directory / "outbox.json"
        outbox.write_text(json.dumps([{"topic": t, "payload": p} for t, p in messages]))
        outbox.chmod(0o600)
        done = self.ns.run(
            [
                sys.executable,
                str(Path(__file__).with_name("publish.py")),
                self.address,
                str(self.port),
                ADMIN,
                self.admin_password,
                str(outbox),
            ],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        if done.returncode != 0:
            raise RuntimeError(f"publishing the documents failed: {done.stderr.strip()[-300:]}")

    def publish_documents(self, layout: Layout, prefix: str = PREFIX) -> None:
        """Host overlays first, then roles: whichever an agent sees first is never a role
        without the overlay that completes it."""
        messages = [(f"{prefix}/hosts/{h.name}/desired", h.host_doc) for h in layout.hosts]
        messages += [(f"{prefix}/roles/{n}/desired", d) for n, d in layout.role_docs.items()]
        self.publish(messages)

    def watch(self, prefix: str = PREFIX) -> subprocess.Popen[str]:
        """Every host's retained and live status, one ``topic hexpayload`` line each."""
        return self.ns.popen(
            [
                "mosquitto_sub",
                *self._auth(),
                "-q",
                "1",
                "-t",
                f"{prefix}/hosts/+/status",
                "-F",
                "%t %x",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            stdin=subprocess.DEVNULL,
            text=True,
        )

    def operator_config(self, prefix: str = PREFIX) -> Path:
        """A controller TOML (``csboot rollout|status -c``) for the operator ``sim``: the
        fleet tools then reach this broker exactly as an operator's machine would."""
        secret = self.directory / "operator.pass"
        secret.write_text(self.admin_password + "\n")
        secret.chmod(0o600)
        conf = self.directory / "operator.toml"
        roster = self.directory / "inventory.json"  # rollout membership (never statuses)
        listed = f'inventory = "{roster}"\n' if roster.exists() else ""
        conf.write_text(
            f'broker = "{self.url}"\nprefix = "{prefix}"\n{listed}'
            f'\n[auth]\nusername = "{ADMIN}"\npassword_file = "{secret}"\n'
        )
        return conf

    def stop(self) -> None:
        if self.mosquitto is not None:
            self.mosquitto.stop()


def start_broker(ns: Namespace, directory: Path, spec: Broker, layout: Layout) -> BrokerHandle:
    passwords = {h.name: secrets.token_urlsafe(12) for h in layout.hosts}
    admin = secrets.token_urlsafe(12)
    handle = BrokerHandle(ns, directory, str(spec.address.ip), spec.port, admin, passwords)
    directory.mkdir(parents=True, exist_ok=True)
    roster = {"prefix": PREFIX, "hosts": {h.name: {"roles": list(h.roles)} for h in layout.hosts}}
    (directory / "inventory.json").write_text(json.dumps(roster))
    handle.mosquitto = Mosquitto(
        directory,
        host=str(spec.address.ip),
        port=spec.port,
        users={ADMIN: admin, **passwords},
        acl=acl_text(inventory(layout, passwords, admin)),
        allow_anonymous=False,
        namespace=ns,
    ).start()
    return handle


def attach_broker(
    ns: Namespace, directory: Path, spec: Broker, _layout: Layout, admin_password: str
) -> BrokerHandle:
    """The broker of a run started by another process (``csboot-sim check``)."""
    return BrokerHandle(ns, directory, str(spec.address.ip), spec.port, admin_password)


def _expected(layout: Layout) -> dict[str, dict[str, Any]]:
    return {
        h.name: {
            "roles": {r: layout.role_docs[r]["version"] for r in h.roles},
            "host": h.host_doc["version"],
        }
        for h in layout.hosts
    }


def _converged(status: dict[str, Any], expected: dict[str, Any]) -> bool:
    applied = status.get("applied") or {}
    got = {"roles": applied.get("roles"), "host": applied.get("host")}
    return status.get("state") == "converged" and got == expected


def _statuses(
    broker: BrokerHandle, hosts: int, deadline: float, is_final: Callable[[str, Any], bool]
) -> Iterator[tuple[str, dict[str, Any]]]:
    """(host, status) as they arrive, until every host is final or the deadline passes."""
    proc = broker.watch()
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    sel = selectors.DefaultSelector()
    sel.register(fd, selectors.EVENT_READ)
    final: set[str] = set()
    pending = b""
    try:
        while len(final) < hosts and (left := deadline - time.monotonic()) > 0:
            # the pipe is read raw: a buffered readline() after select() can leave whole
            # lines in Python's buffer that select() no longer reports (a fleet that went
            # quiet with its last statuses unread waited out the deadline)
            if not sel.select(min(left, 1.0)):
                if proc.poll() is not None:
                    return
                continue
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                return
            *lines, pending = (pending + chunk).split(b"\n")
            for line in lines:
                topic, _, hexload = line.decode("ascii", "replace").strip().partition(" ")
                host = topic.split("/")[-2] if topic.count("/") >= 2 else ""
                try:  # a host's status is the wire's: bounded as the fleet tools bound it
                    status = load_bounded(
                        bytes.fromhex(hexload), max_bytes=MAX_STATUS_BYTES, max_depth=MAX_DEPTH
                    )
                except ValueError:
                    continue
                if not isinstance(status, dict):
                    continue
                yield host, status
                (final.add if is_final(host, status) else final.discard)(host)
                if len(final) >= hosts:
                    return
    finally:
        stop_watch(proc)


def stop_watch(proc: subprocess.Popen[Any]) -> None:
    """Stop a ``mosquitto_sub`` with SIGKILL. SIGTERM can deadlock it: its handler calls
    ``mosquitto_disconnect_v5``, which waits for the library's mutex that the interrupted
    loop already holds (seen in CI, 2026-12-05: a rollout's wait hung for 12 minutes on it).
    A watcher holds a clean session and only reads, so nothing is lost by killing it."""
    proc.kill()
    proc.wait()


def wait_connected(broker: BrokerHandle, layout: Layout, *, timeout: float) -> list[str]:
    """Until every host's agent is connected (it publishes its status on connecting);
    the hosts that did not within ``timeout``."""
    names = {h.name for h in layout.hosts}
    seen: set[str] = set()

    def is_final(host: str, status: dict[str, Any]) -> bool:
        return status.get("state") != "offline"

    for host, status in _statuses(broker, len(names), time.monotonic() + timeout, is_final):
        if is_final(host, status):
            seen.add(host)
    return sorted(names - seen)


def wait_converged(
    broker: BrokerHandle, layout: Layout, *, timeout: float, start: float
) -> list[dict[str, Any]]:
    """Rows (host, ok, state, detail, seconds) once every host converged, failed for good
    (failed, rolled_back, rejected: the agent retries only on new documents) or timed out."""
    expected = _expected(layout)
    last: dict[str, dict[str, Any]] = {}
    at: dict[str, float] = {}
    applying: dict[str, float] = {}  # when each host started applying, by its own clock
    wall0 = time.time() - (time.monotonic() - start)  # the publish, on the wall clock

    def is_final(host: str, status: dict[str, Any]) -> bool:
        return _converged(status, expected.get(host, {})) or status.get("state") in TERMINAL

    for host, status in _statuses(broker, len(expected), start + timeout, is_final):
        last[host] = status
        at[host] = time.monotonic() - start
        if status.get("state") == "applying" and host not in applying:
            # the status's own time: an agent busy applying sends it late (same machine)
            with contextlib.suppress(KeyError, ValueError):
                when = datetime.fromisoformat(str(status["at"]).replace("Z", "+00:00"))
                applying[host] = when.timestamp() - wall0
    rows = []
    for h in layout.hosts:
        st = last.get(h.name, {})
        ok = bool(st) and _converged(st, expected[h.name])
        if ok:
            detail = f"{len(st.get('changes') or [])} change(s)"
        elif not st:
            detail = f"no status within {timeout:g}s"
        else:
            err = st.get("error") or {}
            where = err.get("field") or err.get("resource") or ""
            msg = err.get("message") or f"applied {st.get('applied')} != {expected[h.name]}"
            detail = f"{where}: {msg}" if where else msg
        rows.append(
            {
                "host": h.name,
                "ok": ok,
                "state": st.get("state", "no status"),
                "detail": detail,
                "seconds": round(at.get(h.name, timeout), 2),
                "applying": round(applying[h.name], 2) if h.name in applying else None,
                "warnings": tuple(str(w) for w in st.get("warnings") or ()),
            }
        )
    return rows
