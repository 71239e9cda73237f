"""Bad documents are rejected with a reason; the host keeps what it had; nothing blocks."""

from __future__ import annotations

import base64
import json
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from bootstrap.model.signing import load_private_key, signed_bytes
from simulator.broker import Mosquitto
from tests.mqtt.conftest import CSBOOT, PREFIX, AgentProcess, Client, role_doc, write_config

pytestmark = pytest.mark.mqtt

ROLE_TOPIC = f"{PREFIX}/roles/kvm/desired"
PROPS = Path("etc/cloudstack/agent/agent.properties")


def signed(tmp_path: Path, doc: dict[str, Any], key: Path, key_id: str = "ops") -> dict[str, Any]:
    """Signed with ``csboot sign`` (the operator's tool)."""
    src = tmp_path / f"doc-{doc['version']}.json"
    src.write_text(json.dumps(doc))
    out = subprocess.run(
        [str(CSBOOT), "sign", "-k", str(key), "--key-id", key_id, str(src)],
        capture_output=True,
        text=True,
        check=True,
    )
    loaded: dict[str, Any] = json.loads(out.stdout)
    return loaded


def raw_signed(doc: dict[str, Any], key: Path, key_id: str = "ops") -> dict[str, Any]:
    """Signed without validation (``csboot sign`` refuses invalid documents)."""
    private = load_private_key(key.read_bytes())
    sig = base64.b64encode(private.sign(signed_bytes(doc, PREFIX)).signature).decode()
    return {**doc, "signature": {"keyId": key_id, "ed25519": sig}}


def snapshot(root: Path) -> dict[str, tuple[bytes, int]]:
    return {
        str(p.relative_to(root)): (p.read_bytes(), p.stat().st_mtime_ns)
        for p in sorted(root.rglob("*"))
        if p.is_file() and "var/lib" not in str(p)
    }


def test_rejections_name_the_reason_and_change_nothing(
    tmp_path: Path,
    broker: Mosquitto,
    client: Client,
    root: Path,
    agents: Callable[..., AgentProcess],
) -> None:
    key = tmp_path / "ops.key"
    out = subprocess.run(
        [str(CSBOOT), "keygen", "--out", str(key), "--key-id", "ops"],
        capture_output=True,
        text=True,
        check=True,
    )
    trusted = out.stdout.strip()
    assert trusted.startswith("ops:") and key.stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "ops.key.pub").read_text().strip() == trusted
    agent = agents(
        write_config(tmp_path / "agent.toml", [broker.url], root, trusted_keys=[trusted])
    )

    client.publish(ROLE_TOPIC, signed(tmp_path, role_doc(2, hypervisor="kvm"), key))
    good = client.wait_status(lambda s: s["state"] == "converged")
    assert good["applied"]["roles"] == {"kvm": 2}
    before = snapshot(root)
    assert "etc/cloudstack/agent/agent.properties" in before

    last_at = good["at"]

    def rejected(payload: str | dict[str, Any], state: str = "rejected") -> dict[str, Any]:
        nonlocal last_at
        client.publish(ROLE_TOPIC, payload)
        status = client.wait_status(lambda s: s["state"] == state and s["at"] != last_at)
        last_at = status["at"]
        assert status["applied"]["roles"] == {"kvm": 2}, status  # still what it had
        assert snapshot(root) == before  # not one byte, not one mtime
        error: dict[str, Any] = status["error"]
        return error

    error = rejected('{"apiVersion": "cloudstack-bootstrap/v1", "kind": ')
    assert error["code"] == "invalid" and "JSON" in error["message"]

    error = rejected(raw_signed(role_doc(3, libvirt={"tcp_port": 70000}), key))
    assert error["field"] == "spec.libvirt.tcp_port"

    error = rejected(raw_signed(role_doc(4, bogus=True), key))
    assert error["field"] == "spec.bogus"

    # a replay is not an invalid document: its own state, so rollouts do not count it
    error = rejected(signed(tmp_path, role_doc(1, hypervisor="lxc"), key), state="stale")
    assert error["code"] == "stale" and error["field"] == "version"
    assert "not newer" in error["message"]

    tampered = signed(tmp_path, role_doc(5, hypervisor="kvm"), key)
    tampered["spec"] = {"hypervisor": "lxc"}
    error = rejected(tampered)
    assert error["code"] == "signature" and error["field"] == "signature.ed25519"

    error = rejected(role_doc(6, hypervisor="lxc"))  # unsigned
    assert error["code"] == "signature" and error["field"] == "signature"

    other = tmp_path / "other.key"
    subprocess.run([str(CSBOOT), "keygen", "--out", str(other)], check=True, capture_output=True)
    error = rejected(signed(tmp_path, role_doc(7, hypervisor="lxc"), other, key_id="other"))
    assert error["code"] == "signature" and "not trusted" in error["message"]

    # none of that blocks a later valid document
    client.publish(ROLE_TOPIC, signed(tmp_path, role_doc(8, hypervisor="lxc"), key))
    status = client.wait_status(lambda s: s["state"] == "converged" and s["at"] != last_at)
    assert status["applied"]["roles"] == {"kvm": 8} and status["error"] is None
    assert "hypervisor.type=lxc" in (root / PROPS).read_text()
    assert agent.proc.poll() is None, agent.output()
