"""The pure half of firewall managers and host sysctls: decisions, rendering, parsing, words."""

from __future__ import annotations

from pathlib import Path

import pytest

from bootstrap.errors import InvalidDocument
from bootstrap.host.root import HostRoot
from bootstrap.model.document import validate_spec
from bootstrap.model.spec import HostSettings
from bootstrap.resources import firewalld, sysctl, ufw
from bootstrap.resources.filestate import FileState
from bootstrap.resources.fwmanager import Detected, choose, forward_bridges, manager_ports

NONE, UFW, FWD = Detected(), Detected(ufw=True), Detected(firewalld=True)


# ---------------------------------------------------------------- which backend


@pytest.mark.parametrize(
    ("backend", "detected", "chosen"),
    [
        ("auto", NONE, "nftables"),
        ("auto", UFW, "ufw"),
        ("auto", FWD, "firewalld"),
        ("nftables", NONE, "nftables"),
        ("ufw", UFW, "ufw"),
        ("firewalld", FWD, "firewalld"),
    ],
)
def test_choose(backend: str, detected: Detected, chosen: str) -> None:
    assert choose(backend, detected) == chosen


@pytest.mark.parametrize(
    ("detected", "words"),
    [
        (UFW, ["ufw is active", "cannot override", "use backend: ufw (or auto) or stop ufw"]),
        (FWD, ["firewalld is running", "use backend: firewalld (or auto) or stop firewalld"]),
    ],
)
def test_nftables_beside_a_manager_is_refused_naming_it(
    detected: Detected, words: list[str]
) -> None:
    with pytest.raises(InvalidDocument) as info:
        choose("nftables", detected)
    assert info.value.field == "spec.firewall.backend"
    for word in words:
        assert word in info.value.message


def test_a_named_manager_that_is_not_there_is_refused() -> None:
    with pytest.raises(InvalidDocument, match=r"firewalld is not running on this host \(ufw is\)"):
        choose("firewalld", UFW)
    with pytest.raises(InvalidDocument, match="ufw is not active on this host; use backend"):
        choose("ufw", NONE)


def test_two_managers_are_refused_whatever_the_backend() -> None:
    for backend in ("auto", "ufw", "firewalld", "nftables"):
        with pytest.raises(InvalidDocument, match="both firewalld and ufw"):
            choose(backend, Detected(firewalld=True, ufw=True))


def test_backend_is_validated_naming_the_field() -> None:
    with pytest.raises(InvalidDocument) as info:
        validate_spec({"firewall": {"backend": "iptables"}})
    assert info.value.field == "spec.firewall.backend"
    assert validate_spec({"firewall": {}}).firewall.backend == "auto"  # type: ignore[union-attr]


def test_manager_ports_add_libvirts_port() -> None:
    spec = validate_spec(
        {"firewall": {"allow_tcp": [22, "16500-16510"]}, "libvirt": {"mode": "tls"}}
    )
    assert manager_ports(spec) == ((22, 22), (16500, 16510), (16514, 16514))
    seed = validate_spec({"firewall": {}})
    assert manager_ports(seed) == (
        (22, 22),
        (1798, 1798),
        (5900, 6100),
        (16509, 16509),
        (16514, 16514),
        (49152, 49216),
    )


def test_forward_bridges_only_with_security_groups_on_native_bridges() -> None:
    net = {
        "uplink": "eth0",
        "management": {"address": "192.168.42.11/24", "gateway": "192.168.42.1"},
        "bridges": [
            {"name": "cloudbr0", "traffic": ["management", "public"]},
            {"name": "cloudbr1", "uplink": "eth1", "traffic": ["guest"]},
        ],
    }
    assert forward_bridges(validate_spec({"network": net})) == ()
    on = validate_spec({"network": net, "host": {"security_groups": True}})
    assert forward_bridges(on) == ("cloudbr0", "cloudbr1")


# ---------------------------------------------------------------- ufw


def test_ufw_rules_render_as_ufw_lists_them() -> None:
    rules = ufw.desired_rules(((22, 22), (5900, 6100)), (), ("cloudbr0",))
    assert rules == (
        "allow 22/tcp comment 'cloudstack-bootstrap'",
        "allow 5900:6100/tcp comment 'cloudstack-bootstrap'",
        "route allow in on cloudbr0 out on cloudbr0 comment 'cloudstack-bootstrap'",
    )
    sourced = ufw.desired_rules(((22, 22),), ("10.0.0.0/8", "fd00::5/128"), ())
    assert sourced == (
        "allow from 10.0.0.0/8 to any port 22 proto tcp comment 'cloudstack-bootstrap'",
        "allow from fd00::5 to any port 22 proto tcp comment 'cloudstack-bootstrap'",
    )


