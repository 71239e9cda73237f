"""pyroute2's rtnetlink sockets, without pyroute2's package ``__init__``.

``import pyroute2`` runs a package ``__init__`` that imports every netlink family the
library knows (NDB, IPDB, nl80211, WireGuard, conntrack, IPVS, ...): ~140 ms and ~6 MiB
in every agent, for the two classes the engine uses. So, where nothing has imported
pyroute2 yet, the package is registered without running its ``__init__`` and the classes
come from their own modules. The first name asked of the package itself (``from pyroute2
import NDB`` anywhere else in the process) runs the real ``__init__`` at that moment, so
other code sees the whole package as usual.
"""

from __future__ import annotations

import importlib.util
import sys
from typing import Any

__all__ = ["AsyncIPRoute", "IPRoute", "NetlinkError"]


def _register_lazily(name: str = "pyroute2") -> None:
    if name in sys.modules:
        return
    spec = importlib.util.find_spec(name)
    if spec is None or spec.loader is None:
        return  # the imports below then name what is missing
    package = importlib.util.module_from_spec(spec)
    loader = spec.loader

    def whole_package(attr: str) -> Any:
        if attr.startswith("__"):
            raise AttributeError(attr)
        if importlib.util.find_spec(f"{name}.{attr}") is not None:
            return importlib.import_module(f"{name}.{attr}")  # a submodule, as Python would
        del package.__getattr__
        loader.exec_module(package)
        return getattr(package, attr)

    setattr(package, "__getattr__", whole_package)  # noqa: B010 (a module-level __getattr__)
    sys.modules[name] = package


_register_lazily()

from pyroute2.iproute.linux import AsyncIPRoute, IPRoute  # noqa: E402
from pyroute2.netlink.exceptions import NetlinkError  # noqa: E402
