"""The systemd unit ``csboot firstboot`` installs (same text as packaging/csboot-agent.service).

Kept in the package so an installed ``csboot`` can enable the daemon without the source
tree; a unit test keeps the two copies identical.
"""

from __future__ import annotations

UNIT_NAME = "csboot-agent.service"
UNIT_TEXT = """\
[Unit]
Description=cloudstack-bootstrap host agent (desired state over MQTT)
Documentation=file:///usr/share/doc/cloudstack-bootstrap/agent.md
Wants=network-online.target
After=network-online.target
ConditionPathExists=/etc/cloudstack-bootstrap/agent.toml

[Service]
Type=notify
NotifyAccess=main
ExecStart=/usr/bin/csboot agent -c /etc/cloudstack-bootstrap/agent.toml
Restart=on-failure
RestartSec=5
TimeoutStartSec=300
KillMode=mixed
SyslogIdentifier=csboot-agent

[Install]
WantedBy=multi-user.target
"""
