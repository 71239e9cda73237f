"""Names and modules loaded on first use (PEP 562), so ``csboot`` imports per command
only what that command needs: :func:`lazy_names` for our packages, :func:`register_lazily`
for another library's module that is imported but rarely used."""

from __future__ import annotations

import importlib
import importlib.util
import sys
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["lazy_names", "register_lazily"]


def lazy_names(package: str, home: Mapping[str, str]) -> Callable[[str], Any]:
    """A module ``__getattr__`` for ``package``: ``home`` maps each name to its submodule."""
    namespace = importlib.import_module(package).__dict__

    def load(name: str) -> Any:
        if name not in home:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(f"{package}.{home[name]}"), name)
        namespace[name] = value  # found directly from now on
        return value

    return load


def register_lazily(name: str) -> None:
    """Register module ``name`` so that importing it runs none of its code: that runs at
    the first name asked of it, in the same module object, so every importer then sees
    the whole module as usual. A package's submodules still import as Python would.

    Where ``name`` is imported already (or cannot be found), nothing changes.
    (``importlib.util.LazyLoader`` cannot do this: an ``import`` statement of a module
    already in ``sys.modules`` reads its ``__spec__``, which loads it.)
    """
    if name in sys.modules:
        return
    spec = importlib.util.find_spec(name)
    if spec is None or spec.loader is None:
        return  # the importer then names what is missing
    module = importlib.util.module_from_spec(spec)
    loader = spec.loader
    package = spec.submodule_search_locations is not None

    def whole_module(attr: str) -> Any:
        if attr.startswith("__"):
            raise AttributeError(attr)
        if package and importlib.util.find_spec(f"{name}.{attr}") is not None:
            return importlib.import_module(f"{name}.{attr}")  # a submodule, as Python would
        del module.__getattr__
        loader.exec_module(module)
        return getattr(module, attr)

    setattr(module, "__getattr__", whole_module)  # noqa: B010 (a module-level __getattr__)
    sys.modules[name] = module
    parent, _, child = name.rpartition(".")
    if parent:
        setattr(importlib.import_module(parent), child, module)
