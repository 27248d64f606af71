"""Reports: diagnostic figures (:mod:`.figures`), the HTML run report
(:mod:`.html`) and the comparison of several runs (:mod:`.compare`).

Needs matplotlib (the ``report`` extra); pandas for the run-level parts.
"""
from __future__ import annotations

__all__ = ["figures"]
