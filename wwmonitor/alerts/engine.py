"""The rule engine: :class:`AlertRules` (state, evaluation, errors, actions) and :func:`resolve_alerts`."""

from __future__ import annotations

import logging
from typing import Any, Callable, Iterable, Optional, Union

import numpy as np

from ..metrics import CARRIED, LayerMetrics
from ..records import Alert, SnapshotResult
from .base import Firing, LayerContext, LayerState, Rule
from .config import DEFAULTS, build_rules, check_config, check_rule_ids
from .output import emit
from .rules import RULE_TYPES, collapsed_fraction

__all__ = ["AlertRules", "resolve_alerts", "OnError"]

log = logging.getLogger("wwmonitor.alerts")

#: ``on_error(where, what, exc)``: ``where = "alert:<rule_id>"``, ``what`` names the step and the layer
OnError = Callable[[str, str, BaseException], Any]

#: every per-layer field of every rule: name -> (default, converter)
_FIELDS: dict[str, tuple[Any, Callable[[Any], Any]]] = {k: v for t in RULE_TYPES for k, v in t.state.items()}
#: the fields of wwmonitor 0.1's state format, always written by :meth:`AlertRules.state_dict`; fields of
#: rules added later are written only when they differ from their default, so a layer those rules never
#: touched keeps exactly the old format
_LEGACY_FIELDS = ("low_count", "prev_alpha", "phase", "cand_phase", "cand_count", "cooldown")
assert set(_LEGACY_FIELDS) <= set(_FIELDS)
#: the constructor's arguments; assigning one of them later re-checks it and rebuilds the rules
_SETTINGS = ("rules", "stop_on", *DEFAULTS, "warn", "log_alerts", "on_alert")