ADDED = """Added user rules (see 'ufw status' for running firewall):
ufw allow 22/tcp comment 'cloudstack-bootstrap'
ufw allow 16509/tcp
ufw allow 8443/tcp comment 'web'
ufw allow 5900:6100/tcp comment 'cloudstack-bootstrap'
"""


def test_ufw_listing_splits_ours_from_the_operators() -> None:
    state = ufw.parse_added(ADDED)
    assert state.ours == (
        "allow 22/tcp comment 'cloudstack-bootstrap'",
        "allow 5900:6100/tcp comment 'cloudstack-bootstrap'",
    )
    assert state.others == ("allow 16509/tcp", "allow 8443/tcp")


def test_ufw_leaves_a_port_the_operators_rule_opens() -> None:
    current = ufw.parse_added(ADDED)
    wanted = ufw.desired_rules(((22, 22), (16509, 16509)), (), ())
    target = ufw.target_state(current, wanted)
    # 16509 is the operator's rule: ours would only re-label it ("Rule updated")
    assert target.ours == ("allow 22/tcp comment 'cloudstack-bootstrap'",)
    delete, add = ufw.rule_changes(current, target)
    assert delete == ["allow 5900:6100/tcp comment 'cloudstack-bootstrap'"]
    assert add == []
    resource = ufw.UfwResource(wanted)
    assert [str(c) for c in resource.diff(current, target)] == [
        "- ufw/cloudstack-bootstrap: ufw delete allow 5900:6100/tcp comment cloudstack-bootstrap"
    ]


# ---------------------------------------------------------------- firewalld

ZONE = """public (active)
  target: default
  services: dhcpv6-client ssh cloudstack-bootstrap
  ports: 8443/tcp
  rich rules:
\trule family="ipv4" source address="10.0.0.0/8" service name="cloudstack-bootstrap" accept
\trule family="ipv4" source address="10.9.0.0/16" service name="ssh" accept
"""


def test_firewalld_zone_listing_keeps_only_ours() -> None:
    assert firewalld.parse_zone(ZONE) == (
        'rule family="ipv4" source address="10.0.0.0/8" service name="cloudstack-bootstrap" accept',
        "service",
    )
    assert firewalld.parse_zone(ZONE.replace(" cloudstack-bootstrap\n", "\n")) == (
        'rule family="ipv4" source address="10.0.0.0/8" service name="cloudstack-bootstrap" accept',
    )


def test_firewalld_rendering_and_words() -> None:
    assert firewalld.port_strings(((22, 22), (5900, 6100))) == ("22/tcp", "5900-6100/tcp")
    assert firewalld.desired_entries(()) == ("service",)
    assert firewalld.desired_entries(("fd00::/8",)) == (
        'rule family="ipv6" source address="fd00::/8" service name="cloudstack-bootstrap" accept',
    )
    assert firewalld.parse_service("x\n  ports: 22/tcp 16509/tcp\n  protocols: \n") == (
        "16509/tcp",
        "22/tcp",
    )
    resource = firewalld.FirewalldResource(((22, 22),))
    blank = firewalld.FirewalldState("public")
    target = resource.target(blank)
    assert target == firewalld.FirewalldState("public", ("22/tcp",), ("service",), ("service",))
    assert [str(c) for c in resource.diff(blank, target)] == [
        "+ firewalld/cloudstack-bootstrap: service ports 22/tcp",
        "+ firewalld/cloudstack-bootstrap: zone public (permanent): service",
        "+ firewalld/cloudstack-bootstrap: zone public (runtime): service",
    ]
    assert resource.diff(target, target) == []
    gone = firewalld.FirewalldResource(None)
    assert gone.target(target) == blank


# ---------------------------------------------------------------- sysctl


def test_port_lists_as_the_kernel_writes_them() -> None:
    assert sysctl.parse_ports("") == ()
    assert sysctl.parse_ports("8080,20000-20010") == ((8080, 8080), (20000, 20010))
    assert sysctl.format_ports([(49152, 49216), (8080, 8080), (49200, 49300)]) == (
        "8080,49152-49300"
    )
    with pytest.raises(ValueError, match="not a port list"):
        sysctl.parse_ports("1-x")


