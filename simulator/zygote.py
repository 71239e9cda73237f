"""The fleet's agents forked from one warm interpreter, as Android starts its apps.

Importing the agent (pydantic's models, pyroute2, paho, libsodium, every resource) costs
0.4 CPU-s, and a fleet of 100 paid it 100 times while coming up: 42 of the 59 CPU-s of
``up`` on two cores. The zygote pays it once: it imports what ``csboot agent`` loads,
freezes the heap (``gc.freeze``: a child's collector does not touch, so does not copy,
the shared pages) and then, per request, forks a child that enters the host's network
namespace, takes the host's environment and log, and runs the real entry point,
``bootstrap.cli.main(["agent", "-c", CONF])``. Each agent is still its own process in its
own namespace with its own configuration; only the cold start is skipped, and that is
measured on its own (``bench/agent_footprint.py``: start-up to READY from ``exec``).

The zygote lives in a namespace of the run (the broker's), so removing the run stops it
even after a crash. It auto-reaps its children; a child writes its exit code next to its
log before exiting, and :class:`Forked` watches it through a pidfd (Popen's interface,
for the simulator's start, stop and reboot).

Protocol on the zygote's stdin/stdout: one JSON request per line, ``{"netns": PATH,
"argv": [...], "env": {...}, "log": PATH}``; one line back, ``{"pid": N}`` or
``{"error": "..."}``, once the child is in its namespace with its environment and log
(or has died trying: its exit code says so, its log why).
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import json
import os
import select
import signal
import subprocess
import sys
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = ["Forked", "Zygote"]

CLONE_NEWNET = 0x40000000
PR_SET_NAME = 15
READY_WAIT = 120.0  # seconds for the imports (a loaded machine, the TCG VM's slow forks)


class Forked:
    """A forked agent, seen from the simulator (not its parent) through a pidfd.
    ``returncode``: the agent's exit code once it exited; -1 when a signal ended it (it
    wrote none)."""

    def __init__(self, pid: int, exit_file: Path) -> None:
        self.pid = pid
        self.returncode: int | None = None
        self._exit_file = exit_file
        try:
            self._fd: int | None = os.pidfd_open(pid)
        except ProcessLookupError:  # exited (and was reaped) before we looked
            self._fd = None
            self._read_code()

    def _read_code(self) -> None:
        try:  # the code the child wrote on its way out; a killed child wrote none
            self.returncode = int(self._exit_file.read_text())
        except (OSError, ValueError):
            self.returncode = -1

    def _exited(self, timeout: float | None) -> bool:
        if self._fd is None:
            return True
        ready, _, _ = select.select([self._fd], [], [], timeout)
        if not ready:
            return False
        os.close(self._fd)
        self._fd = None
        self._read_code()
        return True

    def poll(self) -> int | None:
        self._exited(0)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        if not self._exited(timeout):
            raise subprocess.TimeoutExpired(f"agent {self.pid}", timeout or 0)
        assert self.returncode is not None
        return self.returncode

    def send_signal(self, sig: int) -> None:
        if self._fd is not None:
            with contextlib.suppress(ProcessLookupError):
                signal.pidfd_send_signal(self._fd, sig)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def __del__(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)


class Zygote:
    """The warm interpreter, started in ``ns`` (a run namespace); :meth:`spawn` is thread-safe."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.proc = proc
        self._lock = threading.Lock()
        self._ready = False

    @classmethod
    def start(cls, argv_in_ns: Sequence[str]) -> Zygote:
        """Started in the run's namespace (``argv_in_ns``: ``Namespace.argv([])``); it warms
        up while the caller goes on, and the first :meth:`spawn` waits for it."""
        proc = subprocess.Popen(
            [*argv_in_ns, sys.executable, "-m", "simulator.zygote"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            bufsize=1,
        )
        return cls(proc)

    def _answer(self, timeout: float) -> dict[str, Any]:
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        line = self.proc.stdout.readline() if ready else ""
        if not line:
            code = self.proc.poll()
            if code is not None:
                return {"error": f"the zygote exited (code {code})"}
            return {"error": f"no answer within {timeout:g}s"}
        answer: dict[str, Any] = json.loads(line)
        return answer

    def spawn(self, netns: Path, argv: Sequence[str], env: Mapping[str, str], log: Path) -> Forked:
        request = {"netns": str(netns), "argv": list(argv), "env": dict(env), "log": str(log)}
        with self._lock:
            if not self._ready:
                ready = self._answer(READY_WAIT)
                if ready.get("ready") is not True:
                    raise RuntimeError(f"the agents' zygote did not start: {ready}")
                self._ready = True
            assert self.proc.stdin is not None
            self.proc.stdin.write(json.dumps(request) + "\n")
            self.proc.stdin.flush()
            answer = self._answer(30.0)
        if "pid" not in answer:
            raise RuntimeError(f"the agents' zygote could not fork {argv}: {answer}")
        return Forked(int(answer["pid"]), exit_file(log))

    def close(self) -> None:
        """Ends the zygote (its agents run on: they are stopped on their own)."""
        with contextlib.suppress(OSError):
            if self.proc.stdin is not None:
                self.proc.stdin.close()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()


def exit_file(log: Path) -> Path:
    return log.with_name(log.name + ".exit")


# --- inside the zygote ----------------------------------------------------------------------


def _warm() -> Any:
    """What ``csboot agent`` imports, before any fork (no thread, no event loop yet)."""
    import importlib

    import bootstrap.agent.daemon
    import bootstrap.cli
    from bootstrap.agent.worker import WARM
    from bootstrap.resources import MODULES

    for name in (*MODULES, *WARM):  # what the agents' workers import, forked from them
        with contextlib.suppress(ImportError):  # nftables: where libnftables is installed
            importlib.import_module(name)
    from bootstrap.engine.resource import prepare_adapters

    prepare_adapters()
    return bootstrap.cli.main


def _child(request: dict[str, Any], main: Any, ready: int) -> None:
    """In the fork: become the host's agent; never returns. Its stdin and stdout (the
    zygote's pipes) are replaced below, so the zygote alone holds them."""
    code = 1
    log = Path(request["log"])
    try:
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)  # the agent waits for its commands
        os.setsid()  # its own session, as under systemd: a terminal's ^C is the simulator's
        null = os.open(os.devnull, os.O_RDONLY)
        out = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        os.dup2(null, 0)
        os.dup2(out, 1)
        os.dup2(out, 2)  # from here on, whatever goes wrong is in the host's log
        os.close(null)
        os.close(out)
        libc = ctypes.CDLL(None, use_errno=True)
        # its name in ps/pgrep (a fork keeps the zygote's command line; comm is 15 bytes)
        comm = "-".join([Path(request["argv"][0]).name, *request["argv"][1:2]])[:15]
        libc.prctl(PR_SET_NAME, comm.encode(), 0, 0, 0)
        fd = os.open(request["netns"], os.O_RDONLY)
        if libc.setns(fd, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), f"setns {request['netns']}")
        os.close(fd)
        os.environ.clear()
        os.environ.update(request["env"])
        sys.argv = list(request["argv"])
        os.write(ready, b"1")
        os.close(ready)
        gc.enable()  # the frozen heap stays frozen: collecting it would copy every page
        try:
            code = int(main(sys.argv[1:]) or 0)
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
    except BaseException:
        import traceback

        traceback.print_exc()
    finally:
        with contextlib.suppress(BaseException):
            sys.stdout.flush()
            sys.stderr.flush()
        with contextlib.suppress(BaseException):
            exit_file(log).write_text(f"{code}\n")
        os._exit(code)


def serve() -> None:
    main = _warm()
    if threading.active_count() != 1:  # a fork copies one thread: nothing may run yet
        raise SystemExit(f"zygote: {threading.active_count()} threads after the imports")
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # children are reaped by the kernel
    requests = sys.stdin
    answers = sys.stdout
    gc.collect()
    gc.freeze()
    gc.disable()  # nothing in this loop makes cycles; children enable it again
    answers.write(json.dumps({"ready": True}) + "\n")
    answers.flush()
    for line in requests:
        try:
            request = json.loads(line)
            exit_file(Path(request["log"])).unlink(missing_ok=True)
            ready_r, ready_w = os.pipe()
            pid = os.fork()
        except Exception as exc:  # a bad request is answered, never the end of the zygote
            answers.write(json.dumps({"error": f"{type(exc).__name__}: {exc}"}) + "\n")
            answers.flush()
            continue
        if pid == 0:
            os.close(ready_r)
            _child(request, main, ready_w)
        os.close(ready_w)
        os.read(ready_r, 1)  # set up (or dead): the caller can look at it now
        os.close(ready_r)
        answers.write(json.dumps({"pid": pid}) + "\n")
        answers.flush()


if __name__ == "__main__":
    serve()
