"""Full-kernel runs: one throwaway virtme-ng VM with Debian's generic kernel.

Some kernels (this project's CI among them) lack 8021q, bridge VLAN filtering and Open
vSwitch. Tests that need them run inside one VM booted by virtme-ng (``vng``) from Debian's
``linux-image-amd64``, which ships them as modules. The VM shares the host's root
filesystem read-only (over 9p), so the same venv and repository are used inside; only the
``rwdirs`` (and /run, /tmp, /var overlays that vanish with the VM) are writable, and only
the ``rwdirs`` come back. The command's exit code comes back through a file in such a dir,
so a VM that dies before the command ends is told apart from a failing command.

``python -m simulator.vm --pytest [PYTEST ARGS]`` runs ``pytest -m fullkernel`` in the VM
and exits with pytest's code; it prints ``SKIP: <why>`` and exits 0 only when no VM can
run at all here (no qemu, no vng, no Debian kernel with 8021q).
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Kernel", "find_kernel", "run_in_vm", "unavailable", "vng_argv"]

BOOT = Path("/boot")
MODULES = Path("/lib/modules")
#: the modules the full-kernel tests rely on, loaded before the command runs
GUEST_MODULES = ("8021q", "bridge", "veth", "tun")  # tun: OVS netdev internal ports
RC_FILE = "exit-code"


@dataclass(frozen=True, slots=True)
class Kernel:
    image: Path
    release: str


def _version_key(release: str) -> tuple[int, ...]:
    return tuple(int(n) for n in re.findall(r"\d+", release))


def find_kernel(boot: Path | None = None, modules: Path | None = None) -> Kernel | None:
    """The newest ``vmlinuz-*`` whose modules include 8021q (so not a stripped cloud kernel
    without them, nor a kernel whose modules are not installed)."""
    boot, modules = boot or BOOT, modules or MODULES
    found = []
    for image in boot.glob("vmlinuz-*"):
        release = image.name.removeprefix("vmlinuz-")
        if any((modules / release / "kernel" / "net" / "8021q").glob("8021q.ko*")):
            found.append(Kernel(image, release))
    return max(found, key=lambda k: _version_key(k.release), default=None)


def _bin_dirs() -> list[str]:
    """Where ``vng`` and its ``virtme-run`` live: next to this interpreter first."""
    return [str(Path(sys.executable).parent), *os.environ.get("PATH", "").split(os.pathsep)]


def _which(name: str) -> str | None:
    return shutil.which(name, path=os.pathsep.join(_bin_dirs()))


def unavailable() -> str | None:
    """Why no VM can run here, or None when one can."""
    if sys.platform != "linux":
        return "not Linux"
    if _which("qemu-system-x86_64") is None:
        return "qemu-system-x86_64 is not installed (Debian: qemu-system-x86)"
    if _which("vng") is None:
        return "virtme-ng is not installed (pip install virtme-ng)"
    if not any(_which(b) for b in ("busybox-static", "busybox.static", "busybox")):
        # the generic kernel has 9p as a module: virtme builds an initramfs with busybox
        return "busybox is not installed (Debian: busybox-static)"
    if find_kernel() is None:
        return (
            f"no kernel with 8021q under {BOOT} and {MODULES} "
            "(Debian: apt-get install linux-image-amd64)"
        )
    return None


def vng_argv(
    kernel: Kernel,
    script: Path,
    *,
    rwdirs: Sequence[Path],
    memory: str = "1G",
    cpus: int = 2,
    cwd: Path,
    kvm: bool = False,
) -> list[str]:
    """Pure: the ``vng`` command line that boots ``kernel`` and runs ``sh script``."""
    argv = ["vng", "--run", str(kernel.image), "--memory", memory, "--cpus", str(cpus)]
    if not kvm:
        argv.append("--disable-kvm")
    for rw in rwdirs:
        argv += ["--rwdir", str(rw)]
    return [*argv, "--cwd", str(cwd), "--exec", f"sh {shlex.quote(str(script))}"]


def guest_script(argv: Sequence[str], env: Mapping[str, str], outdir: Path) -> str:
    """Pure: the shell script the guest runs: modules, /run/netns, the command, its code."""
    lines = ["#!/bin/sh", "# written by simulator.vm; runs inside the VM"]
    lines += [f"modprobe {m} || echo 'vm: modprobe {m} failed' >&2" for m in GUEST_MODULES]
    # /run is a fresh tmpfs in the guest: named network namespaces can live there
    lines.append("mkdir -p /run/netns")
    exports = " ".join(f"{k}={shlex.quote(v)}" for k, v in sorted(env.items()))
    lines.append(f"export {exports}" if exports else ":")
    lines.append(shlex.join(argv))
    lines.append(f"echo $? > {shlex.quote(str(outdir / RC_FILE))}")
    return "\n".join(lines) + "\n"


def run_in_vm(
    argv: Sequence[str],
    *,
    rwdirs: Sequence[Path] = (),
    env: Mapping[str, str] | None = None,
    timeout: float = 600.0,
    memory: str = "1G",
    cpus: int = 2,
) -> int:
    """Boot one VM, run ``argv`` in it (cwd = ours), return its exit code.

    124: the VM did not finish within ``timeout``; 125: it ended without the command's
    exit code (kernel panic, init failure). The guest's console goes to our stdout.
    """
    kernel = find_kernel()
    if kernel is None:
        raise RuntimeError(unavailable() or "no kernel")
    with tempfile.TemporaryDirectory(prefix="csboot-vm-") as tmp:
        outdir = Path(tmp)
        script = outdir / "run.sh"
        guest_env = {"CSBOOT_FULLKERNEL": "1", "PYTHONDONTWRITEBYTECODE": "1", **(env or {})}
        if "PYTHONPATH" in os.environ:  # a worktree's code, not the venv's editable install
            guest_env.setdefault("PYTHONPATH", os.environ["PYTHONPATH"])
        script.write_text(guest_script(argv, guest_env, outdir))
        kvm = os.environ.get("CSBOOT_VM_KVM") == "1"  # /dev/kvm may exist and still fail
        cmd = vng_argv(
            kernel,
            script,
            rwdirs=[outdir, *rwdirs],
            memory=memory,
            cpus=cpus,
            cwd=Path.cwd(),
            kvm=kvm,
        )
        path = os.pathsep.join(_bin_dirs())
        proc = subprocess.Popen(
            cmd, env={**os.environ, "PATH": path}, stdin=subprocess.DEVNULL, start_new_session=True
        )
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # vng's own session: qemu and nothing else
            proc.wait()
            print(f"vm: no result after {timeout:g}s, stopped", file=sys.stderr)
            return 124
        rc_file = outdir / RC_FILE
        if not rc_file.exists():
            print(f"vm: ended without an exit code (vng exited {proc.returncode})", file=sys.stderr)
            return 125
        return int(rc_file.read_text().strip() or "125")


def _pytest(args: Sequence[str], *, timeout: float, memory: str, cpus: int) -> int:
    with tempfile.TemporaryDirectory(prefix="csboot-vm-results-") as tmp:
        junit = Path(tmp) / "junit.xml"
        argv = [
            sys.executable,
            "-m",
            "pytest",
            "-m",
            "fullkernel",
            "-p",
            "no:cacheprovider",
            f"--junitxml={junit}",
            "-o",
            "junit_family=xunit2",
            *args,
        ]
        started = time.monotonic()
        rc = run_in_vm(argv, rwdirs=[Path(tmp)], timeout=timeout, memory=memory, cpus=cpus)
        took = time.monotonic() - started
        summary = _junit_summary(junit)
        print(f"fullkernel: VM boot + run took {took:.0f}s, exit code {rc}")
        print(f"fullkernel: {summary}" if summary else "fullkernel: no junit report")
        if rc == 5:  # pytest: no tests collected: the lane ran nothing, say so
            print("fullkernel: no test ran", file=sys.stderr)
        return rc


def _junit_summary(junit: Path) -> str | None:
    """'N passed, N failed, N skipped' from pytest's junit report, read on the host side."""
    if not junit.exists():
        return None
    import xml.etree.ElementTree as ET

    suite = ET.parse(junit).getroot()
    if suite.tag == "testsuites":
        suite = suite[0]
    total, failed, errors, skipped = (
        int(suite.get(k, "0")) for k in ("tests", "failures", "errors", "skipped")
    )
    passed = total - failed - errors - skipped
    return f"{passed} passed, {failed + errors} failed, {skipped} skipped"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m simulator.vm", description="Run the full-kernel tests in one VM."
    )
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds (default 900)")
    parser.add_argument("--memory", default="1G")
    parser.add_argument("--cpus", type=int, default=min(2, os.cpu_count() or 1))
    parser.add_argument(
        "--pytest", nargs=argparse.REMAINDER, required=True, help="pytest arguments (the rest)"
    )
    args = parser.parse_args(argv)
    why = unavailable()
    if why is not None:
        print(f"SKIP: full-kernel lane: {why}")
        return 0
    return _pytest(args.pytest, timeout=args.timeout, memory=args.memory, cpus=args.cpus)


if __name__ == "__main__":
    sys.exit(main())
