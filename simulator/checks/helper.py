"""The small programs the checks run inside host namespaces; run by path, stdlib only.

They are started as ``python -I -S .../helper.py ...`` (not ``-m``), so they import neither
our packages nor pydantic/pyroute2, nor even ``site`` (a third of the CPU: 12 ms a start
against 35 on this machine): in a TCG VM an interpreter with those imports takes many
seconds to start, and the checks start one of these per host.

    helper.py listen PORT...                 hold listening sockets until SIGTERM

The probes themselves run in the simulator's own process (:mod:`simulator.checks.prober`);
``ETHERTYPE`` and ``marker`` are the isolation check's frame format.
"""

from __future__ import annotations

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


def main(argv: list[str]) -> int:
    match argv:
        case ["listen", *ports]:
            listen([int(p) for p in ports])
        case _:
            print(__doc__, file=sys.stderr)
            return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
