"""What ``csboot check --cloudstack`` sees listening (libvirtd's port), in a namespace of its
own: sock_diag finds exactly the TCP listeners (IPv4 and IPv6), not a bound or connected
socket's port, and agrees with /proc/net/tcp, the fallback."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Callable, Iterator

import pytest

from bootstrap.host import cloudstack
from bootstrap.host.cloudstack import _listening, _listening_from_proc
from simulator.namespaces import Namespace

pytestmark = pytest.mark.root

NamespaceFactory = Callable[[str], Namespace]


def _no_fallback() -> frozenset[int]:
    raise AssertionError("sock_diag failed: /proc was read instead")


async def _from_a_coroutine() -> frozenset[int]:
    return _listening()


@contextlib.contextmanager
def sockets(ns: Namespace) -> Iterator[int]:
    """Listeners on 16509 (IPv4) and 16514 (IPv6), a socket bound to 22 that does not
    listen, and a client connected to 16509: yields the client's own port."""
    with contextlib.ExitStack() as stack, ns.inside():
        v4 = stack.enter_context(socket.socket())
        v4.bind(("0.0.0.0", 16509))
        v4.listen(1)
        v6 = stack.enter_context(socket.socket(socket.AF_INET6))
        v6.bind(("::", 16514))
        v6.listen(1)
        stack.enter_context(socket.socket()).bind(("127.0.0.1", 22))
        client = stack.enter_context(socket.create_connection(("127.0.0.1", 16509)))
        yield client.getsockname()[1]


def test_listeners_and_only_listeners(
    make_ns: NamespaceFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    ns = make_ns("listen")
    with sockets(ns) as client_port:
        with ns.inside():
            from_proc = _listening_from_proc()
            with monkeypatch.context() as m:  # sock_diag's answer, not the fallback's
                m.setattr(cloudstack, "_listening_from_proc", _no_fallback)
                found = _listening()
                in_loop = asyncio.run(_from_a_coroutine())  # as the agent asks, in its loop
        assert found == {16509, 16514}
        assert client_port not in found
        assert found == from_proc
        assert in_loop == found
    with ns.inside():
        assert _listening() == frozenset()  # closed: nothing listens any more
