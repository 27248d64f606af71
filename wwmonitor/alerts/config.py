"""Checking :class:`~wwmonitor.alerts.AlertRules` settings: every error names its argument."""

from __future__ import annotations

import math
import numbers
from typing import Any, Iterable

from .base import Rule
from .rules import (
    RULE_TYPES,
    AlphaHigh,
    AlphaJump,
    AlphaLow,
    CorrelationTrap,
    NonFinite,
    OverRegularization,
    PhaseChange,
    RankCollapse,
)

__all__ = ["RULES", "DEFAULT_RULES", "DEFAULTS", "check_config", "check_rule_ids", "build_rules"]

#: every rule id understood by :class:`~wwmonitor.alerts.AlertRules`
RULES: tuple[str, ...] = (
    "rank_collapse",
    "over_regularization",
    "alpha_low",
    "alpha_high",
    "phase_change",
    "alpha_jump",
    "non_finite",
    "correlation_trap",
)
assert sorted(RULES) == sorted(t.id for t in RULE_TYPES)

#: rules evaluated when ``rules`` is not given (correlation traps cost an extra eigendecomposition)
DEFAULT_RULES: tuple[str, ...] = tuple(r for r in RULES if r != "correlation_trap")

#: numeric settings and their defaults
DEFAULTS: dict[str, Any] = {
    "collapse_tol": 1e-4,
    "collapse_fraction": 0.10,
    "collapse_sr": 2.0,
    "collapse_softrank": 0.01,
    "collapse_early": 3,
    "alpha_low": 2.0,
    "alpha_low_patience": 3,
    "alpha_high": 6.0,
    "warmup": 3,
    "alpha_jump": 1.0,
    "cooldown": 2,
    "hysteresis": 0.2,
    "phase_patience": 1,
    "trap_threshold": 1,
    # minimum layer sizes (eigenvalues; fitted tail) below which a rule says nothing (docs/alerts.md)
    "alpha_min_evals": 100,
    "alpha_min_tail": 10,
    "collapse_min_evals": 16,
    "overreg_min_evals": 50,
    # over_regularization (thresholds measured on benchmarks/overreg_panel.py; see docs/alerts.md)
    "overreg_sr_ratio": 0.22,
    "overreg_softrank_ratio": 0.25,
    "overreg_bulk_ratio": 0.8,
    "overreg_ref_snapshots": 3,
    "overreg_patience": 2,
    "overreg_hysteresis": 0.25,
    "overreg_vanish_ratio": 1e-3,
}


def check_rule_ids(ids: Any, arg: str) -> tuple[str, ...]:
    """``ids`` as a tuple of known rule ids (duplicates dropped), else TypeError/ValueError naming ``arg``."""
    if isinstance(ids, (str, bytes)):
        raise TypeError(f"{arg} must be a list of rule ids, not the string {ids!r} (write [{ids!r}])")
    try:
        chosen = tuple(ids)
    except TypeError:
        raise TypeError(f"{arg} must be an iterable of rule ids, got {type(ids).__name__}") from None
    bad = [r for r in chosen if r not in RULES]
    if bad:
        raise ValueError(f"{arg}: unknown alert rule(s) {bad}; known rules: {list(RULES)}")
    return tuple(dict.fromkeys(chosen))


def _real(name: str, v: Any) -> float:
    if isinstance(v, bool) or not isinstance(v, numbers.Real):
        raise TypeError(f"{name} must be a number, got {type(v).__name__} {v!r}")
    x = float(v)
    if not math.isfinite(x):
        raise ValueError(f"{name} must be finite, got {v}")
    return x


def _count(name: str, v: Any, minimum: int) -> int:
    if isinstance(v, bool) or not isinstance(v, numbers.Real):
        raise TypeError(f"{name} must be a whole number, got {type(v).__name__} {v!r}")
    x = float(v)
    if not math.isfinite(x) or x != int(x):
        raise ValueError(f"{name} must be a whole number, got {v}")
    if x < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {v}")
    return int(x)


