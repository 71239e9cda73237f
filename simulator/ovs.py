"""Per-host Open vSwitch daemons: one ovsdb-server and one ovs-vswitchd inside a namespace.

Every file the daemons touch (database, sockets, pidfiles, logs) lives under the host's own
file root, and the OVS_* directories are pointed there too, so many simulated hosts (and a
switch) can run side by side on one machine without sharing anything. The database socket
is exactly ``HostRoot(root).ovsdb_socket``, which is where the OVS resource connects.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

from bootstrap.host.root import HostRoot
from simulator.namespaces import Namespace

__all__ = ["HOST_CONFIG", "SCHEMA", "OvsDaemons", "OvsError"]

SCHEMA = Path("/usr/share/openvswitch/vswitch.ovsschema")
_EMPTY_DB: list[bytes] = []  # ``ovsdb-tool create``'s output, made once per process
_EMPTY_DB_LOCK = threading.Lock()
_QUIET = ("-vconsole:off", "-vsyslog:off", "-vfile:info")
HOST_CONFIG = {"max-revalidator": "10000"}
"""A simulated host's vswitchd settings beyond the defaults (``Open_vSwitch`` ``other_config``,
which the product leaves alone). ``max-revalidator``: the longest it goes without walking
all its datapath flows, 10 s instead of 0.5 (as after any change of its flow tables, MAC
tables or ports, it still walks them at once; ``max-idle`` still expires idle flows). Every
walk wakes its main thread too: an idle configured vswitchd cost ~0.9 ms of CPU a second,
0.17 ms with this, and a hundred of them share two cores here, where a real host's has its
own (docs/benchmarks.md, 2026-12-07). The switch keeps the default."""


class OvsError(RuntimeError):
    """The daemons could not be started (the log tail says why)."""


@dataclass(slots=True)
class OvsDaemons:
    """``with OvsDaemons(root, ns) as ovs:`` runs a host's OVS for the block.

    The daemons serve both datapaths; bridges choose theirs (``datapath_type``). A kernel
    without the openvswitch module has only ``netdev`` (userspace, taps for internal ports).
    """

    root: Path
    ns: Namespace
    timeout: float = 10.0
    other_config: Mapping[str, str] = field(default_factory=dict)
    _procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    @property
    def host(self) -> HostRoot:
        return HostRoot(self.root)

    @property
    def rundir(self) -> Path:
        return self.host.path("/var/run/openvswitch")

    @property
    def logdir(self) -> Path:
        return self.host.path("/var/log/openvswitch")

    @property
    def dbdir(self) -> Path:
        return self.host.path("/etc/openvswitch")

    @property
    def db_file(self) -> Path:
        return self.dbdir / "conf.db"

    @property
    def socket(self) -> Path:
        return self.host.ovsdb_socket

    @property
    def remote(self) -> str:
        return f"unix:{self.socket}"

    def ctl(self, daemon: Literal["ovsdb-server", "ovs-vswitchd"]) -> Path:
        return self.rundir / f"{daemon}.ctl"

    def log(self, daemon: Literal["ovsdb-server", "ovs-vswitchd"]) -> Path:
        return self.logdir / f"{daemon}.log"

    @property
    def env(self) -> dict[str, str]:
        """The environment that keeps OVS tools on this host's directories."""
        return {
            **os.environ,
            "OVS_RUNDIR": str(self.rundir),
            "OVS_DBDIR": str(self.dbdir),
            "OVS_LOGDIR": str(self.logdir),
            "OVS_SYSCONFDIR": str(self.host.path("/etc")),
        }

    # -- lifecycle ------------------------------------------------------------------------

    def start(self) -> OvsDaemons:
        for tool in ("ovsdb-tool", "ovsdb-server", "ovs-vswitchd", "ovs-vsctl"):
            if shutil.which(tool) is None:
                raise OvsError(f"{tool} is not installed (Debian: openvswitch-switch)")
        for d in (self.rundir, self.logdir, self.dbdir):
            d.mkdir(parents=True, exist_ok=True)
        try:
            if not self.db_file.exists():
                self.db_file.write_bytes(self._empty_db())
            self._spawn(
                "ovsdb-server",
                str(self.db_file),
                f"--remote=punix:{self.socket}",
                f"--pidfile={self.rundir / 'ovsdb-server.pid'}",
                f"--unixctl={self.ctl('ovsdb-server')}",
                f"--log-file={self.log('ovsdb-server')}",
            )
            # the socket file appears a moment before ovsdb-server accepts on it
            self._wait_for(lambda: _accepts(self.socket), "ovsdb-server")
            self._spawn(
                "ovs-vswitchd",
                self.remote,
                f"--pidfile={self.rundir / 'ovs-vswitchd.pid'}",
                f"--unixctl={self.ctl('ovs-vswitchd')}",
                f"--log-file={self.log('ovs-vswitchd')}",
            )
            self._wait_for(lambda: self.ctl("ovs-vswitchd").exists(), "ovs-vswitchd")
            # Without --no-wait, ovs-vsctl returns only once vswitchd applied the database.
            settings = [f"other_config:{k}={v}" for k, v in self.other_config.items()]
            tune = ["--", "set", "Open_vSwitch", ".", *settings] if settings else []
            self.vsctl(f"--timeout={max(1, int(self.timeout))}", "init", *tune)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self, *, grace: float = 3.0) -> None:
        """vswitchd first (it holds the database), then ovsdb-server; SIGKILL after ``grace``."""
        for name in ("ovs-vswitchd", "ovsdb-server"):
            proc = self._procs.pop(name, None)
            if proc is None:
                continue
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(grace)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    @property
    def running(self) -> bool:
        return bool(self._procs) and all(p.poll() is None for p in self._procs.values())

    def __enter__(self) -> OvsDaemons:
        return self.start()

    def __exit__(
        self,
        _type: type[BaseException] | None,
        _exc: BaseException | None,
        _tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- tools against this host's database -----------------------------------------------

    def vsctl(self, *args: str, check: bool = True) -> str:
        """Run ``ovs-vsctl`` on this host's database (in its namespace); stdout."""
        done = self.ns.run(
            ["ovs-vsctl", f"--db={self.remote}", *args],
            check=False,
            capture_output=True,
            text=True,
            env=self.env,
            timeout=self.timeout + 5,
        )
        if check and done.returncode != 0:
            raise OvsError(f"ovs-vsctl {' '.join(args)}: {done.stderr.strip()}")
        out: str = done.stdout
        return out

    def ofctl(self, command: str, bridge: str, *args: str, stdin: str | None = None) -> str:
        """``ovs-ofctl COMMAND`` on one of this vswitchd's bridges (its management socket)."""
        done = subprocess.run(
            ["ovs-ofctl", command, f"unix:{self.rundir / bridge}.mgmt", *args],
            input=stdin,
            check=False,
            capture_output=True,
            text=True,
            env=self.env,
            timeout=self.timeout,
        )
        if done.returncode != 0:
            raise OvsError(f"ovs-ofctl {command} {bridge}: {done.stderr.strip()}")
        out: str = done.stdout
        return out

    def bundle(self, bridge: str, lines: Sequence[str]) -> None:
        """Flow mods and packet-outs, one per line (``ovs-ofctl`` syntax), sent to
        ``bridge`` as one OpenFlow 1.4 bundle: vswitchd executes them at its commit, in
        one go, or none if one is malformed."""
        if lines:
            self.ofctl("bundle", bridge, "-", "-O", "OpenFlow14", stdin="\n".join(lines) + "\n")

    def appctl(self, daemon: Literal["ovsdb-server", "ovs-vswitchd"], *args: str) -> str:
        done = subprocess.run(
            ["ovs-appctl", "-t", str(self.ctl(daemon)), *args],
            check=True,
            capture_output=True,
            text=True,
            env=self.env,
            timeout=self.timeout,
        )
        out: str = done.stdout
        return out

    # -- internals ------------------------------------------------------------------------

    def _tool(self, *argv: str) -> None:
        done = subprocess.run(argv, capture_output=True, text=True, env=self.env, check=False)
        if done.returncode != 0:
            raise OvsError(f"{' '.join(argv)}: {done.stderr.strip()}")

    def _spawn(self, name: str, *args: str) -> None:
        kwargs: dict[str, Any] = {
            "stdin": subprocess.DEVNULL,
            "stdout": subprocess.DEVNULL,
            "stderr": subprocess.DEVNULL,
            "env": self.env,
            "cwd": str(self.rundir),
        }
        self._procs[name] = self.ns.popen([name, *_QUIET, *args], **kwargs)

    def _empty_db(self) -> bytes:
        """A new database is the schema and nothing else, the same bytes for every host:
        ``ovsdb-tool create`` runs once (a process and the schema's parse, 73 ms a host
        when a hundred hosts come up), its file is copied after."""
        with _EMPTY_DB_LOCK:
            if not _EMPTY_DB:
                template = self.dbdir / ".empty.db"
                self._tool("ovsdb-tool", "create", str(template), str(SCHEMA))
                _EMPTY_DB.append(template.read_bytes())
                template.unlink()
            return _EMPTY_DB[0]

    def _wait_for(self, ready: Callable[[], bool], name: str) -> None:
        deadline = time.monotonic() + self.timeout
        proc = self._procs[name]
        while not ready():
            if proc.poll() is not None:
                raise OvsError(f"{name} exited ({proc.returncode}): {self._tail(name)}")
            if time.monotonic() > deadline:
                raise OvsError(f"{name} not ready after {self.timeout:g}s: {self._tail(name)}")
            time.sleep(0.02)

    def _tail(self, name: str) -> str:
        path = self.logdir / f"{name}.log"
        try:
            return " | ".join(path.read_text(errors="replace").splitlines()[-5:])
        except OSError:
            return "(no log)"


def _accepts(path: Path) -> bool:
    """True once something accepts connections on the unix socket ``path``."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        try:
            sock.connect(str(path))
        except OSError:
            return False
    return True
