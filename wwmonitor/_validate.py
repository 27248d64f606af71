"""Argument checks shared by the monitor and the callbacks (one definition each)."""

from __future__ import annotations

import numbers
from typing import Any, Optional

__all__ = ["check_interval"]


def check_interval(name: str, value: Any, *, allow_none: bool = True) -> Optional[int]:
    """``value`` as an ``int`` when it is a positive integer (``None`` passes if ``allow_none``).

    Raises ``ValueError`` naming the argument otherwise (``bool`` is not an
    integer here: ``every_n_epochs=True`` is a mistake, not ``1``).
    """
    if value is None:
        if allow_none:
            return None
        raise ValueError(f"{name} must be a positive integer, got None")
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value <= 0:
        kind = "a positive integer or None" if allow_none else "a positive integer"
        raise ValueError(f"{name} must be {kind}, got {value!r}")
    return int(value)
