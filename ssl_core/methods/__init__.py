"""Method registry: every module in this package that defines an SSLMethod subclass with a
`name` registers it. Adding a method = adding one file here (plus its reference test)."""
from __future__ import annotations

import importlib
import pkgutil

from ssl_core.methods.base import SSLMethod, registry

_loaded = False


def _load_all() -> None:
    global _loaded
    if not _loaded:
        for mod in pkgutil.iter_modules(__path__):
            if mod.name != "base":
                importlib.import_module(f"{__name__}.{mod.name}")
        _loaded = True


def method_names() -> list[str]:
    _load_all()
    return sorted(registry)


def get_method_class(name: str) -> type[SSLMethod]:
    _load_all()
    return registry[name]


__all__ = ["SSLMethod", "get_method_class", "method_names"]
