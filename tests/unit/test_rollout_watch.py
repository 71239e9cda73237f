"""Waiting for statuses ends even when the watcher will not stop on SIGTERM, and hostile
statuses are skipped, not fatal.

Debian's ``mosquitto_sub`` can deadlock in its own SIGTERM handler (it disconnects from
inside the handler, waiting for a mutex the interrupted loop holds): a rollout's wait hung
on one for 12 minutes in CI. The stand-in here ignores SIGTERM outright."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from typing import Any, cast

from simulator.rollout import BrokerHandle, _statuses

STUBBORN = "import signal, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\ntime.sleep(600)\n"


class _Broker:
    def __init__(self, lines: Sequence[str] = ()) -> None:
        self.proc: subprocess.Popen[str] | None = None
        self.lines = lines

    def watch(self) -> subprocess.Popen[str]:
        echo = "import sys\nsys.stdout.write(sys.stdin.read())\nsys.stdout.flush()\n"
        self.proc = subprocess.Popen(
            [sys.executable, "-c", echo + STUBBORN],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdin is not None
        self.proc.stdin.write("".join(f"{line}\n" for line in self.lines))
        self.proc.stdin.close()
        return self.proc


def _line(host: str, payload: bytes) -> str:
    return f"cloudstack/bootstrap/v1/hosts/{host}/status {payload.hex()}"


def test_a_watcher_deaf_to_sigterm_does_not_hang_the_wait() -> None:
    broker = _Broker()
    got: list[Any] = []
    wait = threading.Thread(
        target=lambda: got.extend(
            _statuses(cast(BrokerHandle, broker), 1, time.monotonic() + 0.5, lambda h, s: True)
        ),
        daemon=True,
    )
    try:
        wait.start()
        wait.join(20)
        assert not wait.is_alive(), "the wait hung on a watcher that ignores SIGTERM"
        assert got == []
        assert broker.proc is not None and broker.proc.returncode == -signal.SIGKILL
    finally:
        if broker.proc is not None and broker.proc.poll() is None:
            broker.proc.kill()
            broker.proc.wait()


def test_garbage_huge_and_deeply_nested_statuses_are_skipped() -> None:
    """What a hostile host could publish as its status never ends the wait early or
    raises out of it (``json.loads`` alone: a RecursionError); the good one still counts."""
    good = json.dumps({"host": "kvm1", "state": "converged"}).encode()
    broker = _Broker(
        [
            _line("kvm1", b"[" * 100_000 + b"]" * 100_000),
            _line("kvm1", b'{"a": ' + b"1" * 5000 + b"}"),
            _line("kvm1", b"\xff\xfe not json"),
            "cloudstack/bootstrap/v1/hosts/kvm1/status not-hex",
            _line("kvm1", b"[1, 2]"),
            _line("kvm1", b'{"x": "' + b"y" * (300 * 1024) + b'"}'),
            _line("kvm1", good),
        ]
    )
    try:
        got = list(
            _statuses(cast(BrokerHandle, broker), 1, time.monotonic() + 20, lambda h, s: True)
        )
        assert got == [("kvm1", {"host": "kvm1", "state": "converged"})]
    finally:
        if broker.proc is not None and broker.proc.poll() is None:
            broker.proc.kill()
            broker.proc.wait()
