"""What ``cloudstack-setup-agent -s`` does to a host's files when CloudStack adds it.

Written from apache/cloudstack python/lib/cloudutils/serviceConfig.py
(``configureLibvirtConfig(tls_enabled=True)``, ``libvirtConfigUbuntu.setupLiveMigration``
and ``config``, ``cloudAgentConfig.configAgent``) and scripts/util/keystore-setup: the same
keys and values, written as its ``configFileOps`` writes them (``key=value``, replacing an
existing line of that key, else appended). Used by the hand-off tests.
"""

from __future__ import annotations

import re
from pathlib import Path

LIBVIRTD_TLS = {
    "listen_tcp": "0",
    "listen_tls": "1",
    "key_file": '"/etc/pki/libvirt/private/serverkey.pem"',
    "cert_file": '"/etc/pki/libvirt/servercert.pem"',
    "ca_file": '"/etc/pki/CA/cacert.pem"',
    "tcp_port": '"16509"',
    "tls_port": '"16514"',
    "auth_tcp": '"none"',
    "auth_tls": '"none"',
}
QEMU = {"security_driver": '"none"', "user": '"root"', "group": '"root"'}
SOCKETS = (
    "libvirtd.socket",
    "libvirtd-ro.socket",
    "libvirtd-admin.socket",
    "libvirtd-tls.socket",
    "libvirtd-tcp.socket",
)
AGENT = {
    "host": "10.1.1.5",
    "zone": "3c7d3a35-2f0b-4f57-9f34-6b0e1ec1b7c2",
    "pod": "5c8f1e2a-1b9d-4a6e-8c3f-2d7e9a0b4c61",
    "cluster": "9e2b7c4d-3a1f-4e8b-b6d5-0c9a8f7e6d53",
    "hypervisor.type": "kvm",
    "port": "8250",
    "private.network.device": "cloudbr0",
    "public.network.device": "cloudbr0",
    "guest.network.device": "cloudbr1",
    "guid": "f1d2c3b4-a596-4788-99aa-bbccddeeff00",
    "local.storage.uuid": "0a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d",
    "resource": "com.cloud.hypervisor.kvm.resource.LibvirtComputingResource",
    "keystore.passphrase": "s3cr3tpassphrase",
}


def add_entries(path: Path, entries: dict[str, str]) -> None:
    """configFileOps.addEntry + save: each key's line replaced, or appended."""
    text = path.read_text() if path.exists() else ""
    for key, value in entries.items():
        line = f"{key}={value}"
        pattern = re.compile(rf"^[ \t]*{re.escape(key)}[ \t]*=.*$", re.MULTILINE)
        if pattern.search(text):
            text = pattern.sub(line, text)
        else:
            text += ("" if text.endswith("\n") or not text else "\n") + line + "\n"
    path.write_text(text)


def setup_agent_secure(root: Path) -> None:
    """The files ``cloudstack-setup-agent -s`` leaves on a Debian/Ubuntu host."""
    add_entries(root / "etc/libvirt/libvirtd.conf", LIBVIRTD_TLS)
    default = root / "etc/default/libvirtd"
    if default.exists():  # replace_or_add_line("libvirtd_opts=", "libvirtd_opts='-l'")
        add_entries(default, {"libvirtd_opts": "'-l'"})
    if (root / "lib/systemd/system/libvirtd.socket").exists():  # systemctl mask ...
        for unit in SOCKETS:
            link = root / "etc/systemd/system" / unit
            link.parent.mkdir(parents=True, exist_ok=True)
            if link.is_symlink():
                link.unlink()
            link.symlink_to("/dev/null")
    add_entries(root / "etc/libvirt/qemu.conf", QEMU)
    add_entries(root / "etc/cloudstack/agent/agent.properties", AGENT)
