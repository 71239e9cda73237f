"""A real mosquitto per test or simulated fleet, in its own directory (never the system one).

``Mosquitto(dir)`` writes ``dir/mosquitto.conf`` (plain listener on a free port, optional
TLS listener with client certificates, optional password file and ACL, persistence in
``dir``), starts it (optionally inside a :class:`Namespace`), and waits until it accepts
connections. Started as root it keeps root (``user root``), unless ``drop_privileges``:
then, as a stock install does, it drops to user ``mosquitto`` and must read its files as
that user. ``include_dir`` loads a snippet (``csboot broker-acl``'s) that defines the
listener itself. ``restart()`` keeps the ports and the persistence file, so retained messages
and persistent sessions survive, as on a real broker restart.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import signal
import socket
import subprocess
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from simulator.namespaces import Namespace

MOSQUITTO = "/usr/sbin/mosquitto"
BROKER_USER = "mosquitto"  # what a stock mosquitto started as root drops to


@dataclass(frozen=True, slots=True)
class TlsListener:
    """A TLS listener; ``require_certificate`` makes clients present a cert signed by ``cafile``."""

    cafile: Path
    certfile: Path
    keyfile: Path
    port: int | None = None
    require_certificate: bool = True
    use_identity_as_username: bool = False


class BrokerError(RuntimeError):
    pass


def free_port(host: str = "127.0.0.1") -> int:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


class Mosquitto:
    """One broker process with its config, password file, ACL and persistence in ``directory``."""

    def __init__(
        self,
        directory: Path,
        *,
        host: str = "127.0.0.1",
        port: int | None = None,
        tls: TlsListener | None = None,
        users: Mapping[str, str] | None = None,
        acl: str | None = None,
        allow_anonymous: bool | None = None,
        namespace: Namespace | None = None,
        drop_privileges: bool = False,
        include_dir: Path | None = None,
    ) -> None:
        self.directory = directory
        self.drop_privileges = drop_privileges
        self.include_dir = include_dir
        self.host = host
        self.namespace = namespace
        self.users = dict(users or {})
        self.acl = acl
        self.allow_anonymous = (not self.users) if allow_anonymous is None else allow_anonymous
        with self._inside():
            self.port = port or free_port(host)
            tls_port = (tls.port or free_port(host)) if tls else None
        self.tls = tls
        self.tls_port = tls_port
        self.process: subprocess.Popen[bytes] | None = None

    # --- configuration (pure text) ------------------------------------------------------

    @property
    def conf_path(self) -> Path:
        return self.directory / "mosquitto.conf"

    @property
    def log_path(self) -> Path:
        return self.directory / "mosquitto.log"

    def config_text(self) -> str:
        d = self.directory
        lines = [
            "# written by simulator.broker; one broker per directory",
            "per_listener_settings false",
            f"allow_anonymous {'true' if self.allow_anonymous else 'false'}",
            "persistence true",
            f"persistence_location {d}/",
            "persistence_file mosquitto.db",
            "autosave_interval 1",
            f"log_dest file {self.log_path}",
            "log_type error",
            "log_type warning",
            "log_type notice",
            "log_type information",
            "connection_messages true",
            "persistent_client_expiration 1d",
        ]
        if os.geteuid() == 0 and not self.drop_privileges:
            lines.append("user root")  # keep access to our own directory
        if self.users:
            lines.append(f"password_file {d / 'passwd'}")
        if self.acl is not None:
            lines.append(f"acl_file {d / 'acl'}")
        if self.include_dir is not None:  # the snippet defines the listener (on self.port)
            lines.append(f"include_dir {self.include_dir}")
        else:
            lines += ["", f"listener {self.port} {self.host}"]
        if self.tls is not None:
            t = self.tls
            lines += [
                "",
                f"listener {self.tls_port} {self.host}",
                f"cafile {t.cafile}",
                f"certfile {t.certfile}",
                f"keyfile {t.keyfile}",
                f"require_certificate {'true' if t.require_certificate else 'false'}",
                f"use_identity_as_username {'true' if t.use_identity_as_username else 'false'}",
            ]
        return "\n".join(lines) + "\n"

    def _write_files(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        self.conf_path.write_text(self.config_text())
        if self.users:
            passwd = self.directory / "passwd"
            passwd.write_text("".join(f"{u}:{p}\n" for u, p in self.users.items()))
            passwd.chmod(0o600)
            # hash the plain entries in place (mosquitto's own PBKDF2-SHA512 format)
            subprocess.run(["mosquitto_passwd", "-U", str(passwd)], check=True, capture_output=True)
        if self.acl is not None:
            (self.directory / "acl").write_text(self.acl)
            (self.directory / "acl").chmod(0o600)
        if self.drop_privileges:
            self._hand_over()

    def _hand_over(self) -> None:
        """The broker's own user owns its directory (persistence, log) and reads our files."""
        try:
            user = pwd.getpwnam(BROKER_USER)
        except KeyError:
            raise BrokerError(f"no user {BROKER_USER!r} (Debian's mosquitto creates it)") from None
        os.chown(self.directory, user.pw_uid, user.pw_gid)
        for name in ("passwd", "acl"):
            path = self.directory / name
            if path.exists():
                os.chown(path, 0, user.pw_gid)
                path.chmod(0o640)

    # --- process --------------------------------------------------------------------------

    @contextlib.contextmanager
    def _inside(self) -> Iterator[None]:
        if self.namespace is None:
            yield
        else:
            with self.namespace.entered():
                yield

    @property
    def url(self) -> str:
        return f"mqtt://{self.host}:{self.port}"

    @property
    def tls_url(self) -> str:
        if self.tls_port is None:
            raise BrokerError("this broker has no TLS listener")
        return f"mqtts://{self.host}:{self.tls_port}"

    def uid(self) -> int:
        """The user id the broker process runs as now (from /proc)."""
        assert self.process is not None
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("Uid:"):
                return int(line.split()[1])
        raise BrokerError("no Uid line in /proc/PID/status")

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self, timeout: float = 10.0) -> Mosquitto:
        if self.running:
            return self
        self._write_files()
        argv = [MOSQUITTO, "-c", str(self.conf_path)]
        kwargs = {"stdout": subprocess.DEVNULL, "stderr": subprocess.PIPE}
        if self.namespace is None:
            self.process = subprocess.Popen(argv, **kwargs)  # type: ignore[call-overload]
        else:
            self.process = self.namespace.popen(argv, **kwargs)
        self.wait_ready(timeout)
        return self

    def _accepts(self, port: int) -> bool:
        with self._inside():
            try:
                with socket.create_connection((self.host, port), timeout=0.5):
                    return True
            except OSError:
                return False

    def wait_ready(self, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        ports = [self.port] + ([self.tls_port] if self.tls_port else [])
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                err = self.process.stderr.read().decode() if self.process.stderr else ""
                log = self.log_path.read_text() if self.log_path.exists() else ""
                raise BrokerError(f"mosquitto exited ({self.process.returncode}): {err}{log}")
            if all(self._accepts(p) for p in ports):
                return
            time.sleep(0.05)
        self.stop()
        raise BrokerError(f"mosquitto did not accept connections on {ports} in {timeout}s")

    def stop(self, timeout: float = 5.0) -> None:
        """SIGTERM (mosquitto saves its persistence file), SIGKILL if it lingers."""
        proc = self.process
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if proc.stderr:
            proc.stderr.close()
        self.process = None

    def restart(self, *, down_for: float = 0.0) -> None:
        """Same ports, same persistence: retained messages and sessions survive."""
        self.stop()
        if down_for:
            time.sleep(down_for)
        self.start()

    def __enter__(self) -> Mosquitto:
        return self.start()

    def __exit__(
        self, _t: type[BaseException] | None, _e: BaseException | None, _tb: TracebackType | None
    ) -> None:
        self.stop()
