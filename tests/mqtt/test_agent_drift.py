"""Drift: a hand-edited managed file is reported in the status, and healed when configured."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from simulator.broker import Mosquitto
from tests.mqtt.conftest import PREFIX, AgentProcess, Client, role_doc, write_config

pytestmark = pytest.mark.mqtt

PROPS = Path("etc/cloudstack/agent/agent.properties")


@pytest.mark.parametrize("heal", [False, True])
def test_drift_is_reported_or_healed(  # noqa: PLR0917
    tmp_path: Path,
    broker: Mosquitto,
    client: Client,
    root: Path,
    agents: Callable[..., AgentProcess],
    heal: bool,
) -> None:
    agents(
        write_config(
            tmp_path / "agent.toml", [broker.url], root, drift={"interval": 0.5, "heal": heal}
        )
    )
    client.publish(f"{PREFIX}/roles/kvm/desired", role_doc(1, hypervisor="kvm"))
    client.wait_status(lambda s: s["state"] == "converged")
    props = root / PROPS
    props.write_text(props.read_text().replace("hypervisor.type=kvm", "hypervisor.type=lxc"))

    status = client.wait_status(lambda s: bool(s.get("drift")))
    assert status["state"] == "converged"
    assert [d["resource"] for d in status["drift"]] == [
        "file/etc/cloudstack/agent/agent.properties"
    ]
    if heal:
        assert status["changes"] and "hypervisor.type=kvm" in props.read_text()
        # healed: the next round finds nothing and says so
        client.wait_status(lambda s: s.get("drift") is None and s["state"] == "converged")
    else:
        assert status["checks"] == [{"name": "drift", "ok": False, "detail": "1 change(s)"}]
        assert "hypervisor.type=lxc" in props.read_text()