class AlertRules:
    """Configurable alert rules with hysteresis (see :mod:`wwmonitor.alerts` for the rules).

    Parameters
    ----------
    rules:
        Rule ids to evaluate (default: all but ``correlation_trap``).
    collapse_tol, collapse_fraction:
        Rank collapse: an eigenvalue counts as collapsed when
        ``σ_i < collapse_tol · σ_max`` (``0 < collapse_tol < 1``); the rule
        fires when at least ``collapse_fraction`` (in ``(0, 1]``) of the layer's
        eigenvalues are collapsed (all ``K·M`` of a pooled conv layer).
    alpha_low, alpha_low_patience:
        Over-trained threshold and the number (``>= 1``) of consecutive
        snapshots it must hold.
    alpha_high, warmup:
        Under-trained threshold (finite, above ``alpha_low``), applied after the
        layer was seen in ``warmup`` (``>= 0``) snapshots (``warmup`` also gates
        ``alpha_jump``).
    alpha_jump, cooldown:
        Minimum absolute alpha change (finite, ``> 0``) between consecutive
        snapshots, and the number of snapshots (``>= 0``) a layer stays quiet
        after a jump alert.
    hysteresis:
        Margin (in alpha units, ``0 <= hysteresis < alpha_high - alpha_low``)
        a metric must move back past the threshold before the alpha rules can
        fire again.
    phase_patience:
        Snapshots (``>= 1``) a new phase must persist before a phase change is reported.
    trap_threshold:
        Number of correlation traps that fires ``correlation_trap``.
    overreg_sr_ratio, overreg_softrank_ratio, overreg_bulk_ratio:
        ``over_regularization`` counts a snapshot as *squeezed* when the layer's
        stable rank is below ``overreg_sr_ratio`` (in ``(0, 1)``, default 0.22)
        times its early value, *and* its MP soft rank below
        ``overreg_softrank_ratio`` (in ``(0, 1]``, default 0.25) times its early
        value, *and* its mass outside the top direction (``Σλ - λ_max``) below
        ``overreg_bulk_ratio`` (``> 0``, default 0.8) times the layer's first
        snapshot's.
    overreg_vanish_ratio:
        ... or as *vanishing* when ``||W||_F²`` is below ``overreg_vanish_ratio``
        (``>= 0``, default 1e-3) times the first snapshot's.
    overreg_ref_snapshots, overreg_patience, overreg_hysteresis:
        The early values are the largest over the layer's first
        ``overreg_ref_snapshots`` (``>= 1``, default 3) analysed snapshots
        before the one compared; the condition must hold for
        ``overreg_patience`` (``>= 1``, default 2) consecutive snapshots; the
        alert clears once the stable rank is back above
        ``overreg_sr_ratio * (1 + overreg_hysteresis)`` of its early value
        (``overreg_hysteresis >= 0``, default 0.25, with that product ``<= 1``)
        and the layer does not vanish.
    collapse_sr, collapse_softrank, collapse_early:
        ``rank_collapse`` also fires when, at one of the layer's first
        ``collapse_early`` (``>= 0``, default 3) snapshots, its stable rank is
        at most ``collapse_sr`` (default 2) and its MP soft rank at most
        ``collapse_softrank`` (default 0.01): a collapse inside the first epoch.
    alpha_min_evals, alpha_min_tail, collapse_min_evals, overreg_min_evals:
        Minimum layer sizes below which a rule says nothing: ``alpha_low`` and
        ``alpha_jump`` need ``alpha_min_evals`` (default 100) eigenvalues and a
        fitted tail of ``alpha_min_tail`` (default 10); ``rank_collapse`` needs
        ``collapse_min_evals`` (``>= 1``, default 16) eigenvalues and
        ``over_regularization`` ``overreg_min_evals`` (``>= 1``, default 50).
    stop_on:
        Rule ids (each also in ``rules``) whose alerts request that training stop.
    warn:
        ``False`` (default): each alert is one log record on the
        ``wwmonitor.alerts`` logger (INFO/WARNING/ERROR by severity).
        ``True``: alerts of severity ``warning``/``error`` are a
        :class:`WeightWatcherAlert` Python warning *instead* of the log record
        (``info`` alerts stay log records).
    log_alerts:
        ``False``: no log record for the alerts (with ``warn=True`` the
        warnings still show).
    on_alert:
        ``f(alert)`` called for every fired alert; its exceptions are logged
        and never reach training.

    Every setting is checked (a meaningless one raises ``ValueError`` or
    ``TypeError`` naming it), also when assigned after construction.

    For the analyser: when :attr:`needs_weights` is true, call
    :meth:`inspect_weights` for every analysed matrix.  For the dispatcher:
    call :meth:`evaluate` for every result, in step order.
    """

    def __init__(  # long-function: the keyword signature lists every alert setting with its default
        self,
        *,
        rules: Optional[Iterable[str]] = None,
        collapse_tol: float = DEFAULTS["collapse_tol"],
        collapse_fraction: float = DEFAULTS["collapse_fraction"],
        alpha_low: float = DEFAULTS["alpha_low"],
        alpha_low_patience: int = DEFAULTS["alpha_low_patience"],
        alpha_high: float = DEFAULTS["alpha_high"],
        warmup: int = DEFAULTS["warmup"],
        alpha_jump: float = DEFAULTS["alpha_jump"],
        cooldown: int = DEFAULTS["cooldown"],
        hysteresis: float = DEFAULTS["hysteresis"],
        phase_patience: int = DEFAULTS["phase_patience"],
        trap_threshold: int = DEFAULTS["trap_threshold"],
        overreg_sr_ratio: float = DEFAULTS["overreg_sr_ratio"],
        overreg_softrank_ratio: float = DEFAULTS["overreg_softrank_ratio"],
        overreg_bulk_ratio: float = DEFAULTS["overreg_bulk_ratio"],
        overreg_ref_snapshots: int = DEFAULTS["overreg_ref_snapshots"],
        overreg_patience: int = DEFAULTS["overreg_patience"],
        overreg_hysteresis: float = DEFAULTS["overreg_hysteresis"],
        alpha_min_evals: int = DEFAULTS["alpha_min_evals"],
        alpha_min_tail: int = DEFAULTS["alpha_min_tail"],
        collapse_min_evals: int = DEFAULTS["collapse_min_evals"],
        collapse_sr: float = DEFAULTS["collapse_sr"],
        collapse_softrank: float = DEFAULTS["collapse_softrank"],
        collapse_early: int = DEFAULTS["collapse_early"],
        overreg_vanish_ratio: float = DEFAULTS["overreg_vanish_ratio"],
        overreg_min_evals: int = DEFAULTS["overreg_min_evals"],
        stop_on: Iterable[str] = (),
        warn: bool = False,
        log_alerts: bool = True,
        on_alert: Optional[Callable[[Alert], Any]] = None,
    ) -> None:
        self._configure(
            dict(
                rules=rules,
                collapse_tol=collapse_tol,
                collapse_fraction=collapse_fraction,
                alpha_low=alpha_low,
                alpha_low_patience=alpha_low_patience,
                alpha_high=alpha_high,
                warmup=warmup,
                alpha_jump=alpha_jump,
                cooldown=cooldown,
                hysteresis=hysteresis,
                phase_patience=phase_patience,
                trap_threshold=trap_threshold,
                overreg_sr_ratio=overreg_sr_ratio,
                overreg_softrank_ratio=overreg_softrank_ratio,
                overreg_bulk_ratio=overreg_bulk_ratio,
                overreg_ref_snapshots=overreg_ref_snapshots,
                overreg_patience=overreg_patience,
                overreg_hysteresis=overreg_hysteresis,
                alpha_min_evals=alpha_min_evals,
                alpha_min_tail=alpha_min_tail,
                collapse_min_evals=collapse_min_evals,
                collapse_sr=collapse_sr,
                collapse_softrank=collapse_softrank,
                collapse_early=collapse_early,
                overreg_vanish_ratio=overreg_vanish_ratio,
                overreg_min_evals=overreg_min_evals,
                stop_on=stop_on,
                warn=warn,
                log_alerts=log_alerts,
                on_alert=on_alert,
            )
        )
        self._state: dict[str, LayerState] = {}
        #: failures per rule id (``"alerts"``: the engine itself) since construction or :meth:`reset`
        self.rule_errors: dict[str, int] = {}
        #: every alert fired so far
        self.fired: list[Alert] = []

    # ------------------------------------------------------------ settings
    rules: tuple[str, ...]
    stop_on: tuple[str, ...]
    warn: bool
    log_alerts: bool
    on_alert: Optional[Callable[[Alert], Any]]
    collapse_tol: float
    collapse_fraction: float
    alpha_low: float
    alpha_low_patience: int
    alpha_high: float
    warmup: int
    alpha_jump: float
    cooldown: int
    hysteresis: float
    phase_patience: int
    trap_threshold: int
    overreg_sr_ratio: float
    overreg_softrank_ratio: float
    overreg_bulk_ratio: float
    overreg_ref_snapshots: int
    overreg_patience: int
    overreg_hysteresis: float
    alpha_min_evals: int
    alpha_min_tail: int
    collapse_min_evals: int
    collapse_sr: float
    collapse_softrank: float
    collapse_early: int
    overreg_vanish_ratio: float
    overreg_min_evals: int
    # set by _configure (through __dict__, past __setattr__)
    _settings: dict[str, Any]
    _rules: tuple[Rule, ...]

    def _configure(self, settings: dict[str, Any]) -> None:
        cfg = check_config(**settings)
        self.__dict__.update(cfg)
        self.__dict__["_settings"] = cfg
        self.__dict__["_rules"] = build_rules(cfg)

    def __setattr__(self, name: str, value: Any) -> None:
        if name in _SETTINGS and "_settings" in self.__dict__:
            self._configure({**self._settings, name: value})
        else:
            object.__setattr__(self, name, value)

    def __repr__(self) -> str:
        return f"AlertRules(rules={self.rules}, stop_on={self.stop_on})"

    @property
    def needs_weights(self) -> bool:
        """True when an enabled rule needs the raw weight matrices (then call :meth:`inspect_weights`)."""
        return any(r.needs_weights for r in self._rules)

    # ------------------------------------------------------------ analyser
    def inspect_weights(self, name: str, W: np.ndarray, lm: LayerMetrics) -> dict[str, BaseException]:
        """Let every enabled rule that needs the weights read ``W`` (layer ``name``) into ``lm``.

        Called by the analyser, on its thread, for every analysed matrix when
        :attr:`needs_weights` is true (e.g. ``correlation_trap`` sets
        ``lm.num_traps``).  Keeps no state, so it is safe on any thread.
        Never raises: returns the rules that failed (rule id -> exception); the
        analyser puts them in ``SnapshotResult.inspect_errors`` and
        :meth:`evaluate` reports each like a failure of that rule on that
        layer.  Does nothing when no rule needs weights.
        """
        failed: dict[str, BaseException] = {}
        for rule in self._rules:
            if not rule.needs_weights:
                continue
            try:
                rule.inspect(name, W, lm)
            except Exception as exc:  # noqa: BLE001 - reported by evaluate(), never lost
                log.debug("alert rule %s: inspect_weights failed on layer %r", rule.id, name, exc_info=exc)
                exc.__traceback__ = None  # do not keep the analyser's frames (and the weights) alive
                failed[rule.id] = exc
        return failed

    # ---------------------------------------------------------- dispatcher
    def evaluate(self, result: SnapshotResult, on_error: Optional[OnError] = None) -> list[Alert]:
        """Evaluate every enabled rule on every layer of ``result`` (call in step order); act on the alerts.

        A layer carried forward unchanged (``status="carried"``, :mod:`wwmonitor.monitor.unchanged`) is not
        evaluated: its values are an earlier snapshot's, no new evidence, so no patience count, reference
        or first-snapshot value moves and an active alert stays as it was.

        A rule that raises on a layer is skipped for that layer only; the other
        rules and layers still run.  Each failing (rule, layer) is reported
        once: ``on_error("alert:<rule_id>", "step <step>, layer '<name>'", exc)``
        if given, else logged at ERROR on the ``wwmonitor.alerts`` logger the
        first time that rule fails (later failures at DEBUG); always counted
        in :attr:`rule_errors`.  Each fired alert is emitted once (see
        ``warn``), passed to ``on_alert`` and appended to :attr:`fired`.
        """
        out: list[Alert] = []
        for lm in result.layers:
            if getattr(lm, "status", "") == CARRIED:  # the same values again: no new evidence, state kept
                continue
            what = f"step {result.step}, layer {getattr(lm, 'name', '?')!r}"
            try:
                failed = self._report_inspect_errors(result.inspect_errors.pop(lm.name, None), what, on_error)
                st = self._state.get(lm.name)
                if st is None:
                    st = self._state[lm.name] = LayerState({k: d for k, (d, _) in _FIELDS.items()})
                st.seen += 1
                ctx = LayerContext(lm, result)
                bad = lm.status == "non_finite"
            except Exception as exc:  # noqa: BLE001 - a malformed layer never stops the others
                self._failed(None, what, exc, on_error)
                continue
            for rule in self._rules:
                if (bad and not rule.on_non_finite) or rule.id in failed:
                    continue  # a non-finite layer only gets the non_finite rule
                try:
                    fired = rule.check(ctx, st)
                    if fired is not None:
                        out.append(self._alert(rule, ctx, fired))
                except Exception as exc:  # noqa: BLE001 - one rule's bug never stops the others
                    self._failed(rule.id, what, exc, on_error)
        for a in out:
            self._act(a)
        self.fired.extend(out)
        return out

    __call__ = evaluate

    def _report_inspect_errors(
        self, errors: Optional[dict[str, BaseException]], what: str, on_error: Optional[OnError]
    ) -> set[str]:
        if not errors:
            return set()
        for rule_id, exc in errors.items():
            self._failed(str(rule_id), f"{what} (inspect_weights)", exc, on_error)
        return set(errors)

    def _failed(self, rule_id: Optional[str], what: str, exc: BaseException, on_error: Optional[OnError]) -> None:
        """Count and report one failure of ``rule_id`` (``None``: the engine itself) on one layer."""
        key = rule_id or "alerts"
        n = self.rule_errors[key] = self.rule_errors.get(key, 0) + 1
        where = f"alert:{rule_id}" if rule_id else "alerts"
        if on_error is not None:
            try:
                on_error(where, what, exc)
                return
            except Exception as e2:  # noqa: BLE001 - a broken handler: fall back to the log
                log.error("alert rules: on_error raised %r while reporting %s", e2, where)
        if n == 1:
            log.error(
                "alert rule %s failed at %s: %s: %s (this rule's further failures are logged at DEBUG)",
                key,
                what,
                type(exc).__name__,
                exc,
                exc_info=exc,
            )
        else:
            log.debug("alert rule %s failed at %s (failure %d): %r", key, what, n, exc)

    def _alert(self, rule: Rule, ctx: LayerContext, fired: Firing) -> Alert:
        return Alert(
            step=int(ctx.result.step),
            epoch=ctx.result.epoch,
            rule=rule.id,
            severity=rule.severity,
            message=fired.message,
            layer=ctx.lm.name,
            value=None if fired.value is None else float(fired.value),
            stop_training=rule.id in self.stop_on,
        )

    def _act(self, a: Alert) -> None:
        emit(a, warn=self.warn, log_alerts=self.log_alerts)
        if self.on_alert is not None:
            try:
                self.on_alert(a)
            except Exception as exc:  # noqa: BLE001 - the user's function never reaches training
                log.error("on_alert callback raised %r for alert %s", exc, a.rule)

    # --------------------------------------------------------------- state
    def reset(self) -> None:
        """Forget all per-layer state (hysteresis, counters), the fired alerts and the error counts."""
        self._state.clear()
        self.rule_errors.clear()
        self.fired.clear()

    def state_dict(self) -> dict[str, Any]:
        """JSON-able state, so a resumed run keeps its hysteresis and counters.

        ``{layer: {"seen", "active": {rule: bool}, "low_count", "prev_alpha",
        "phase", "cand_phase", "cand_count", "cooldown"}}`` (the format of
        wwmonitor 0.1's single-module ``alerts``), plus the fields of rules
        added since (``over_regularization``: ``overreg_ref_count``,
        ``overreg_sr_ref``, ``overreg_softrank_ref``, ``overreg_log_bulk_ref``,
        ``overreg_log_norm_first``, ``overreg_count``; ``alpha_jump``:
        ``alpha_hist``, its last usable ``[alpha, sigma]`` pairs) where they
        differ from their defaults.
        """
        return {
            name: {
                "seen": s.seen,
                "active": dict(s.active),
                **{
                    k: s.fields[k]
                    for k, (default, _) in _FIELDS.items()
                    if k in _LEGACY_FIELDS or s.fields[k] != default
                },
            }
            for name, s in self._state.items()
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` output (missing fields take their defaults, unknown ones are ignored)."""
        if not isinstance(state, dict):
            raise TypeError(f"state must be a dict from AlertRules.state_dict(), got {type(state).__name__}")
        new: dict[str, LayerState] = {}
        for name, d in state.items():
            fields = {}
            for k, (default, conv) in _FIELDS.items():
                v = d.get(k)
                fields[k] = default if v is None else conv(v)
            new[str(name)] = LayerState(
                fields,
                seen=int(d.get("seen") or 0),
                active={str(k): bool(v) for k, v in (d.get("active") or {}).items()},
            )
        self._state = new

    # ------------------------------------------------------------- helpers
    def collapsed_fraction(self, lm: LayerMetrics, esd: Optional[np.ndarray]) -> Optional[float]:
        """``max(#{σ_i < collapse_tol·σ_max}/n, rank_loss/n)`` or ``None`` (``n``: ``K·M`` for pooled conv)."""
        return collapsed_fraction(lm, esd, self.collapse_tol)


def resolve_alerts(
    alerts: Union[None, bool, str, AlertRules, dict], *, stop_on: Iterable[str] = ()
) -> Optional[AlertRules]:
    """Turn a callback's ``alerts=`` argument into :class:`AlertRules` (or ``None``).

    ``"default"`` / ``True``: the default rules; a ``dict``: keyword arguments
    for :class:`AlertRules`; ``None`` / ``False`` / ``"off"``: no alerts.
    ``stop_on`` (if given) overrides the rules' ``stop_on``.
    """
    stop = check_rule_ids(stop_on, "stop_on")
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
            alerts.stop_on = stop  # checked
        return alerts
    if hasattr(alerts, "evaluate"):
        return alerts  # type: ignore[return-value]
    raise TypeError(f"alerts must be 'default', None, a dict or an AlertRules, got {alerts!r}")
