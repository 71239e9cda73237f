"""The small programs the checks run inside host namespaces; run by path, stdlib only.

They are started as ``python .../helper.py ...`` (not ``-m``), so they import neither our
packages nor pydantic/pyroute2: in a TCG VM an interpreter with those imports takes many
seconds to start, and the checks start dozens of these.

    helper.py listen PORT...                 hold listening sockets until SIGTERM
    helper.py probe ADDR PORT...             JSON {port: open?} of TCP connects to ADDR
    helper.py send IFACE TOKEN SENDER VLAN...  scapy: tagged marker frames on IFACE
"""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import sys

ETHERTYPE = 0x88B5  # IEEE local experimental


def marker(token: str, sender: str, vlan: int) -> bytes:
    return f"CSBSIM:{token}:{sender}:{vlan}:".encode()


def listen(ports: list[int]) -> None:
    socks = []
    for p in ports:
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("0.0.0.0", p))
        s.listen(64)  # the kernel completes handshakes; nobody needs to accept
        socks.append(s)
    print("ready", flush=True)
    while True:  # until SIGTERM
        signal.pause()


async def probe(addr: str, ports: list[int], timeout: float = 1.5) -> dict[str, bool]:
    sem = asyncio.Semaphore(128)

    async def one(port: int, wait: float) -> bool:
        async with sem:
            try:
                _r, w = await asyncio.wait_for(asyncio.open_connection(addr, port), wait)
            except (OSError, TimeoutError):
                return False
            w.close()
            return True

    got = dict(zip(ports, await asyncio.gather(*(one(p, timeout) for p in ports)), strict=True))
    # a busy machine can miss a handshake: ask once more, slowly, before calling it closed
    again = [p for p, ok in got.items() if not ok]
    retry = await asyncio.gather(*(one(p, 3 * timeout) for p in again))
    got.update(zip(again, retry, strict=True))
    return {str(p): ok for p, ok in got.items()}


def send(iface: str, token: str, sender: str, vlans: list[int]) -> None:
    from scapy.layers.l2 import Dot1Q, Ether
    from scapy.packet import Raw
    from scapy.sendrecv import sendp

    frames = [
        Ether(dst="ff:ff:ff:ff:ff:ff", src="02:cb:00:00:00:01")
        / Dot1Q(vlan=v, type=ETHERTYPE)
        / Raw(marker(token, sender, v) + b"\0" * 32)
        for v in vlans
    ]
    sendp(frames * 3, iface=iface, verbose=False, inter=0.05)


def main(argv: list[str]) -> int:
    match argv:
        case ["listen", *ports]:
            listen([int(p) for p in ports])
        case ["probe", addr, *ports]:
            print(json.dumps(asyncio.run(probe(addr, [int(p) for p in ports]))))
        case ["send", iface, token, sender, *vlans]:
            send(iface, token, sender, [int(v) for v in vlans])
        case _:
            print(__doc__, file=sys.stderr)
            return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
