"""Names CloudStack gives meaning to, shared by the spec and ``csboot check --cloudstack``."""

from __future__ import annotations

import re

__all__ = ["CLOUDSTACK_NIC_PATTERN"]

# CloudStack's agent finds the physical port of a bridge by these name prefixes
# (LibvirtComputingResource.ifNamePatterns); a port it cannot recognise breaks it.
CLOUDSTACK_NIC_PATTERN = re.compile(r"^(eth|bond|vlan|vx|em|ens|eno|enp|team|enx|dummy|p\d+p\d+)")
