"""simulator.broker.Mosquitto: persistence across restarts, passwords + ACLs, namespaces."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from simulator.broker import Mosquitto
from tests.conftest import NamespaceFactory
from tests.mqtt.conftest import Client

pytestmark = pytest.mark.mqtt


def test_restart_keeps_port_and_retained_messages(tmp_path: Path) -> None:
    with Mosquitto(tmp_path / "b") as mosq:
        client = Client(mosq)
        client.publish("a/b", {"v": 1})
        port = mosq.port
        mosq.restart()
        assert mosq.port == port and mosq.running
        assert client.retained("a/b") == {"v": 1}
    assert not mosq.running


def test_password_file_and_acl(tmp_path: Path) -> None:
    acl = (
        "user ops\ntopic readwrite #\n\n"
        "user kvm1\ntopic read p/roles/#\ntopic write p/hosts/kvm1/#\n"
    )
    with Mosquitto(tmp_path / "b", users={"ops": "o", "kvm1": "k"}, acl=acl) as mosq:
        assert "ops:$" in (tmp_path / "b/passwd").read_text()  # hashed, not plain
        ops = Client(mosq, ["-u", "ops", "-P", "o"])
        kvm1 = Client(mosq, ["-u", "kvm1", "-P", "k"])
        kvm1.publish("p/roles/kvm/desired", {"forged": True})  # denied by the ACL (dropped)
        kvm1.publish("p/hosts/kvm1/status", {"state": "converged"})
        assert ops.retained("p/roles/kvm/desired") is None
        assert ops.retained("p/hosts/kvm1/status") == {"state": "converged"}
        anon = subprocess.run(
            ["mosquitto_pub", "-p", str(mosq.port), "-t", "x", "-m", "1"],
            check=False,
            capture_output=True,
            text=True,
        )
        assert anon.returncode != 0 and "not authorised" in anon.stderr.lower()


@pytest.mark.root
@pytest.mark.netns
def test_runs_inside_a_namespace(tmp_path: Path, make_ns: NamespaceFactory) -> None:
    ns = make_ns("brk")
    with Mosquitto(tmp_path / "b", namespace=ns) as mosq:
        assert mosq.process is not None and mosq.process.pid in ns.pids()
        pub = ["mosquitto_pub", "-p", str(mosq.port), "-r", "-t", "in/ns", "-m", "hello"]
        ns.run(pub, capture_output=True)
        sub = ["mosquitto_sub", "-p", str(mosq.port), "-t", "in/ns", "-C", "1", "-W", "2"]
        assert ns.run(sub, capture_output=True, text=True, timeout=10).stdout.strip() == "hello"
        # the machine's own namespace cannot reach it
        outside = subprocess.run(sub, check=False, capture_output=True, text=True)
        assert outside.returncode != 0
