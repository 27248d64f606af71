"""Lazy re-exports for package ``__init__`` modules (PEP 562 ``__getattr__``)."""

from __future__ import annotations

from importlib import import_module
from typing import Any, Callable, Mapping, Sequence


def lazy_exports(
    namespace: dict[str, Any], table: Mapping[str, str], names: Sequence[str]
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """``(__getattr__, __dir__)`` for a package whose ``table`` maps attribute -> defining module.

    The first access imports the defining module and caches the value in
    ``namespace`` (the package's ``globals()``), so frameworks load only when used.
    """
    package = namespace["__name__"]

    def __getattr__(name: str) -> Any:
        mod = table.get(name)
        if mod is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(import_module(mod), name)
        namespace[name] = value
        return value

    def __dir__() -> list[str]:
        return list(names)

    return __getattr__, __dir__
