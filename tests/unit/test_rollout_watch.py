"""Waiting for statuses ends even when the watcher will not stop on SIGTERM.

Debian's ``mosquitto_sub`` can deadlock in its own SIGTERM handler (it disconnects from
inside the handler, waiting for a mutex the interrupted loop holds): a rollout's wait hung
on one for 12 minutes in CI. The stand-in here ignores SIGTERM outright."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from typing import Any, cast

from simulator.rollout import BrokerHandle, _statuses

STUBBORN = "import signal, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\ntime.sleep(600)\n"


class _Broker:
    def __init__(self) -> None:
        self.proc: subprocess.Popen[str] | None = None

    def watch(self) -> subprocess.Popen[str]:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", STUBBORN], stdout=subprocess.PIPE, text=True
        )
        return self.proc


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
