"""A private RabbitMQ with its MQTT plugin (Debian's ``rabbitmq-server``), per test.

Everything is its own: node name, ports on 127.0.0.1 (MQTT, AMQP, distribution, epmd),
``RABBITMQ_*`` directories under the test's directory, the Erlang cookie (``HOME``). The
system's ``/etc/rabbitmq`` settings are not read. ``epmd`` is started by us (bound to
127.0.0.1, on its own port) so that stopping it is ours too; the node runs as root from
``/usr/lib/rabbitmq/bin`` (the ``/usr/sbin`` wrapper would switch to user ``rabbitmq``,
which cannot enter a root-only temporary directory).
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from types import TracebackType

from simulator.broker import free_port

BIN = Path("/usr/lib/rabbitmq/bin")


def available() -> bool:
    return (BIN / "rabbitmq-server").exists() and shutil.which("epmd") is not None


class RabbitMQ:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.host = "127.0.0.1"
        self.port = free_port()
        self.node = f"csboot{secrets.token_hex(3)}@localhost"
        self._ports = {"amqp": free_port(), "dist": free_port(), "epmd": free_port()}
        self.process: subprocess.Popen[bytes] | None = None
        self.epmd: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"mqtt://{self.host}:{self.port}"

    @property
    def log(self) -> Path:
        return self.directory / "server.log"

    def env(self) -> dict[str, str]:
        d = self.directory
        return {
            **os.environ,
            "HOME": str(d),
            "RABBITMQ_NODENAME": self.node,
            "RABBITMQ_CONF_ENV_FILE": str(d / "rabbitmq-env.conf"),
            "RABBITMQ_CONFIG_FILE": str(d / "rabbitmq"),
            "RABBITMQ_ADVANCED_CONFIG_FILE": str(d / "advanced.config"),
            "RABBITMQ_MNESIA_BASE": str(d / "mnesia"),
            "RABBITMQ_LOG_BASE": str(d / "log"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(d / "enabled_plugins"),
            "RABBITMQ_PID_FILE": str(d / "rabbitmq.pid"),
            "RABBITMQ_NODE_IP_ADDRESS": self.host,
            "RABBITMQ_NODE_PORT": str(self._ports["amqp"]),
            "RABBITMQ_DIST_PORT": str(self._ports["dist"]),
            "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": "-kernel inet_dist_use_interface {127,0,0,1}",
            "ERL_EPMD_PORT": str(self._ports["epmd"]),
            "ERL_EPMD_ADDRESS": self.host,
        }

    def _write_files(self) -> None:
        d = self.directory
        d.mkdir(parents=True, exist_ok=True)
        (d / "rabbitmq-env.conf").write_text("")
        (d / "rabbitmq.conf").write_text(
            f"listeners.tcp.default = {self.host}:{self._ports['amqp']}\n"
            f"mqtt.listeners.tcp.default = {self.host}:{self.port}\n"
            "mqtt.allow_anonymous = true\n"
            "mqtt.default_user = guest\n"
            "mqtt.default_pass = guest\n"
        )

    def _accepts(self) -> bool:
        try:
            with socket.create_connection((self.host, self.port), timeout=0.5):
                return True
        except OSError:
            return False

    def start(self, timeout: float = 90.0) -> RabbitMQ:
        self._write_files()
        env = self.env()
        self.epmd = subprocess.Popen(
            ["epmd", "-address", self.host, "-port", str(self._ports["epmd"])],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        subprocess.run(
            [str(BIN / "rabbitmq-plugins"), "--offline", "enable", "rabbitmq_mqtt"],
            env=env,
            check=True,
            capture_output=True,
            timeout=60,
        )
        with self.log.open("wb") as sink:
            self.process = subprocess.Popen(
                [str(BIN / "rabbitmq-server")],
                env=env,
                stdout=sink,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: stopped whole
            )
        deadline = time.monotonic() + timeout
        while not self._accepts():
            if self.process.poll() is not None:
                raise RuntimeError(f"rabbitmq-server exited: {self.log.read_text()[-3000:]}")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"rabbitmq-server not ready: {self.log.read_text()[-3000:]}")
            time.sleep(0.2)
        return self

    def stop(self) -> None:
        proc, self.process = self.process, None
        if proc is not None and proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        epmd, self.epmd = self.epmd, None
        if epmd is not None:
            epmd.terminate()
            epmd.wait(10)

    def __enter__(self) -> RabbitMQ:
        return self.start()

    def __exit__(
        self, _t: type[BaseException] | None, _e: BaseException | None, _tb: TracebackType | None
    ) -> None:
        self.stop()
