"""Firewall managers on a real kernel: ufw and firewalld running in a host namespace.

``csboot apply`` runs in the host (its namespace, its private mount namespace, its root);
``peer`` knocks over a veth. Converging opens exactly our ports through the manager;
``backend: nftables`` beside an active manager is refused naming it, and nothing is applied.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from simulator.namespaces import Namespace
from tests.netns.fwmgr_hosts import (
    GUEST2,
    Firewalld,
    ManagedHost,
    bridged_guests,
    knock,
    lab,
    listening,
    revert_cycle,
    write_doc,
)

pytestmark = [pytest.mark.root, pytest.mark.netns]

NamespaceFactory = Callable[[str], Namespace]
SPEC = {"libvirt": {"mode": "tcp"}}
ALLOW = [22, "5900-6100"]  # + libvirt's 16509
OPEN_PORTS = (22, 5901, 16509)
CLOSED = 8080  # listening, not allowed


def _spec(backend: str, **firewall: object) -> dict[str, object]:
    return {**SPEC, "firewall": {"backend": backend, "allow_tcp": ALLOW, **firewall}}


@pytest.fixture
def ufw_host(make_ns: NamespaceFactory, tmp_path: Path) -> tuple[ManagedHost, Namespace]:
    if shutil.which("ufw") is None:
        pytest.skip("ufw is not installed (scripts/setup.sh installs it)")
    host_ns, peer = lab(make_ns)
    root = tmp_path / "root"
    # the package's pristine files, copied: the machine's own /etc/ufw is never used
    shutil.copytree("/usr/share/ufw/iptables", root / "etc/ufw", symlinks=True)
    for name in ("ufw.conf", "before.init", "after.init"):
        shutil.copy(f"/usr/share/ufw/{name}", root / "etc/ufw" / name)
    shutil.copy("/etc/ufw/sysctl.conf", root / "etc/ufw/sysctl.conf")
    (root / "etc/ufw/applications.d").mkdir()
    shutil.copytree("/lib/ufw", root / "lib/ufw", symlinks=True)
    (root / "etc/default").mkdir(parents=True)
    shutil.copy("/etc/default/ufw", root / "etc/default/ufw")
    host = ManagedHost(host_ns, root, ["/etc/ufw", "/lib/ufw", "/etc/default/ufw"])
    host.run("ufw", "--force", "enable")
    return host, peer


@pytest.fixture
def firewalld_host(
    make_ns: NamespaceFactory, tmp_path: Path
) -> Iterator[tuple[ManagedHost, Namespace, Firewalld]]:
    if shutil.which("firewalld") is None or shutil.which("dbus-daemon") is None:
        pytest.skip("firewalld / dbus-daemon are not installed (scripts/setup.sh)")
    host_ns, peer = lab(make_ns)
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    shutil.copytree("/etc/firewalld", root / "etc/firewalld", symlinks=True)
    host = ManagedHost(host_ns, root, ["/etc/firewalld"])
    daemon = Firewalld(host)
    try:
        yield host, peer, daemon
    finally:
        daemon.stop()


def _firewall_check(host: ManagedHost) -> tuple[bool, str]:
    result = host.csboot("check", "--root", str(host.root), "--json")
    (check,) = [c for c in json.loads(result.stdout)["checks"] if c["name"] == "firewall-ports"]
    return check["ok"], check["detail"]


def _ufw_rules(host: ManagedHost) -> list[str]:
    out = host.run("ufw", "show", "added").stdout.splitlines()
    return sorted(line for line in out if line.startswith("ufw "))


def test_ufw_opens_exactly_our_ports(ufw_host: tuple[ManagedHost, Namespace]) -> None:
    host, peer = ufw_host
    host.run("ufw", "allow", "8443/tcp")  # the operator's own rule: never ours to touch
    doc = write_doc(host.root.parent / "ufw.yaml", {**_spec("auto"), "host": {}})
    with listening(host.ns, [*OPEN_PORTS, CLOSED, 8443]):
        assert knock(peer, 16509) == "silent"  # ufw's default: deny incoming
        result = host.csboot("apply", "-f", str(doc), "--root", str(host.root), "--json")
        assert result.returncode == 0, result.stdout + result.stderr
        assert "ufw/cloudstack-bootstrap" in result.stdout
        assert _ufw_rules(host) == sorted(
            [
                "ufw allow 8443/tcp",
                "ufw allow 22/tcp comment 'cloudstack-bootstrap'",
                "ufw allow 5900:6100/tcp comment 'cloudstack-bootstrap'",
                "ufw allow 16509/tcp comment 'cloudstack-bootstrap'",
            ]
        )
        assert {p: knock(peer, p) for p in (*OPEN_PORTS, CLOSED, 8443)} == {
            22: "open",
            5901: "open",
            16509: "open",
            CLOSED: "silent",
            8443: "open",
        }
        assert "cloudstack_bootstrap" not in host.nft_ruleset()  # ufw opened them, not us
        # the host settings of the same apply: live in the host's namespace, and persisted
        with host.ns.inside():
            reserved = Path("/proc/sys/net/ipv4/ip_local_reserved_ports").read_text().strip()
        assert reserved == "49152-49216"
        conf = host.root / "etc/sysctl.d/60-cloudstack-bootstrap.conf"
        assert "net.ipv4.ip_local_reserved_ports = 49152-49216\n" in conf.read_text()
        again = host.csboot("plan", "-f", str(doc), "--root", str(host.root))
        assert again.returncode == 0, again.stdout  # nothing left to change
        assert _firewall_check(host) == (
            True,
            "ufw opens tcp 22, 5900-6100, 16509 in ufw-user-input",
        )
        # ufw's files still say allow, but the kernel's rule is gone: csboot check says so
        host.run(
            "iptables",
            "-D",
            "ufw-user-input",
            "-p",
            "tcp",
            "-m",
            "tcp",
            "--dport",
            "16509",
            "-j",
            "ACCEPT",
        )
        assert knock(peer, 16509) == "silent"
        assert _firewall_check(host) == (
            False,
            "tcp 16509: allowed in ufw's configuration but closed in its running firewall "
            "(ufw-user-input)",
        )
        host.run("ufw", "reload")
        # a revert removes exactly ours: the operator's rule stays, the files come back
        before = {
            n: (host.root / "etc/ufw" / n).read_bytes() for n in ("user.rules", "user6.rules")
        }
        script = (
            "import asyncio\n"
            "from bootstrap.resources.ufw import UfwResource, UfwState\n"
            "r = UfwResource(())\n"
            "async def main():\n"
            "    snap = await r.observe()\n"
            "    await r.apply(snap, r.target(snap))\n"
            "    print(await r.observe())\n"
            "    await r.revert(snap)\n"
            "    print(await r.observe() == snap)\n"
            "asyncio.run(main())\n"
        )
        out = host.python(script).splitlines()
        assert out[0] == "UfwState(ours=(), others=('allow 8443/tcp',))"
        assert out[1] == "True"
        assert {n: (host.root / "etc/ufw" / n).read_bytes() for n in before} == before


def test_ufw_refuses_backend_nftables(ufw_host: tuple[ManagedHost, Namespace]) -> None:
    host, peer = ufw_host
    doc = write_doc(host.root.parent / "nft.yaml", _spec("nftables", policy="drop"))
    tree, ruleset = host.tree(), host.nft_ruleset()
    result = host.csboot("apply", "-f", str(doc), "--root", str(host.root), "--json")
    assert result.returncode == 1
    error = json.loads(result.stdout)["error"]
    assert error["field"] == "spec.firewall.backend"
    assert "ufw is active" in error["message"] and "backend: ufw" in error["message"]
    assert host.tree() == tree  # nothing written: not the journal, not a file
    assert host.nft_ruleset() == ruleset
    with listening(host.ns, [16509]):
        assert knock(peer, 16509) == "silent"


def test_firewalld_opens_exactly_our_ports(
    firewalld_host: tuple[ManagedHost, Namespace, Firewalld],
) -> None:
    host, peer, fw = firewalld_host
    zone_before = fw.cmd("--permanent", "--zone=public", "--list-all")
    doc = write_doc(host.root.parent / "fwd.yaml", _spec("auto"))
    with listening(host.ns, [*OPEN_PORTS, CLOSED]):
        assert knock(peer, 16509) == "rejected"  # firewalld's zone rejects it
        result = host.csboot("apply", "-f", str(doc), "--root", str(host.root), "--json")
        assert result.returncode == 0, result.stdout + result.stderr
        assert fw.cmd("--permanent", "--info-service=cloudstack-bootstrap").split("ports:")[
            1
        ].split("\n")[0].split() == ["16509/tcp", "22/tcp", "5900-6100/tcp"]
        assert "cloudstack-bootstrap" in fw.cmd("--zone=public", "--list-services").split()
        assert {p: knock(peer, p) for p in (*OPEN_PORTS, CLOSED)} == {
            22: "open",
            5901: "open",
            16509: "open",
            CLOSED: "rejected",
        }
        again = host.csboot("plan", "-f", str(doc), "--root", str(host.root))
        assert again.returncode == 0, again.stdout
        assert _firewall_check(host) == (
            True,
            "firewalld opens tcp 22, 5900-6100, 16509 in zone public",
        )
        fw.cmd("--zone=public", "--remove-service=cloudstack-bootstrap")  # runtime only
        assert knock(peer, 16509) == "rejected"
        assert knock(peer, 22) == "open"  # still: the zone's own ssh service
        assert _firewall_check(host) == (
            False,
            "tcp 5900-6100, 16509: allowed in firewalld's configuration but closed in its "
            "running firewall (zone public)",
        )
        fw.cmd("--reload")
        # removing ours gives the operator's zone back as it was; a revert puts ours back
        proc = host.popen_python(revert_cycle("FirewalldResource(None)"))
        assert proc.stdin is not None and proc.stdout is not None
        try:
            assert proc.stdout.readline().strip() == (
                "FirewalldState(zone='public', ports=None, permanent=(), runtime=(), elsewhere=())"
            )
            assert fw.cmd("--permanent", "--zone=public", "--list-all") == zone_before
            assert knock(peer, 16509) == "rejected"
            proc.stdin.write("\n")
            proc.stdin.flush()
            assert proc.stdout.readline().strip() == "True"
        finally:
            proc.stdin.close()
            assert proc.wait(60) == 0
        assert knock(peer, 16509) == "open"


def test_firewalld_refuses_backend_nftables(
    firewalld_host: tuple[ManagedHost, Namespace, Firewalld],
) -> None:
    host, _peer, fw = firewalld_host
    doc = write_doc(host.root.parent / "nft.yaml", _spec("nftables"))
    tree, ruleset = host.tree(), host.nft_ruleset()
    result = host.csboot("apply", "-f", str(doc), "--root", str(host.root), "--json")
    assert result.returncode == 1
    error = json.loads(result.stdout)["error"]
    assert error["field"] == "spec.firewall.backend"
    assert "firewalld is running" in error["message"]
    assert "backend: firewalld" in error["message"]
    assert host.tree() == tree
    assert host.nft_ruleset() == ruleset
    assert "cloudstack-bootstrap" not in fw.cmd("--get-services").split()


def _forward_cycle(host: ManagedHost, g1: Namespace, resource: str, words: str) -> None:
    """Guests' bridged traffic: dropped by the manager, passed with our resource applied,
    dropped again after its revert."""
    assert knock(g1, 5555, dst=GUEST2) != "open"
    proc = host.popen_python(revert_cycle(resource))
    assert proc.stdin is not None and proc.stdout is not None
    try:
        assert words in proc.stdout.readline()
        assert knock(g1, 5555, dst=GUEST2) == "open"
        proc.stdin.write("\n")
        proc.stdin.flush()
        assert proc.stdout.readline().strip() == "True"
    finally:
        proc.stdin.close()
        assert proc.wait(60) == 0
    assert knock(g1, 5555, dst=GUEST2) != "open"


def test_ufw_forward_path_for_our_bridges(
    ufw_host: tuple[ManagedHost, Namespace], make_ns: NamespaceFactory
) -> None:
    host, _peer = ufw_host
    g1, g2 = bridged_guests(make_ns, host.ns)
    with listening(g2, [5555]):
        _forward_cycle(
            host,
            g1,
            'UfwResource(desired_rules((), (), ("cloudbr0",)))',
            "route allow in on cloudbr0 out on cloudbr0 comment 'cloudstack-bootstrap'",
        )


def test_firewalld_forward_path_for_our_bridges(
    firewalld_host: tuple[ManagedHost, Namespace, Firewalld], make_ns: NamespaceFactory
) -> None:
    host, _peer, _fw = firewalld_host
    g1, g2 = bridged_guests(make_ns, host.ns)
    with listening(g2, [5555]):
        _forward_cycle(
            host,
            g1,
            'FirewalldResource(((16509, 16509),), bridges=("cloudbr0",))',
            "'interface cloudbr0'",
        )
