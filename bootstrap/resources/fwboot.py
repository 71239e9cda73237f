"""Our nftables table at boot, without our agent: a file of ours and a systemd unit of ours.

The kernel forgets every nftables table at a reboot, so with the ``nftables`` backend the
transaction that writes the live table also writes, as files we wholly own:

- ``/etc/cloudstack-bootstrap/firewall.nft.json``: the very batch the agent hands
  libnftables (``nft_rules.replace_batch(desired_state(...))``, as JSON), which
  ``nft -j -f`` loads with the same JSON parser. One function makes both, so the file and
  the live table cannot disagree, and there is no second renderer to drift. The batch
  starts with ``add table`` + ``delete table`` of *our* table only, so loading it twice
  is the same as loading it once and no other table (nftables.conf's, libvirt's,
  docker's) is ever touched.
- ``/etc/systemd/system/cloudstack-bootstrap-firewall.service``: a oneshot that runs
  ``nft -j -f`` on that file; ``DefaultDependencies=no``, ``After=nftables.service``
  (Debian's ``nftables.service`` runs ``flush ruleset`` from /etc/nftables.conf: ours
  must come after it or it would be flushed), ``Before=network-pre.target`` and
  ``Wants=network-pre.target`` (no interface is up unfiltered: ``networking.service``
  and NetworkManager order themselves after ``network-pre.target``).
- enabled as ``systemctl enable`` does: ``/etc/systemd/system/sysinit.target.wants/...``.
  ``WantedBy=sysinit.target``, as Debian's own ``nftables.service``: every boot target
  (multi-user, graphical, rescue) pulls in ``sysinit.target``, which is reached before
  ``basic.target`` and before any network service starts, so the table is loaded on
  every boot, in the same early part of the boot as ``nftables.service`` (which our
  ``After=`` orders against). ``multi-user.target`` would also be ordered before
  ``network-pre.target``, but not be part of a rescue boot, and would read as "a late
  service", which this is not.

With a firewall manager (firewalld, ufw: they persist their own rules) or no ``firewall``
section, the three are removed if an earlier apply made them. A rollback gives back each
file and the link byte for byte, absence included (``filestate``).
"""

from __future__ import annotations

import json
from typing import Any

from bootstrap.engine.resource import Resource
from bootstrap.host.root import HostRoot
from bootstrap.model.spec import Firewall
from bootstrap.resources.filestate import LinkState, Symlink, WholeFile
from bootstrap.resources.nft_rules import desired_state, replace_batch
from bootstrap.resources.units import systemctl, systemd_running

__all__ = [
    "NFT",
    "RULES_FILE",
    "UNIT",
    "UNIT_FILE",
    "WANTED_BY",
    "boot_resources",
    "render_rules",
    "render_unit",
]

NFT = "/usr/sbin/nft"
RULES_FILE = "/etc/cloudstack-bootstrap/firewall.nft.json"
UNIT = "cloudstack-bootstrap-firewall.service"
UNIT_FILE = f"/etc/systemd/system/{UNIT}"
WANTED_BY = "sysinit.target"
LINK = f"/etc/systemd/system/{WANTED_BY}.wants/{UNIT}"


def render_rules(firewall: Firewall) -> bytes:
    """Pure: the batch that replaces our table with the spec's, as ``nft -j -f`` input,
    one command a line (``json.dumps`` with ``indent`` takes the pure-Python encoder,
    three times slower)."""
    commands = replace_batch(desired_state(firewall))["nftables"]
    lines = ",\n".join(f"  {json.dumps(command)}" for command in commands)
    return f'{{"nftables": [\n{lines}\n]}}\n'.encode()


def render_unit(rules_file: str = RULES_FILE) -> bytes:
    """Pure: our boot unit."""
    return f"""\
# managed by cloudstack-bootstrap: replaced whole on every apply
[Unit]
Description=cloudstack-bootstrap firewall (our nftables table inet cloudstack_bootstrap)
Documentation=file://{rules_file}
DefaultDependencies=no
After=nftables.service
Before=network-pre.target shutdown.target
Wants=network-pre.target
Conflicts=shutdown.target
ConditionPathExists={rules_file}

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart={NFT} -j -f {rules_file}

[Install]
WantedBy={WANTED_BY}
""".encode()


class _Enable(Symlink):
    """Our unit enabled; systemd (only on the machine's own root) reloads its units."""

    async def after_apply(self, target: LinkState) -> None:
        if self.host.is_real and systemd_running():
            await systemctl("daemon-reload")


def boot_resources(firewall: Firewall | None, host: HostRoot) -> list[Resource[Any]]:
    """The file, the unit and its link; ``None``: all three removed (if ours were there)."""
    if firewall is None:
        return [
            _Enable(host, LINK, None),
            WholeFile(host, UNIT_FILE, None),
            WholeFile(host, RULES_FILE, None),
        ]
    return [
        WholeFile(host, RULES_FILE, render_rules(firewall)),
        WholeFile(host, UNIT_FILE, render_unit()),
        _Enable(host, LINK, UNIT_FILE),
    ]
