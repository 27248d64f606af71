"""Early-warning alerts evaluated on every snapshot.

:class:`AlertRules` reads each :class:`~wwmonitor.records.SnapshotResult`
(in step order, in the monitor's worker thread, *before* the sinks see it)
and returns the :class:`~wwmonitor.records.Alert` objects that fired.  The
sinks then carry them on: the run store keeps them, TensorBoard gets a text
entry, W&B a ``run.alert``.  Here, in :meth:`AlertRules.evaluate`, each fired
alert also gets a log line (logger ``"wwmonitor.alerts"``), a Python
:class:`WeightWatcherAlert` warning (severity ``warning``/``error`` only),
and is passed to the user's ``on_alert`` function.

Rules (ids in parentheses; all per layer unless noted)
------------------------------------------------------
``rank_collapse``
    Onset of rank collapse (over-regularisation).  The *collapsed fraction* is
    ``f0 = max(#{σ_i < collapse_tol · σ_max} / M, rank_loss / M)`` where
    ``σ_i² = N·λ_i`` are the squared singular values (eigenvalues of ``WᵀW``),
    read from the snapshot's λ-axis ESD (the ratio is axis-free).  Fires when
    ``f0 >= collapse_fraction`` or the layer's phase is ``"rank-collapse"``
    (or all weights are zero); clears when ``f0 < collapse_fraction / 2`` and
    the phase is no longer rank-collapse.  Defaults (``1e-4``, ``0.10``)
    match the phase classifier in :mod:`wwmonitor.phases`.
``alpha_low``
    ``alpha < alpha_low`` (default 2, weightwatcher's "over-trained") for
    ``alpha_low_patience`` consecutive snapshots; clears once
    ``alpha >= alpha_low + hysteresis``.
``alpha_high``
    ``alpha > alpha_high`` (default 6, "under-trained") once the layer has
    been seen in ``warmup`` snapshots; clears once
    ``alpha <= alpha_high - hysteresis``.
``phase_change``
    The layer's phase differs from its last confirmed phase for
    ``phase_patience`` consecutive snapshots (severity ``info``: phase changes
    are normal in healthy training; they are logged, not warned about).
``alpha_jump``
    ``|alpha_t - alpha_{t-1}| >= alpha_jump`` between consecutive snapshots,
    after ``warmup`` snapshots, with at least one of the two alphas
    ``<= alpha_high`` (alphas of random-like layers are noisy and carry no
    signal).  After firing, the layer is quiet for ``cooldown`` snapshots.
``non_finite``
    The layer's weights contain NaN/Inf (``status == "non_finite"``);
    severity ``error``; clears when the weights are finite again.
``correlation_trap`` (off by default)
    Correlation traps: spikes of the *element-randomised* matrix above the MP
    edge ``λ+ + TW`` (weightwatcher's "randomize" diagnostic; large single
    entries survive the shuffle, true correlations do not).  Computed by
    :func:`correlation_traps` on the weights; the rule reads the count from
    ``LayerMetrics.extra["num_traps"]`` (filled by :meth:`AlertRules.inspect_weights`).

Hysteresis: a stateful rule fires on the transition inactive -> active and
cannot fire again for that layer until its clear condition holds, so a
metric flapping around a threshold produces one alert, not one per snapshot.

Stopping: alerts of the rules named in ``stop_on`` carry
``stop_training=True``; the monitor then sets ``should_stop`` and the
callbacks stop the fit (Lightning ``trainer.should_stop``, decided
collectively under DDP; Keras ``model.stop_training``).
"""
from __future__ import annotations

import logging
import math
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Optional, Union

import numpy as np

from .metrics import LayerMetrics
from .records import Alert, SnapshotResult

__all__ = [
    "AlertRules",
    "WeightWatcherAlert",
    "RULES",
    "correlation_traps",
    "resolve_alerts",
]

log = logging.getLogger("wwmonitor.alerts")

#: every rule id understood by :class:`AlertRules`
RULES: tuple[str, ...] = (
    "rank_collapse",
    "alpha_low",
    "alpha_high",
    "phase_change",
    "alpha_jump",
    "non_finite",
    "correlation_trap",
)

_SEVERITY = {
    "rank_collapse": "warning",
    "alpha_low": "warning",
    "alpha_high": "warning",
    "phase_change": "info",
    "alpha_jump": "warning",
    "non_finite": "error",
    "correlation_trap": "warning",
}


class WeightWatcherAlert(UserWarning):
    """Warning category of alerts (filter with ``warnings.filterwarnings``)."""


