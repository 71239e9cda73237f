"""The ports check's listeners, for many hosts from one small process; run by path, stdlib only.

    helper.py listen NETNS PORTS [NETNS PORTS ...]

PORTS is a comma list of ports and ranges (``22,1798,5900-6100``). The process enters each
namespace in turn (``setns``) and makes its listening sockets there: a socket stays in the
namespace it was made in, whichever namespace its process is in later. Nobody accepts:
for a listening socket the kernel answers a SYN with a SYN-ACK, which is all the prober's
SYNs ask. Prints ``ready`` once every socket is held and holds them until SIGTERM or until
its standard input closes (the simulator holds the other end: if the simulator dies, so
does this); a port it cannot take ends it at once with ``error NETNS: port N: REASON``
(status 1), so nothing is left half-held.

Why a process at all: a process holds only as many files as its limit (20,000 here, which
the simulator cannot raise without ``CAP_SYS_RESOURCE``), and 100 hosts' allowed ports are
27,100 sockets. So the check starts as few of these as the limit allows (two at 100 hosts),
each for a batch of hosts. They are started as ``python -I -S .../helper.py`` (not ``-m``):
no ``site``, none of our packages, 12 ms of CPU a start.
"""

from __future__ import annotations

import ctypes
import os
import socket
import sys

CLONE_NEWNET = 0x40000000
NETNS_DIR = "/var/run/netns"


def ports(spec: str) -> list[int]:
    out: list[int] = []
    for part in spec.split(","):
        first, _, last = part.partition("-")
        out += range(int(first), int(last or first) + 1)
    return out


def enter(netns: str) -> None:
    """This thread into the named network namespace (``ip netns``'s name)."""
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(os.path.join(NETNS_DIR, netns), os.O_RDONLY)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err))
    finally:
        os.close(fd)


def hold(netns: str, wanted: list[int], socks: list[socket.socket]) -> None:
    enter(netns)
    for port in wanted:
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        socks.append(s)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("0.0.0.0", port))
        except OSError as exc:
            raise OSError(exc.errno, f"port {port}: {exc.strerror}") from exc
        s.listen(64)


def listen(pairs: list[tuple[str, str]]) -> int:
    socks: list[socket.socket] = []
    for netns, spec in pairs:
        try:
            hold(netns, ports(spec), socks)
        except (OSError, ValueError) as exc:
            print(f"error {netns}: {exc.strerror if isinstance(exc, OSError) else exc}")
            return 1
    print("ready", flush=True)
    sys.stdin.buffer.read()  # until SIGTERM, or EOF: the simulator is gone
    return 0


def main(argv: list[str]) -> int:
    match argv:
        case ["listen", *rest] if rest and len(rest) % 2 == 0:
            return listen(list(zip(rest[::2], rest[1::2], strict=True)))
        case _:
            print(__doc__, file=sys.stderr)
            return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
