"""The hand-off: CloudStack adds a host we converged in TLS mode; its setup rewrites files we
wrote. The agent neither reports that as drift nor writes it back, and its next start
converges without error (issue 14's must-show)."""

from __future__ import annotations

import signal
from collections.abc import Callable
from pathlib import Path

import pytest

from simulator.broker import Mosquitto
from tests.mqtt.conftest import PREFIX, AgentProcess, Client, role_doc, write_config
from tests.setupagent import SOCKETS, setup_agent_secure

pytestmark = pytest.mark.mqtt

ROLE = {
    "hypervisor": "kvm",
    "libvirt": {"mode": "tls", "tcp_port": 16600},
    "agent": {"properties": {"host": "192.168.42.10", "zone": "1", "pod": "1", "cluster": "1"}},
}


def debian_libvirt_root(root: Path) -> None:
    """Files as Debian's libvirt-daemon-system leaves them, socket units included."""
    (root / "etc/libvirt").mkdir(parents=True)
    (root / "etc/libvirt/libvirtd.conf").write_text("#listen_tls = 0\n#listen_tcp = 1\n")
    (root / "etc/libvirt/qemu.conf").write_text('#vnc_listen = "0.0.0.0"\n')
    (root / "etc/default").mkdir()
    (root / "etc/default/libvirtd").write_text('# options for libvirtd\nLIBVIRTD_ARGS=""\n')
    units = root / "lib/systemd/system"
    units.mkdir(parents=True)
    for unit in (*SOCKETS, "libvirtd.service"):
        (units / unit).write_text("[Unit]\n")
    (root / "etc/cloudstack/agent").mkdir(parents=True)
    (root / "etc/cloudstack/agent/agent.properties").write_text("workers=5\n")


def files(root: Path) -> dict[str, str]:
    out = {}
    for p in sorted(root.rglob("*")):
        rel = str(p.relative_to(root))
        if rel.startswith("var/lib/cloudstack-bootstrap") or p.name.endswith(".csboot.bak"):
            continue
        if p.is_symlink():
            out[rel] = "-> " + str(p.readlink())
        elif p.is_file():
            out[rel] = p.read_text()
    return out


def test_setup_agent_edits_are_not_drift_and_survive_a_restart(
    tmp_path: Path,
    broker: Mosquitto,
    client: Client,
    root: Path,
    agents: Callable[..., AgentProcess],
) -> None:
    debian_libvirt_root(root)
    config = write_config(
        tmp_path / "agent.toml", [broker.url], root, drift={"interval": 0.3, "heal": True}
    )
    first = agents(config)
    client.publish(f"{PREFIX}/roles/kvm/desired", role_doc(1, **ROLE))
    client.wait_status(lambda s: s["state"] == "converged")

    conf = (root / "etc/libvirt/libvirtd.conf").read_text()
    assert "listen_tls = 1" in conf and "listen_tcp = 0" in conf and 'tls_port = "16514"' in conf
    assert 'tcp_port = "16600"' in conf
    for unit in SOCKETS:  # masked as cloudstack-setup-agent masks them
        assert str((root / "etc/systemd/system" / unit).readlink()) == "/dev/null"
    assert 'LIBVIRTD_ARGS="--listen"' in (root / "etc/default/libvirtd").read_text()
    assert 'remote_mode = "legacy"' in (root / "etc/libvirt/libvirt.conf").read_text()
    assert "host=192.168.42.10" in (root / "etc/cloudstack/agent/agent.properties").read_text()

    # CloudStack adds the host; in the same breath an operator flips a key that stays ours
    setup_agent_secure(root)
    path = root / "etc/libvirt/libvirtd.conf"
    path.write_text(path.read_text().replace("mdns_adv = 0", "mdns_adv = 1"))
    edited = files(root)

    # heal is on: the drift round that heals mdns_adv finds nothing else
    status = client.wait_status(lambda s: bool(s.get("drift")))
    assert [(d["resource"], d["detail"]) for d in status["drift"]] == [
        ("file/etc/libvirt/libvirtd.conf", "mdns_adv: 1 -> 0")
    ]
    client.wait_status(lambda s: s.get("drift") is None and s["state"] == "converged")
    after_heal = files(root)
    healed = dict(after_heal)
    assert healed.pop("etc/libvirt/libvirtd.conf") == edited.pop(
        "etc/libvirt/libvirtd.conf"
    ).replace("mdns_adv = 1", "mdns_adv = 0")
    assert healed == edited  # agent.properties, qemu.conf, the defaults file, masks: untouched
    props = (root / "etc/cloudstack/agent/agent.properties").read_text()
    assert "host=10.1.1.5" in props and "guid=f1d2c3b4" in props

    # the agent's next start re-applies its last known good state: nothing to change
    assert first.kill(signal.SIGTERM) == 0
    offline = client.wait_status(lambda s: s["state"] == "offline")
    agents(config)
    restarted = client.wait_status(
        lambda s: s["state"] == "converged" and s["at"] != offline["at"], timeout=20
    )
    assert restarted["error"] is None and restarted["changes"] == []
    assert files(root) == after_heal
