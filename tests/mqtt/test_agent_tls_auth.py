"""TLS with a client certificate, and username/password: configuration, not code."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from simulator.broker import Mosquitto, TlsListener
from tests.mqtt.conftest import PREFIX, AgentProcess, Client, role_doc, write_config
from tests.pki import make_pki

pytestmark = pytest.mark.mqtt


@pytest.fixture
def secured(tmp_path: Path) -> Iterator[Mosquitto]:
    """No anonymous access: a password on the plain port, a client cert on the TLS port."""
    pki = make_pki(tmp_path / "pki")
    tls = TlsListener(
        cafile=pki / "ca.crt",
        certfile=pki / "broker.crt",
        keyfile=pki / "broker.key",
        use_identity_as_username=True,
    )
    with Mosquitto(
        tmp_path / "broker",
        tls=tls,
        users={"ops": "ops-pw", "pw1": "s3cret"},
        allow_anonymous=False,
    ) as mosq:
        yield mosq


def test_tls_client_cert_and_password_agents_both_converge(
    tmp_path: Path, secured: Mosquitto, agents: Callable[..., AgentProcess]
) -> None:
    pki = tmp_path / "pki"
    ops = Client(secured, ["-u", "ops", "-P", "ops-pw"])
    (tmp_path / "pw").write_text("s3cret\n")
    (tmp_path / "bad").write_text("wrong\n")
    roots = {h: tmp_path / h for h in ("tls1.lab", "pw1", "bad1")}
    for r in roots.values():
        r.mkdir()
    agents(
        write_config(
            tmp_path / "tls.toml",
            [secured.tls_url],
            roots["tls1.lab"],
            host="tls1.lab",
            tls={
                "ca": str(pki / "ca.crt"),
                "cert": str(pki / "tls1.lab.crt"),
                "key": str(pki / "tls1.lab.key"),
            },
        )
    )
    agents(
        write_config(
            tmp_path / "pw.toml",
            [secured.url],
            roots["pw1"],
            host="pw1",
            auth={"username": "pw1", "password_file": str(tmp_path / "pw")},
            allow_plaintext_auth=True,  # a test broker on 127.0.0.1
        )
    )
    bad = agents(
        write_config(
            tmp_path / "bad.toml",
            [secured.url],
            roots["bad1"],
            host="bad1",
            auth={"username": "pw1", "password_file": str(tmp_path / "bad")},
            allow_plaintext_auth=True,  # a test broker on 127.0.0.1
        )
    )

    ops.publish(f"{PREFIX}/roles/kvm/desired", role_doc(4, hypervisor="kvm"))
    for host in ("tls1.lab", "pw1"):
        status = ops.wait_status(lambda s: s["state"] == "converged", host=host)
        assert status["applied"]["roles"] == {"kvm": 4}
        props = roots[host] / "etc/cloudstack/agent/agent.properties"
        assert "hypervisor.type=kvm" in props.read_text()

    # a wrong password gets nowhere, and says so
    deadline = time.monotonic() + 5
    while "authori" not in bad.output().lower() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert "authori" in bad.output().lower(), bad.output()
    assert not (roots["bad1"] / "etc").exists()
    assert ops.status("bad1") is None