def check_config(  # long-function: one validation line per alert setting, in the order of the signature
    *,
    rules: Iterable[str] | None,
    stop_on: Iterable[str],
    warn: Any,
    log_alerts: Any,
    on_alert: Any,
    **params: Any,
) -> dict[str, Any]:
    """Validated, normalised settings of :class:`~wwmonitor.alerts.AlertRules` (all of them)."""
    unknown = sorted(set(params) - set(DEFAULTS))
    if unknown:
        raise TypeError(f"AlertRules got unexpected argument(s) {unknown}; known: {sorted(DEFAULTS)}")
    p = {**DEFAULTS, **params}
    out: dict[str, Any] = {}
    out["rules"] = DEFAULT_RULES if rules is None else check_rule_ids(rules, "rules")
    out["stop_on"] = check_rule_ids(stop_on, "stop_on")
    off = [r for r in out["stop_on"] if r not in out["rules"]]
    if off:
        raise ValueError(f"stop_on: rule(s) {off} are not enabled (rules={list(out['rules'])}), so they can never stop")

    for name in ("collapse_tol", "collapse_fraction", "alpha_low", "alpha_high", "alpha_jump", "hysteresis"):
        out[name] = _real(name, p[name])
    if not 0 < out["collapse_tol"] < 1:
        raise ValueError(f"collapse_tol must be in (0, 1), got {p['collapse_tol']}")
    if not 0 < out["collapse_fraction"] <= 1:
        raise ValueError(f"collapse_fraction must be in (0, 1], got {p['collapse_fraction']}")
    for name in ("collapse_sr", "collapse_softrank", "overreg_vanish_ratio"):
        out[name] = _real(name, p[name])
        if out[name] < 0:
            raise ValueError(f"{name} must be >= 0, got {p[name]}")
    if out["alpha_low"] >= out["alpha_high"]:
        raise ValueError(f"alpha_low ({p['alpha_low']}) must be below alpha_high ({p['alpha_high']})")
    if out["alpha_jump"] <= 0:
        raise ValueError(f"alpha_jump must be > 0, got {p['alpha_jump']}")
    band = out["alpha_high"] - out["alpha_low"]
    if not 0 <= out["hysteresis"] < band:
        # at or beyond the band, alpha_low could only clear where alpha_high fires (and vice versa)
        raise ValueError(f"hysteresis must be >= 0 and below alpha_high - alpha_low = {band:g}, got {p['hysteresis']}")
    for name in ("overreg_sr_ratio", "overreg_softrank_ratio", "overreg_bulk_ratio", "overreg_hysteresis"):
        out[name] = _real(name, p[name])
    if not 0 < out["overreg_sr_ratio"] < 1:
        raise ValueError(f"overreg_sr_ratio must be in (0, 1), got {p['overreg_sr_ratio']}")
    if not 0 < out["overreg_softrank_ratio"] <= 1:
        raise ValueError(f"overreg_softrank_ratio must be in (0, 1], got {p['overreg_softrank_ratio']}")
    if not out["overreg_bulk_ratio"] > 0:
        raise ValueError(f"overreg_bulk_ratio must be > 0, got {p['overreg_bulk_ratio']}")
    if out["overreg_hysteresis"] < 0 or out["overreg_sr_ratio"] * (1 + out["overreg_hysteresis"]) > 1:
        # beyond that, a squeezed layer could only clear above its own early stable rank
        raise ValueError(
            f"overreg_hysteresis must be >= 0 with overreg_sr_ratio * (1 + overreg_hysteresis) <= 1, "
            f"got {p['overreg_hysteresis']} (overreg_sr_ratio {p['overreg_sr_ratio']})"
        )
    for name in ("alpha_low_patience", "phase_patience", "overreg_ref_snapshots", "overreg_patience"):
        out[name] = _count(name, p[name], 1)
    for name in ("warmup", "cooldown", "trap_threshold", "alpha_min_evals", "alpha_min_tail", "collapse_early"):
        out[name] = _count(name, p[name], 0)
    for name in ("collapse_min_evals", "overreg_min_evals"):
        out[name] = _count(name, p[name], 1)

    out["warn"] = bool(warn)
    out["log_alerts"] = bool(log_alerts)
    if on_alert is not None and not callable(on_alert):
        raise TypeError(f"on_alert must be callable, got {type(on_alert).__name__}")
    out["on_alert"] = on_alert
    return out


def build_rules(cfg: dict[str, Any]) -> tuple[Rule, ...]:
    """The enabled rule objects, in evaluation order, from checked settings."""
    make = {
        "non_finite": lambda: NonFinite(),
        "rank_collapse": lambda: RankCollapse(
            cfg["collapse_tol"],
            cfg["collapse_fraction"],
            cfg["collapse_min_evals"],
            cfg["collapse_sr"],
            cfg["collapse_softrank"],
            cfg["collapse_early"],
        ),
        "over_regularization": lambda: OverRegularization(
            cfg["overreg_sr_ratio"],
            cfg["overreg_softrank_ratio"],
            cfg["overreg_bulk_ratio"],
            cfg["overreg_ref_snapshots"],
            cfg["overreg_patience"],
            cfg["overreg_hysteresis"],
            cfg["overreg_min_evals"],
            cfg["overreg_vanish_ratio"],
        ),
        "alpha_low": lambda: AlphaLow(
            cfg["alpha_low"],
            cfg["alpha_low_patience"],
            cfg["hysteresis"],
            cfg["alpha_min_evals"],
            cfg["alpha_min_tail"],
        ),
        # alpha_high: no minimum beyond the analysis' own -- a small tail widens sigma, which only silences it
        "alpha_high": lambda: AlphaHigh(cfg["alpha_high"], cfg["warmup"], cfg["hysteresis"], 0, 1),
        "alpha_jump": lambda: AlphaJump(
            cfg["alpha_jump"],
            cfg["warmup"],
            cfg["cooldown"],
            cfg["alpha_low"],
            cfg["alpha_high"],
            cfg["alpha_min_evals"],
            cfg["alpha_min_tail"],
        ),
        "phase_change": lambda: PhaseChange(cfg["phase_patience"]),
        "correlation_trap": lambda: CorrelationTrap(cfg["trap_threshold"]),
    }
    return tuple(make[t.id]() for t in RULE_TYPES if t.id in cfg["rules"])