def test_reserved_ports_merge_with_the_hosts() -> None:
    settings = HostSettings()
    current = sysctl.SysctlState(((sysctl.RESERVED, "8080,49200-49300"),))
    target_values = sysctl.wanted_values(settings, current)
    assert target_values == ((sysctl.RESERVED, "8080,49152-49300"),)
    resource = sysctl.SysctlResource(settings, HostRoot(Path("/nonexistent-root")))
    target = resource.target(current)
    assert target.modules == FileState(None)  # no security groups: no br_netfilter
    assert target.conf.data is not None and target.conf.data.endswith(
        b"net.ipv4.ip_local_reserved_ports = 8080,49152-49300\n"
    )
    assert [c.detail for c in resource.diff(current, target)] == [
        "net.ipv4.ip_local_reserved_ports: 8080,49200-49300 -> 8080,49152-49300 (live)",
        f"file {sysctl.CONF} ({len(target.conf.data)} bytes)",
    ]


def test_security_groups_add_br_netfilter_and_its_sysctls() -> None:
    settings = HostSettings(security_groups=True)
    values = dict(sysctl.wanted_values(settings, sysctl.SysctlState(((sysctl.RESERVED, ""),))))
    assert values == {sysctl.RESERVED: "49152-49216", **dict.fromkeys(sysctl.BRIDGE_KEYS, "1")}
    assert sysctl.render_modules(settings) is not None
    assert sysctl.render_modules(HostSettings()) is None


def test_host_settings_validated_naming_the_field() -> None:
    with pytest.raises(InvalidDocument) as info:
        validate_spec({"host": {"reserved_ports": ["49216-49152"]}})
    assert info.value.field.startswith("spec.host.reserved_ports")
    with pytest.raises(InvalidDocument) as info:
        validate_spec({"host": {"security_groups": "yes"}})
    assert info.value.field == "spec.host.security_groups"


# ---------------------------------------------------------------- csboot check


def test_check_names_the_closed_port_and_the_manager() -> None:
    from bootstrap.host.fwcheck import ManagerFacts, evaluate

    facts = ManagerFacts(("ufw",), True, ((22, 22), (16509, 16509)), ((22, 22),), "ufw-user-input")
    (check,) = evaluate(facts)
    assert not check.ok
    assert check.detail == (
        "tcp 16509: allowed in ufw's configuration but closed in its running firewall "
        "(ufw-user-input)"
    )
    wide = ManagerFacts(("firewalld",), True, ((5900, 5910),), ((5000, 6000),), "zone public")
    assert evaluate(wide)[0].ok
    assert not evaluate(ManagerFacts(("ufw",), False, ((22, 22),)))[0].ok
    assert "opens none of our ports" in evaluate(ManagerFacts(("firewalld",), True))[0].detail
    assert evaluate(ManagerFacts())[0].ok
    assert not evaluate(ManagerFacts(("firewalld", "ufw")))[0].ok


def test_check_reads_the_loaded_rules() -> None:
    from bootstrap.host.fwcheck import ufw_running, zone_opens

    saved = (
        ":ufw-user-input - [0:0]\n"
        "-A ufw-user-input -p tcp -m multiport --dports 5900:6100 -j ACCEPT\n"
        "-A ufw-user-input -s 10.0.0.0/8 -p tcp -m tcp --dport 22 -j ACCEPT\n"
        "-A ufw-user-input -p tcp -m tcp --dport 8080 -j DROP\n"
        "-A ufw-user-input -p udp -m udp --dport 53 -j ACCEPT\n"
    )
    assert ufw_running(saved) == ((22, 22), (5900, 6100))
    listing = "public\n  services: ssh cloudstack-bootstrap\n  ports: 8443/tcp 53/udp\n"
    services = {"ssh": ("22/tcp",), "cloudstack-bootstrap": ("16509/tcp", "5900-6100/tcp")}
    assert zone_opens(listing, services) == ((22, 22), (5900, 6100), (8443, 8443), (16509, 16509))


def test_recovery_knows_every_backends_resource_without_detecting() -> None:
    from bootstrap.resources.fwmanager import manager_resources

    spec = validate_spec({"firewall": {"backend": "firewalld"}})  # nothing runs here
    names = [r.name for r in manager_resources(spec, HostRoot(Path("/x")), recovering=True)]
    assert names == [
        "nft/inet cloudstack_bootstrap",
        "file/etc/cloudstack-bootstrap/firewall.nft.json",
        "file/etc/systemd/system/cloudstack-bootstrap-firewall.service",
        "link/etc/systemd/system/sysinit.target.wants/cloudstack-bootstrap-firewall.service",
        "ufw/cloudstack-bootstrap",
        "firewalld/cloudstack-bootstrap",
    ]
