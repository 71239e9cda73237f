"""``csboot plan|apply`` end to end on files under a temporary --root (issue 2's must-shows)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

EXAMPLES = REPO / "examples"


def csboot(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bootstrap.cli", *args], capture_output=True, text=True, check=False
    )


def snapshot(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


@pytest.fixture
def debian_root(tmp_path: Path) -> Path:
    """A host root as a Debian install leaves it: stock libvirt files, an agent.properties."""
    root = tmp_path / "root"
    (root / "etc/libvirt").mkdir(parents=True)
    (root / "etc/libvirt/libvirtd.conf").write_text(
        '# libvirtd.conf\n#listen_tls = 0\n#listen_tcp = 1\n#tcp_port = "16509"\n'
    )
    (root / "etc/libvirt/qemu.conf").write_text('# qemu.conf\n#vnc_listen = "0.0.0.0"\n')
    (root / "etc/default").mkdir(parents=True)
    (root / "etc/default/libvirtd").write_text('# options for libvirtd\nLIBVIRTD_ARGS=""\n')
    agent = root / "etc/cloudstack/agent"
    agent.mkdir(parents=True)
    (agent / "agent.properties").write_text(
        "# written by hand: keep me\nhost.tags=x\nworkers=5\nmy.unknown.key=42\n"
    )
    return root


def test_plan_apply_plan_is_idempotent(debian_root: Path) -> None:
    doc = str(EXAMPLES / "role-kvm-files.yaml")
    plan = csboot("plan", "-f", doc, "--root", str(debian_root))
    assert plan.returncode == 2, plan.stderr
    assert "libvirtd.conf" in plan.stdout and "agent.properties" in plan.stdout
    assert "change(s) pending" in plan.stdout

    applied = csboot("apply", "-f", doc, "--root", str(debian_root))
    assert applied.returncode == 0, applied.stderr

    again = csboot("plan", "-f", doc, "--root", str(debian_root), "--json")
    assert again.returncode == 0, again.stdout
    assert json.loads(again.stdout)["changes"] == []

    libvirtd = (debian_root / "etc/libvirt/libvirtd.conf").read_text()
    assert "\nlisten_tcp = 1\n" in libvirtd and '\ntcp_port = "16509"\n' in libvirtd
    assert "\nlisten_tls = 0\n" in libvirtd and '\nauth_tcp = "none"\n' in libvirtd
    assert "\nmdns_adv = 0\n" in libvirtd
    assert 'vnc_listen = "0.0.0.0"' in (debian_root / "etc/libvirt/qemu.conf").read_text()
    props = (debian_root / "etc/cloudstack/agent/agent.properties").read_text()
    lines = props.splitlines()
    assert "guest.cpu.mode=host-model" in lines and "hypervisor.type=kvm" in lines
    # hand-written comment, unknown key and the prefix-sharing key all survive writing host=
    assert "# written by hand: keep me" in lines and "my.unknown.key=42" in lines
    assert "host.tags=x" in lines and "host=192.168.42.10" in lines


def test_lxc_direct_networking_keys(debian_root: Path) -> None:
    result = csboot(
        "apply", "-f", str(EXAMPLES / "role-lxc-direct.yaml"), "--root", str(debian_root)
    )
    assert result.returncode == 0, result.stderr
    lines = (debian_root / "etc/cloudstack/agent/agent.properties").read_text().splitlines()
    assert "hypervisor.type=lxc" in lines
    assert "libvirt.vif.driver=com.cloud.hypervisor.kvm.resource.DirectVifDriver" in lines
    assert "network.direct.source.mode=private" in lines
    assert "network.direct.device=eth0" in lines


INVALID = {
    "vlan out of range": (
        "spec.network.bridges[0].vlan",
        {"bridges": [{"name": "cloudbr0", "vlan": 4095}]},
    ),
    "long name": (
        "spec.network.bridges[0].name",
        {"bridges": [{"name": "cloudbr0-too-long", "vlan": 200}]},
    ),
    "unrecognised uplink": ("spec.network.uplink", {"uplink": "wlp2s0"}),
    "duplicate vlan": (
        "spec.network.bridges[1].vlan",
        {"bridges": [{"name": "cloudbr0", "vlan": 200}, {"name": "cloudbr1", "vlan": 200}]},
    ),
    "gateway outside": (
        "spec.network.management.gateway",
        {"management": {"vlan": 100, "address": "192.168.42.11/24", "gateway": "10.0.0.1"}},
    ),
}


@pytest.mark.parametrize("case", sorted(INVALID))
def test_invalid_input_exits_1_names_the_field_and_changes_nothing(
    case: str, debian_root: Path, tmp_path: Path
) -> None:
    field, network = INVALID[case]
    doc = {
        "apiVersion": "cloudstack-bootstrap/v1",
        "kind": "Role",
        "name": "kvm",
        "version": 1,
        "spec": {"network": {"uplink": "eth0", **network}},
    }
    path = tmp_path / "doc.json"
    path.write_text(json.dumps(doc))
    before = snapshot(debian_root)
    for command in ("plan", "apply"):
        result = csboot(command, "-f", str(path), "--root", str(debian_root))
        assert result.returncode == 1
        assert field in result.stderr
        as_json = csboot(command, "-f", str(path), "--root", str(debian_root), "--json")
        assert json.loads(as_json.stdout)["error"]["field"] == field
    assert snapshot(debian_root) == before


def test_unreadable_document_is_an_error_naming_it(tmp_path: Path) -> None:
    result = csboot("plan", "-f", str(tmp_path / "missing.yaml"), "--root", str(tmp_path))
    assert result.returncode == 1 and "missing.yaml" in result.stderr


def test_schema_is_json_schema_of_the_document() -> None:
    result = csboot("schema")
    schema = json.loads(result.stdout)
    assert schema["properties"]["spec"]["properties"]["network"]
    assert set(schema["required"]) >= {"apiVersion", "kind", "name", "version"}


def test_help_is_as_wide_as_columns_says(monkeypatch: pytest.MonkeyPatch) -> None:
    """The parsers size their help as argparse would (``COLUMNS``, else the terminal, else
    80 columns), without the ``shutil`` argparse imports for it (issue 11)."""
    from bootstrap.cli import build_parser

    for columns in (50, 120):
        monkeypatch.setenv("COLUMNS", str(columns))
        parser = build_parser()
        agent = parser._subparsers._group_actions[0].choices["agent"]  # type: ignore[union-attr]
        lines = parser.format_help().splitlines() + agent.format_help().splitlines()
        assert max(map(len, lines)) <= columns - 2
        assert max(map(len, lines)) > min(columns - 2, 60) - 20  # wrapped at, not far below
