"""cloudstack-bootstrap: desired state for Apache CloudStack KVM/LXC hypervisor hosts."""

import sys
import types

__version__ = "0.1.0"
__all__ = ["__version__"]


def _no_pydantic_plugins(name: str = "pydantic.plugin._loader") -> None:
    """pydantic looks for plugins when it builds its first model: it scans the entry points
    of every installed distribution (``importlib.metadata``, which brings in the email
    parser, ``zipfile``, ``csv``...: 0.8 MiB in every agent). We run none: a root daemon
    that validates what comes off the wire does not load code because some installed
    package declares a ``pydantic`` entry point. So pydantic's loader is registered as one
    that finds no plugin, before pydantic is imported (its own ``PYDANTIC_DISABLE_PLUGINS``
    still imports ``importlib.metadata``). If a pydantic release stops asking this module,
    the registration is simply never used."""
    if name in sys.modules:
        return
    loader = types.ModuleType(name, "pydantic's plugin loader: no plugins (bootstrap/__init__.py)")
    loader.get_plugins = lambda: ()  # type: ignore[attr-defined]
    sys.modules[name] = loader


_no_pydantic_plugins()
