"""The full-kernel VM runner's pure parts: kernel choice, command lines, the report."""

from __future__ import annotations

from pathlib import Path

import pytest

from simulator import vm


def fake_kernel(boot: Path, modules: Path, release: str, *, vlan: bool = True) -> None:
    boot.mkdir(exist_ok=True)
    (boot / f"vmlinuz-{release}").write_bytes(b"")
    net = modules / release / "kernel" / "net"
    (net / "bridge").mkdir(parents=True)
    (net / "bridge" / "bridge.ko").write_bytes(b"")
    if vlan:
        (net / "8021q").mkdir()
        (net / "8021q" / "8021q.ko.xz").write_bytes(b"")


def test_newest_kernel_with_8021q_is_chosen(tmp_path: Path) -> None:
    boot, modules = tmp_path / "boot", tmp_path / "modules"
    assert vm.find_kernel(boot, modules) is None
    fake_kernel(boot, modules, "6.1.0-9-amd64")
    fake_kernel(boot, modules, "6.1.0-56-amd64")
    fake_kernel(boot, modules, "6.12.0-1-cloud-amd64", vlan=False)  # no 8021q: never chosen
    (boot / "vmlinuz-6.13.0-1-amd64").write_bytes(b"")  # modules not installed
    kernel = vm.find_kernel(boot, modules)
    assert kernel == vm.Kernel(boot / "vmlinuz-6.1.0-56-amd64", "6.1.0-56-amd64")


def test_vng_command_line(tmp_path: Path) -> None:
    kernel = vm.Kernel(Path("/boot/vmlinuz-6.1.0-56-amd64"), "6.1.0-56-amd64")
    argv = vm.vng_argv(kernel, tmp_path / "run.sh", rwdirs=[tmp_path], cwd=Path("/src"))
    assert argv[:3] == ["vng", "--run", "/boot/vmlinuz-6.1.0-56-amd64"]
    assert "--disable-kvm" in argv
    assert argv[argv.index("--rwdir") + 1] == str(tmp_path)
    assert argv[argv.index("--cwd") + 1] == "/src"
    assert argv[-2:] == ["--exec", f"sh {tmp_path / 'run.sh'}"]
    assert "--disable-kvm" not in vm.vng_argv(kernel, tmp_path, rwdirs=[], cwd=tmp_path, kvm=True)


def test_guest_script_loads_modules_and_records_the_exit_code(tmp_path: Path) -> None:
    script = vm.guest_script(["pytest", "-k", "a b"], {"CSBOOT_FULLKERNEL": "1"}, tmp_path)
    lines = script.splitlines()
    assert "modprobe 8021q || echo 'vm: modprobe 8021q failed' >&2" in lines
    assert "mkdir -p /run/netns" in lines
    assert "export CSBOOT_FULLKERNEL=1" in lines
    assert lines[-2:] == ["pytest -k 'a b'", f"echo $? > {tmp_path / vm.RC_FILE}"]


def test_junit_summary(tmp_path: Path) -> None:
    junit = tmp_path / "junit.xml"
    assert vm._junit_summary(junit) is None
    junit.write_text(
        '<testsuites><testsuite name="pytest" tests="6" failures="1" errors="1" skipped="1">'
        "</testsuite></testsuites>"
    )
    assert vm._junit_summary(junit) == "3 passed, 2 failed, 1 skipped"


def test_no_kernel_means_skip_with_a_reason(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(vm, "BOOT", tmp_path)
    why = vm.unavailable()
    assert why is not None
    assert vm.main(["--pytest", "tests/fullkernel"]) == 0
    assert capsys.readouterr().out.startswith("SKIP: full-kernel lane: ")
