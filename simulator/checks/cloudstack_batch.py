"""``csboot check --cloudstack`` for many hosts from one process: enter each host's
namespace in turn and run the same checks the CLI runs (``run_cloudstack_checks``).

    python -m simulator.checks.cloudstack_batch NETNS ROOT PORT [NETNS ROOT PORT ...]

One interpreter start and one import of the engine for a batch of hosts, instead of one
``csboot`` process per host (100 of them cost more than every other check together on two
cores). The process is single-threaded when it enters a namespace, so what it opens there
(netlink, nftables, ``/proc/net/tcp``, the stand-in listener) belongs to that host. PORT
is libvirtd.conf's TCP port, held by a stand-in listener while the host is checked (0: no
listener). Prints one JSON line per host: ``{"ns": ..., "checks": [...]}`` or
``{"ns": ..., "error": ...}``.
"""

from __future__ import annotations

import asyncio
import json
import socket
import sys
from pathlib import Path

from bootstrap.errors import BootstrapError
from bootstrap.host.cloudstack import run_cloudstack_checks
from bootstrap.host.root import HostRoot
from simulator.checks.helper import enter


def check_one(netns: str, root: str, port: int) -> dict[str, object]:
    enter(netns)
    listener = None
    if port:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("0.0.0.0", port))
        listener.listen(8)
    try:
        checks = asyncio.run(run_cloudstack_checks(HostRoot(Path(root))))
        return {"ns": netns, "checks": [c.to_json() for c in checks]}
    except (BootstrapError, OSError) as exc:
        return {"ns": netns, "error": f"{type(exc).__name__}: {exc}"}
    finally:
        if listener is not None:
            listener.close()


def main(argv: list[str]) -> int:
    if not argv or len(argv) % 3:
        print(__doc__, file=sys.stderr)
        return 2
    for i in range(0, len(argv), 3):
        print(json.dumps(check_one(argv[i], argv[i + 1], int(argv[i + 2]))), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