@dataclass
class _LayerState:
    seen: int = 0
    active: dict[str, bool] = field(default_factory=dict)
    low_count: int = 0
    prev_alpha: Optional[float] = None
    phase: Optional[str] = None
    cand_phase: Optional[str] = None
    cand_count: int = 0
    cooldown: int = 0


class AlertRules:
    """Configurable alert rules with hysteresis (see the module docstring).

    Parameters
    ----------
    rules:
        Rule ids to evaluate (default: all but ``correlation_trap``).
    collapse_tol, collapse_fraction:
        Rank collapse: an eigenvalue counts as collapsed when
        ``σ_i < collapse_tol · σ_max``; the rule fires when at least
        ``collapse_fraction`` of the ``M`` eigenvalues are collapsed.
    alpha_low, alpha_low_patience:
        Over-trained threshold and the number of consecutive snapshots it
        must hold.
    alpha_high, warmup:
        Under-trained threshold, applied after the layer was seen in
        ``warmup`` snapshots (``warmup`` also gates ``alpha_jump``).
    alpha_jump, cooldown:
        Minimum absolute alpha change between consecutive snapshots, and the
        number of snapshots a layer stays quiet after a jump alert.
    hysteresis:
        Margin (in alpha units) a metric must move back past the threshold
        before the alpha rules can fire again.
    phase_patience:
        Snapshots a new phase must persist before a phase change is reported.
    trap_threshold:
        Number of correlation traps that fires ``correlation_trap``.
    stop_on:
        Rule ids whose alerts request that training stop.
    warn, log_alerts:
        Emit a :class:`WeightWatcherAlert` Python warning (severity
        ``warning``/``error``) / a log line (all severities) per alert.
    on_alert:
        ``f(alert)`` called for every fired alert; its exceptions are logged
        and never reach training.
    """

    def __init__(
        self,
        *,
        rules: Optional[Iterable[str]] = None,
        collapse_tol: float = 1e-4,
        collapse_fraction: float = 0.10,
        alpha_low: float = 2.0,
        alpha_low_patience: int = 3,
        alpha_high: float = 6.0,
        warmup: int = 3,
        alpha_jump: float = 1.0,
        cooldown: int = 2,
        hysteresis: float = 0.2,
        phase_patience: int = 1,
        trap_threshold: int = 1,
        stop_on: Iterable[str] = (),
        warn: bool = True,
        log_alerts: bool = True,
        on_alert: Optional[Callable[[Alert], Any]] = None,
    ) -> None:
        chosen = tuple(r for r in RULES if r != "correlation_trap") if rules is None else tuple(rules)
        _check_rule_ids(chosen, "rules")
        stop = tuple(stop_on)
        _check_rule_ids(stop, "stop_on")
        if not 0 < collapse_tol < 1:
            raise ValueError(f"collapse_tol must be in (0, 1), got {collapse_tol}")
        if not 0 < collapse_fraction <= 1:
            raise ValueError(f"collapse_fraction must be in (0, 1], got {collapse_fraction}")
        for nm, v in (("alpha_low_patience", alpha_low_patience), ("phase_patience", phase_patience)):
            if int(v) < 1:
                raise ValueError(f"{nm} must be >= 1, got {v}")
        for nm, v in (("warmup", warmup), ("cooldown", cooldown), ("trap_threshold", trap_threshold)):
            if int(v) < 0:
                raise ValueError(f"{nm} must be >= 0, got {v}")
        if alpha_jump <= 0 or hysteresis < 0:
            raise ValueError("alpha_jump must be > 0 and hysteresis >= 0")
        if alpha_low >= alpha_high:
            raise ValueError(f"alpha_low ({alpha_low}) must be below alpha_high ({alpha_high})")
        if on_alert is not None and not callable(on_alert):
            raise TypeError(f"on_alert must be callable, got {type(on_alert).__name__}")
        self.rules = chosen
        self.collapse_tol = float(collapse_tol)
        self.collapse_fraction = float(collapse_fraction)
        self.alpha_low = float(alpha_low)
        self.alpha_low_patience = int(alpha_low_patience)
        self.alpha_high = float(alpha_high)
        self.warmup = int(warmup)
        self.alpha_jump = float(alpha_jump)
        self.cooldown = int(cooldown)
        self.hysteresis = float(hysteresis)
        self.phase_patience = int(phase_patience)
        self.trap_threshold = int(trap_threshold)
        self.stop_on = stop
        self.warn = bool(warn)
        self.log_alerts = bool(log_alerts)
        self.on_alert = on_alert
        self._state: dict[str, _LayerState] = {}
        self.fired: list[Alert] = []

    # ------------------------------------------------------------------ API
    def __repr__(self) -> str:
        return f"AlertRules(rules={self.rules}, stop_on={self.stop_on})"

    def evaluate(self, result: SnapshotResult) -> list[Alert]:
        """Evaluate every rule on ``result`` (call in step order) and act on the fired alerts."""
        out: list[Alert] = []
        for lm in result.layers:
            try:
                out.extend(self._evaluate_layer(lm, result))
            except Exception as exc:  # a rule bug must never stop the worker
                log.error("alert rules failed on layer %r at step %s: %r", lm.name, result.step, exc)
        for a in out:
            self._act(a)
        self.fired.extend(out)
        return out

    __call__ = evaluate

    def inspect_weights(self, name: str, W: Any, lm: LayerMetrics, *, seed: int = 0) -> None:
        """Compute the correlation-trap count of ``W`` into ``lm.extra["num_traps"]``.

        Only does work when the ``correlation_trap`` rule is enabled.
        """
        if "correlation_trap" in self.rules and lm.status == "ok":
            lm.extra["num_traps"] = correlation_traps(W, seed=seed, name=name)["num_traps"]

    def analyze_fn(self) -> Optional[Callable[..., LayerMetrics]]:
        """A per-matrix analysis function for :class:`wwmonitor.Monitor` (``analyze_fn=``) that also
        counts correlation traps, or ``None`` when the ``correlation_trap`` rule is off.

        It runs the monitor's default analysis, then :meth:`inspect_weights` on the
        same host copy of the weights, in the worker thread.
        """
        if "correlation_trap" not in self.rules:
            return None
        from .monitor.worker import default_analyze

        def analyze(W: Any, name: str, typ: str, scale: float, options: Any) -> LayerMetrics:
            lm = default_analyze(W, name, typ, scale, options)
            try:
                self.inspect_weights(name, W, lm)
            except Exception as exc:  # a failed trap check never loses the layer's metrics
                log.debug("correlation traps failed for %s: %r", name, exc)
            return lm

        return analyze

    def reset(self) -> None:
        """Forget all per-layer state (hysteresis, counters)."""
        self._state.clear()
        self.fired.clear()

    def state_dict(self) -> dict[str, Any]:
        """JSON-able state, so a resumed run keeps its hysteresis and counters."""
        return {
            name: {
                "seen": s.seen,
                "active": dict(s.active),
                "low_count": s.low_count,
                "prev_alpha": s.prev_alpha,
                "phase": s.phase,
                "cand_phase": s.cand_phase,
                "cand_count": s.cand_count,
                "cooldown": s.cooldown,
            }
            for name, s in self._state.items()
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._state = {
            name: _LayerState(
                seen=int(d.get("seen", 0)),
                active={str(k): bool(v) for k, v in d.get("active", {}).items()},
                low_count=int(d.get("low_count", 0)),
                prev_alpha=d.get("prev_alpha"),
                phase=d.get("phase"),
                cand_phase=d.get("cand_phase"),
                cand_count=int(d.get("cand_count", 0)),
                cooldown=int(d.get("cooldown", 0)),
            )
            for name, d in state.items()
        }

    # -------------------------------------------------------------- rules
    def _evaluate_layer(self, lm: LayerMetrics, res: SnapshotResult) -> list[Alert]:
        st = self._state.setdefault(lm.name, _LayerState())
        st.seen += 1
        fired: list[Alert] = []
        on = self.rules

        def alert(rule: str, message: str, value: Optional[float] = None) -> None:
            fired.append(
                Alert(
                    step=int(res.step),
                    epoch=res.epoch,
                    rule=rule,
                    severity=_SEVERITY[rule],
                    message=message,
                    layer=lm.name,
                    value=None if value is None else float(value),
                    stop_training=rule in self.stop_on,
                )
            )

        def edge(rule: str, cond: bool, clear: bool) -> bool:
            """Hysteresis: True on the inactive -> active transition."""
            was = st.active.get(rule, False)
            if not was and cond:
                st.active[rule] = True
                return True
            if was and clear:
                st.active[rule] = False
            return False

        where = f"layer {lm.name!r} at step {res.step}" + (f" (epoch {res.epoch})" if res.epoch is not None else "")

        # non-finite weights ------------------------------------------------
        bad = lm.status == "non_finite"
        if "non_finite" in on and edge("non_finite", bad, not bad):
            alert("non_finite", f"{where}: weights contain NaN/Inf")
        if bad:
            return fired

        # rank collapse -------------------------------------------------------
        if "rank_collapse" in on:
            frac = self.collapsed_fraction(lm, res.esds.get(lm.name))
            is_phase = lm.phase == "rank-collapse" or lm.status == "zero_matrix"
            cond = is_phase or (frac is not None and frac >= self.collapse_fraction)
            clear = not is_phase and (frac is None or frac < self.collapse_fraction / 2)
            if edge("rank_collapse", cond, clear):
                pct = f"{frac:.0%}" if frac is not None else "n/a"
                alert(
                    "rank_collapse",
                    f"{where}: rank collapse onset, {pct} of eigenvalues numerically zero "
                    f"(sigma < {self.collapse_tol:g} sigma_max); phase {lm.phase}",
                    frac,
                )

        a = lm.alpha if lm.alpha is not None and math.isfinite(lm.alpha) else None

        # alpha < 2 held k snapshots ------------------------------------------
        if "alpha_low" in on:
            if a is not None and a < self.alpha_low:
                st.low_count += 1
            elif a is None or a >= self.alpha_low + self.hysteresis:
                st.low_count = 0
            cond = st.low_count >= self.alpha_low_patience
            clear = a is None or a >= self.alpha_low + self.hysteresis
            if edge("alpha_low", cond, clear):
                alert(
                    "alpha_low",
                    f"{where}: alpha {a:.2f} < {self.alpha_low:g} for {st.low_count} snapshots "
                    "(over-trained / over-regularised)",
                    a,
                )

        # alpha > 6 after warm-up -------------------------------------------
        if "alpha_high" in on:
            warm = st.seen > self.warmup
            cond = warm and a is not None and a > self.alpha_high
            clear = a is not None and a <= self.alpha_high - self.hysteresis
            if edge("alpha_high", cond, clear):
                alert("alpha_high", f"{where}: alpha {a:.2f} > {self.alpha_high:g} after warm-up (under-trained)", a)

        # sudden alpha jump -----------------------------------------------
        if "alpha_jump" in on:
            prev = st.prev_alpha
            if st.cooldown > 0:
                st.cooldown -= 1
            elif (
                st.seen > self.warmup
                and a is not None
                and prev is not None
                and abs(a - prev) >= self.alpha_jump
                and min(a, prev) <= self.alpha_high
            ):
                alert("alpha_jump", f"{where}: alpha jumped {prev:.2f} -> {a:.2f}", a - prev)
                st.cooldown = self.cooldown
        st.prev_alpha = a

        # phase change ------------------------------------------------------
        if "phase_change" in on and lm.phase:
            if st.phase is None:
                st.phase = lm.phase
            elif lm.phase == st.phase:
                st.cand_phase, st.cand_count = None, 0
            else:
                if lm.phase == st.cand_phase:
                    st.cand_count += 1
                else:
                    st.cand_phase, st.cand_count = lm.phase, 1
                if st.cand_count >= self.phase_patience:
                    alert("phase_change", f"{where}: phase {st.phase} -> {lm.phase} ({lm.phase_reason})")
                    st.phase, st.cand_phase, st.cand_count = lm.phase, None, 0

        # correlation traps -------------------------------------------------
        if "correlation_trap" in on:
            n = lm.extra.get("num_traps")
            if n is not None:
                cond = int(n) >= max(self.trap_threshold, 1)
                if edge("correlation_trap", cond, not cond):
                    alert("correlation_trap", f"{where}: {int(n)} correlation trap(s) survive element randomisation", n)
        return fired

    def collapsed_fraction(self, lm: LayerMetrics, esd: Optional[np.ndarray]) -> Optional[float]:
        """``max(#{σ_i < collapse_tol·σ_max}/M, rank_loss/M)`` or ``None`` if unknown."""
        fracs = []
        if esd is not None and np.size(esd):
            ev = np.asarray(esd, dtype=np.float64)
            top = float(ev.max())
            if top > 0:
                fracs.append(float(np.count_nonzero(ev < (self.collapse_tol**2) * top)) / ev.size)
            else:
                fracs.append(1.0)
        if lm.rank_loss is not None and lm.M:
            fracs.append(lm.rank_loss / lm.M)
        return max(fracs) if fracs else None

    # -------------------------------------------------------------- actions
    def _act(self, a: Alert) -> None:
        text = f"[wwmonitor] {a.severity.upper()} {a.rule}: {a.message}"
        if self.log_alerts:
            log.log({"info": logging.INFO, "warning": logging.WARNING}.get(a.severity, logging.ERROR), text)
        if self.warn and a.severity != "info":
            warnings.warn(text, WeightWatcherAlert, stacklevel=2)
        if self.on_alert is not None:
            try:
                self.on_alert(a)
            except Exception as exc:
                log.error("on_alert callback raised %r for alert %s", exc, a.rule)


def _check_rule_ids(ids: tuple[str, ...], arg: str) -> None:
    bad = [r for r in ids if r not in RULES]
    if bad:
        raise ValueError(f"{arg}: unknown alert rule(s) {bad}; known rules: {list(RULES)}")


def resolve_alerts(alerts: Union[None, bool, str, AlertRules, dict], *, stop_on: Iterable[str] = ()) -> Optional[AlertRules]:
    """Turn a callback's ``alerts=`` argument into :class:`AlertRules` (or ``None``).

    ``"default"`` / ``True``: the default rules; a ``dict``: keyword arguments
    for :class:`AlertRules`; ``None`` / ``False`` / ``"off"``: no alerts.
    ``stop_on`` (if given) overrides the rules' ``stop_on``.
    """
    stop = tuple(stop_on)
    if alerts is None or alerts is False or alerts == "off":
        if stop:
            raise ValueError("stop_on needs alerts; pass alerts='default' (or AlertRules)")
        return None
    if alerts is True or alerts == "default":
        return AlertRules(stop_on=stop)
    if isinstance(alerts, dict):
        kw = dict(alerts)
        if stop:
            kw["stop_on"] = stop
        return AlertRules(**kw)
    if isinstance(alerts, AlertRules):
        if stop:
            _check_rule_ids(stop, "stop_on")
            alerts.stop_on = stop
        return alerts
    if hasattr(alerts, "evaluate"):
        return alerts  # type: ignore[return-value]
    raise TypeError(f"alerts must be 'default', None, a dict or an AlertRules, got {alerts!r}")


def correlation_traps(W: Any, *, seed: int = 0, name: str = "W") -> dict[str, Any]:
    """Correlation traps of ``W``: spikes of its element-randomised copy.

    The entries of ``W`` (2-D, ``N x M`` after orienting) are shuffled, which
    destroys all correlations but keeps the entry distribution.  By MP theory
    the eigenvalues of ``X_r = W_rᵀW_r/N`` then lie below
    ``λ+ = s²(1 + 1/√Q)²`` (``s²`` the entry variance, ``Q = N/M``) up to the
    margin ``tw = 3·s²·(1 + 1/√Q)^(4/3)·Q^(-1/2)·M^(-2/3)``: three Tracy-Widom
    scales of the top eigenvalue of a white Wishart matrix (Johnstone 2001);
    TW1 exceeds 3 with probability < 0.3%.  Eigenvalues of ``X_r``
    above ``λ+ + tw`` are *traps*: a few very large entries that survive
    randomisation.  Returns ``{"num_traps", "lambda_plus", "tw", "max_rand"}``.
    """
    A = np.asarray(W, dtype=np.float64)
    if A.ndim == 3:  # pooled conv slices: randomise each slice and pool
        counts = [correlation_traps(A[k], seed=seed + k, name=f"{name}[{k}]") for k in range(A.shape[0])]
        return {
            "num_traps": int(sum(c["num_traps"] for c in counts)),
            "lambda_plus": float(np.mean([c["lambda_plus"] for c in counts])),
            "tw": float(np.mean([c["tw"] for c in counts])),
            "max_rand": float(max(c["max_rand"] for c in counts)),
        }
    if A.ndim != 2 or min(A.shape) == 0:
        raise ValueError(f"layer {name!r}: correlation_traps needs a 2-D matrix, got shape {A.shape}")
    if not np.isfinite(A).all():
        raise ValueError(f"layer {name!r}: non-finite weights")
    if A.shape[0] < A.shape[1]:
        A = A.T
    N, M = A.shape
    Q = N / M
    rng = np.random.default_rng(seed)
    R = rng.permutation(A.ravel()).reshape(N, M)
    R = R - R.mean()
    s2 = float(R.var())
    ev = np.linalg.eigvalsh(R.T @ R / N)
    lam_plus = s2 * (1 + 1 / math.sqrt(Q)) ** 2
    tw = 3.0 * s2 * (1 + 1 / math.sqrt(Q)) ** (4 / 3) * Q ** (-0.5) * M ** (-2 / 3)
    return {
        "num_traps": int(np.count_nonzero(ev > lam_plus + tw)) if s2 > 0 else 0,
        "lambda_plus": lam_plus,
        "tw": tw,
        "max_rand": float(ev.max()),
    }
