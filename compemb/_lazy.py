"""Package attributes imported on first use (the packages' module ``__getattr__``)."""
from __future__ import annotations

import importlib
from typing import Any, Dict, Mapping


def load_export(namespace: Dict[str, Any], exports: Mapping[str, str], name: str) -> Any:
    """``name`` from the module ``exports`` maps it to, kept in the package ``namespace`` for later use.

    Raises:
        AttributeError: ``name`` is not among ``exports``.
    """
    module_name = exports.get(name)
    if module_name is None:
        raise AttributeError(f"module {namespace['__name__']!r} has no attribute {name!r}")
    value = namespace[name] = getattr(importlib.import_module(module_name), name)
    return value
