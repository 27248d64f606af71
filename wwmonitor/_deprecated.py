"""Deprecation paths for names that moved: a module-level ``__getattr__`` (PEP 562) that warns and forwards."""

from __future__ import annotations

import warnings
from importlib import import_module
from typing import Any, Callable, Mapping


def moved(module: str, table: Mapping[str, str]) -> Callable[[str], Any]:
    """``__getattr__`` for ``module``: ``table`` maps an old attribute name to the module that now defines it.

    Access to an old name emits a ``DeprecationWarning`` naming the new import path and returns the object
    (not cached, so every use warns); any other unknown name raises ``AttributeError`` as usual.
    """

    def __getattr__(name: str) -> Any:
        new = table.get(name)
        if new is None:
            raise AttributeError(f"module {module!r} has no attribute {name!r}")
        warnings.warn(
            f"{module}.{name} moved: use `from {new} import {name}` ({module}.{name} will be removed)",
            DeprecationWarning,
            stacklevel=2,
        )
        return getattr(import_module(new), name)

    return __getattr__
