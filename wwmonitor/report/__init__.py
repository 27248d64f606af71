"""Reports: diagnostic figures (:mod:`.figures`), the static HTML run report
(:mod:`.html`) and the comparison of several runs (:mod:`.compare`).

::

    from wwmonitor.report import write_report, write_comparison
    write_report("wwmonitor-runs/my-run")                       # -> my-run/report/index.html
    write_comparison(["runs/bs8", "runs/bs64"], "sweep-report")  # swept key read from the run configs

Needs matplotlib and pandas (core dependencies); attributes load lazily.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

__all__ = ["write_report", "write_comparison", "final_metrics_table", "spearman_by_group", "figures"]

_LAZY = {
    "write_report": "wwmonitor.report.html",
    "write_comparison": "wwmonitor.report.compare",
    "final_metrics_table": "wwmonitor.report.compare",
    "spearman_by_group": "wwmonitor.report.compare",
}


def __getattr__(name: str) -> Any:
    if name == "figures":
        return import_module("wwmonitor.report.figures")
    mod = _LAZY.get(name)
    if mod is None:
        raise AttributeError(f"module 'wwmonitor.report' has no attribute {name!r}")
    return getattr(import_module(mod), name)


def __dir__() -> list[str]:
    return __all__
