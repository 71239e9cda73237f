"""Management-path probes: can the host still reach what it must reach?

As in kubernetes-nmstate, a probe only counts if it passed *before* the change, so a
blank host is never rolled back for a path it never had.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import os
import socket
import struct
import time
from dataclasses import dataclass
from typing import Protocol


class Probe(Protocol):
    @property
    def name(self) -> str: ...

    async def check(self) -> bool:
        """One attempt; True when the path works. Never raises for a network failure."""
        ...


@dataclass(frozen=True, slots=True)
class TcpProbe:
    """A TCP connect to ``host:port`` (the broker, an API)."""

    host: str
    port: int
    timeout: float = 1.0

    @property
    def name(self) -> str:
        return f"tcp {self.host}:{self.port}"

    async def check(self) -> bool:
        try:
            _, writer = await asyncio.wait_for(
                asyncio.open_connection(self.host, self.port), self.timeout
            )
        except (OSError, TimeoutError):
            return False
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
        return True


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total: int = sum(struct.unpack(f"!{len(data) // 2}H", data))
    total = (total >> 16) + (total & 0xFFFF)
    total += total >> 16
    return ~total & 0xFFFF


@dataclass(frozen=True, slots=True)
class IcmpProbe:
    """An ICMP echo (the gateway). Uses a raw socket: the agent runs as root."""

    address: str
    timeout: float = 1.0

    @property
    def name(self) -> str:
        return f"icmp {self.address}"

    async def check(self) -> bool:
        addr = ipaddress.ip_address(self.address)
        v6 = addr.version == 6
        family, proto, echo = (
            (socket.AF_INET6, socket.IPPROTO_ICMPV6, 128)
            if v6
            else (socket.AF_INET, socket.IPPROTO_ICMP, 8)
        )
        ident = os.getpid() & 0xFFFF
        seq = int(time.monotonic() * 1000) & 0xFFFF
        header = struct.pack("!BBHHH", echo, 0, 0, ident, seq)
        payload = b"csboot-probe"
        packet = header + payload
        if not v6:  # the kernel computes ICMPv6 checksums itself
            packet = struct.pack("!BBHHH", echo, 0, _checksum(packet), ident, seq) + payload
        try:
            sock = socket.socket(family, socket.SOCK_RAW, proto)
        except OSError:
            return False
        sock.setblocking(False)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout
        try:
            await loop.sock_sendto(sock, packet, (str(addr), 0))
            while (left := deadline - loop.time()) > 0:
                data = await asyncio.wait_for(loop.sock_recv(sock, 2048), left)
                icmp = data if v6 else data[(data[0] & 0x0F) * 4 :]
                if len(icmp) >= 8:
                    kind, _, _, rid, rseq = struct.unpack("!BBHHH", icmp[:8])
                    if kind == (129 if v6 else 0) and rid == ident and rseq == seq:
                        return True
        except (OSError, TimeoutError):
            return False
        finally:
            sock.close()
        return False


def probe_for(spec: str) -> Probe:
    """``--probe`` syntax: ``ADDR`` (ICMP) or ``HOST:PORT`` / ``[V6]:PORT`` (TCP)."""
    text = spec.strip()
    if text.startswith("["):
        host, _, port = text[1:].partition("]:")
        return TcpProbe(host, int(port))
    if text.count(":") == 1:
        host, port = text.split(":")
        return TcpProbe(host, int(port))
    ipaddress.ip_address(text)  # ValueError names the bad address
    return IcmpProbe(text)


async def wait_for_probe(probe: Probe, window: float, interval: float = 0.1) -> bool:
    """Retry ``probe`` until it passes or ``window`` seconds have gone."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + window
    while True:
        if await probe.check():
            return True
        if loop.time() + interval > deadline:
            return False
        await asyncio.sleep(interval)
