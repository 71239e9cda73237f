"""The post-apply ``libvirt-listening`` check follows ``libvirt.mode``, against real listeners.

The check's own edges, with listeners that stand in for libvirtd: ``openssl s_server``
asking for a client certificate as libvirtd's TLS socket does (mode tls, on tls_port), a
plain TCP server (mode tcp, on tcp_port). Each mode passes only against its own kind of
listener. test_libvirtd.py runs the check against a real libvirtd in both modes.
"""

from __future__ import annotations

import asyncio
import shutil
import socket
import subprocess
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from bootstrap.agent.checks import libvirt_listening
from bootstrap.model import validate_spec

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs openssl")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.fixture
def tls_server(tmp_path: Path) -> Iterator[int]:
    """openssl s_server on 127.0.0.1, demanding a client certificate (libvirtd's way)."""
    key, cert = tmp_path / "serverkey.pem", tmp_path / "servercert.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            str(key),
            "-out",
            str(cert),
            "-days",
            "1",
            "-subj",
            "/CN=kvm1",
        ],
        check=True,
        capture_output=True,
    )
    port = free_port()
    proc = subprocess.Popen(
        [
            "openssl",
            "s_server",
            "-quiet",
            "-accept",
            f"127.0.0.1:{port}",
            "-cert",
            str(cert),
            "-key",
            str(key),
            "-CAfile",
            str(cert),
            "-Verify",
            "1",
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        yield port
    finally:
        proc.terminate()
        proc.wait(10)


@asynccontextmanager
async def tcp_server() -> AsyncIterator[int]:
    async def hang_up(_r: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.close()

    server = await asyncio.start_server(hang_up, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        await server.wait_closed()


def test_tls_mode_passes_against_a_tls_listener(tls_server: int) -> None:
    check = asyncio.run(
        libvirt_listening(validate_spec({"libvirt": {"mode": "tls", "tls_port": tls_server}}), 10)
    )
    assert check.ok, check.detail
    assert check.detail == f"tls {tls_server}"


def test_tcp_mode_passes_against_a_tcp_listener() -> None:
    async def run() -> tuple[bool, str, int]:
        async with tcp_server() as port:
            check = await libvirt_listening(
                validate_spec({"libvirt": {"mode": "tcp", "tcp_port": port}}), 5
            )
            return check.ok, check.detail, port

    ok, detail, port = asyncio.run(run())
    assert ok and detail == f"tcp {port}"


def test_tls_mode_fails_against_plain_tcp_and_nothing() -> None:
    async def run() -> tuple[bool, str]:
        async with tcp_server() as port:
            check = await libvirt_listening(
                validate_spec({"libvirt": {"mode": "tls", "tls_port": port}}), 0.5
            )
            return check.ok, check.detail

    ok, detail = asyncio.run(run())
    assert not ok and "not TLS" in detail
    nothing = asyncio.run(
        libvirt_listening(validate_spec({"libvirt": {"mode": "tls", "tls_port": free_port()}}), 0.3)
    )
    assert not nothing.ok and "nothing listens" in nothing.detail


def test_tcp_mode_fails_when_only_tls_listens(tls_server: int) -> None:
    # the TLS listener is up (the tls check says so) but nothing listens on tcp_port
    up = asyncio.run(
        libvirt_listening(validate_spec({"libvirt": {"mode": "tls", "tls_port": tls_server}}), 10)
    )
    assert up.ok
    check = asyncio.run(
        libvirt_listening(validate_spec({"libvirt": {"mode": "tcp", "tcp_port": free_port()}}), 0.3)
    )
    assert not check.ok and check.detail.endswith("nothing listens")
