"""wwmonitor inside Optuna studies: a spectral metric as the trials' intermediate values, for the pruners.

Install: ``pip install "wwmonitor[optuna]"``.

Optuna's pruners (``MedianPruner``, ``SuccessiveHalvingPruner``,
``HyperbandPruner`` ...) compare the values each trial reports with
``trial.report(value, step)`` at the same step.  :class:`SpectralPruning`
reports a wwmonitor summary (default ``mean_alpha``: the model-level mean
of the layers' power-law exponents) after each snapshot and asks
``trial.should_prune()``::

    import optuna
    from wwmonitor.integrations import optuna as wwoptuna

    def objective(trial):
        bs = trial.suggest_categorical("batch_size", [16, 32, 64, 128])
        model = build()
        with wwoptuna.trial_monitor(trial, model, run_dir=f"{OUT_DIR}/runs") as mon:
            pruning = wwoptuna.SpectralPruning(trial, mon)              # metric="mean_alpha"
            for epoch in range(EPOCHS):
                step = train_one_epoch(model, bs)
                mon.snapshot(step=step, epoch=epoch)
                err = 1 - evaluate(model)
                pruning.step(epoch, eval_metrics={"val_acc": 1 - err})  # raises optuna.TrialPruned
        return err

    study = optuna.create_study(direction="minimize", storage=f"sqlite:///{OUT_DIR}/study.db",
                                pruner=optuna.pruners.MedianPruner(n_startup_trials=2))
    study.optimize(objective, n_trials=8)

Then ``wwmonitor compare OUT_DIR`` finds the study's storage, each trial's
run store (the trial's user attribute ``wwmonitor_run_dir``, set by
:func:`trial_monitor`) and its parameters.

**Direction.** A pruner reads intermediate values in the *study's*
direction.  The spectral summaries are better when lower (heavy-tailed
self-regularization), so in a study that *minimizes* (a loss, an error)
they are reported as they are, and in a study that *maximizes* (an
accuracy) they are reported negated (``-mean_alpha``) -- ``negate=None``
(the default) decides so from ``trial.study.direction``; pass ``True`` or
``False`` to choose.  Keep in mind that a pruner then prunes on the
spectra, not on the objective: a trial whose layers stay random-like
(high alpha) at a step where others are already heavy-tailed is stopped.

With Lightning, :class:`SpectralPruningCallback` (a
:class:`~wwmonitor.callbacks.lightning.WeightWatcherCallback`) does the
same at the end of every epoch.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

import optuna

from ._common import PREFIX, _is_monitor, lower_is_better, metric_key, record_eval_metrics, ww_metrics
from .discovery import RUN_DIR_ATTR, discover_runs

# SpectralPruningCallback is built on first use by the module's __getattr__ (it needs lightning)
__all__ = [
    "RUN_DIR_ATTR",
    "SpectralPruning",
    "SpectralPruningCallback",  # noqa: F822
    "discover_runs",
    "trial_monitor",
    "trial_run_name",
]

log = logging.getLogger("wwmonitor")


def trial_run_name(trial: "optuna.trial.BaseTrial") -> str:
    """The run name of a trial: ``<study name>-trial0007``."""
    study = getattr(trial, "study", None)
    name = getattr(study, "study_name", None) or "study"
    return f"{name}-trial{int(trial.number):04d}"


def _check_trial(trial: Any, who: str) -> None:
    """``TypeError`` unless ``trial`` is a running Optuna trial (it reports, prunes and takes user attributes);
    ``ValueError`` when it has already finished."""
    needed = ("number", "params", "report", "should_prune", "set_user_attr")
    if not all(hasattr(trial, a) for a in needed):
        got = "None" if trial is None else type(trial).__name__
        hint = " (a Study: pass the trial your objective receives)" if isinstance(trial, optuna.Study) else ""
        raise TypeError(
            f"{who}: trial must be an optuna Trial (the argument of the objective function, or study.ask()), "
            f"got {got}{hint}"
        )
    state = _finished_state(trial)
    if state is not None:
        raise ValueError(
            f"{who}: trial {trial.number} has already finished (state {state}) and can take no more reports; "
            "call it inside the objective while the trial runs (or after study.ask(), before study.tell())"
        )


def _finished_state(trial: Any) -> Optional[str]:
    """The state's name when ``trial`` has finished, else ``None`` (also when it cannot be told)."""
    state = getattr(trial, "state", None)  # FrozenTrial
    if state is None:
        storage, tid = getattr(trial, "storage", None), getattr(trial, "_trial_id", None)
        try:
            state = storage.get_trial(tid).state if storage is not None and tid is not None else None
        except Exception:  # noqa: BLE001 - an unknown trial type: setting the user attribute will tell
            return None
    return state.name if isinstance(state, optuna.trial.TrialState) and state.is_finished() else None


def _mark(trial: Any, monitor: Any) -> None:
    """Set the trial's :data:`RUN_DIR_ATTR` user attribute to the monitor's run folder (absolute)."""
    trial.set_user_attr(RUN_DIR_ATTR, str(Path(monitor.run_dir).resolve()))


def trial_monitor(
    trial: "optuna.trial.Trial",
    model: Any = None,
    *,
    run_dir: Any = "wwmonitor-runs",
    run_name: Optional[str] = None,
    config: Optional[Mapping[str, Any]] = None,
    **monitor_kwargs: Any,
) -> Any:
    """A :class:`wwmonitor.Monitor` for ``trial``, its run folder recorded in the trial's user attributes.

    ``run_name`` defaults to :func:`trial_run_name`; ``config`` to the parameters suggested so far
    (``trial.params``; suggest them before calling this), merged under a ``config`` given.  Put
    ``run_dir`` under the folder of the study's SQLite storage so that ``wwmonitor compare`` on that folder
    also finds moved sweeps.  Other arguments go to ``Monitor``.

    ``trial`` that is not an Optuna trial is a ``TypeError``; a trial that has already finished is a
    ``ValueError``, raised before any monitor is created.  Should recording the run folder in the trial
    fail anyway, the monitor is closed before the error propagates (no threads or run lock left behind).
    """
    from ..monitor import Monitor

    _check_trial(trial, "trial_monitor")
    cfg = {**dict(trial.params), **dict(config or {})}
    mon = Monitor(model, run_dir, run_name=run_name or trial_run_name(trial), config=cfg, **monitor_kwargs)
    try:
        _mark(trial, mon)
    except BaseException:
        mon.close()
        raise
    return mon


def _sign(trial: Any, metric: str, negate: Optional[bool]) -> float:
    """-1 when the metric is reported negated: asked for, or (``negate=None``) a lower-is-better summary in a
    maximizing study; otherwise +1 (counts such as ``phase_count/...`` are never negated automatically)."""
    if negate is not None:
        return -1.0 if negate else 1.0
    study = getattr(trial, "study", None)
    try:
        maximize = study is not None and study.direction == optuna.study.StudyDirection.MAXIMIZE
    except RuntimeError:  # a multi-objective study: Optuna's pruners do not support it anyway
        maximize = False
    return -1.0 if maximize and lower_is_better(metric) else 1.0


class SpectralPruning:
    """Report a spectral summary of ``monitor`` to ``trial`` after each snapshot; prune when Optuna says so.

    ``metric`` is a key of :func:`~wwmonitor.integrations.ww_metrics` with or without its ``ww/`` prefix
    (``"mean_alpha"``, ``"mean_stable_rank"``, ``"phase_count/heavy-tailed"`` ...).  ``negate``: see the
    module doc (``None``: negate the lower-is-better summaries in a maximizing study).  ``record_eval``
    stores the ``eval_metrics`` given to :meth:`step` in the run store (``wwmonitor compare`` ranks the
    runs' spectra against their ``val_*`` entries).  A ``trial`` that is not a running Optuna trial or a
    ``monitor`` that is not a :class:`wwmonitor.Monitor` is refused at once (``TypeError``/``ValueError``).
    """

    def __init__(
        self,
        trial: "optuna.trial.Trial",
        monitor: Any,
        *,
        metric: str = "mean_alpha",
        negate: Optional[bool] = None,
        flush_timeout: Optional[float] = 120.0,
        record_eval: bool = True,
    ) -> None:
        _check_trial(trial, "SpectralPruning")
        if not _is_monitor(monitor):
            raise TypeError(
                "SpectralPruning: monitor must be a wwmonitor.Monitor (e.g. from trial_monitor(trial, model)), "
                f"got {'None' if monitor is None else type(monitor).__name__}"
            )
        self.trial = trial
        self.monitor = monitor
        self.metric = metric_key(metric)
        self.sign = _sign(trial, self.metric, negate)
        self.flush_timeout = flush_timeout
        self.record_eval = bool(record_eval)
        #: the last value reported (as reported, i.e. negated when ``sign`` is -1), or ``None``
        self.last_value: Optional[float] = None

    def report(self, step: int, *, eval_metrics: Optional[Mapping[str, Any]] = None) -> bool:
        """Report the metric of the latest snapshot at ``step`` (an epoch index: pruners compare trials at
        equal steps); return ``trial.should_prune()``.  A NaN metric (no layer fitted yet) is not reported."""
        m = ww_metrics(self.monitor, timeout=self.flush_timeout)
        if self.metric not in m:
            raise KeyError(
                f"SpectralPruning: unknown metric {self.metric!r}; known: "
                f"{sorted(k for k in m if k.startswith(PREFIX))}"
            )
        value = m[self.metric]
        if math.isfinite(value):
            self.last_value = self.sign * value
            self.trial.report(self.last_value, int(step))
        if eval_metrics and self.record_eval:
            try:
                record_eval_metrics(
                    self.monitor,
                    eval_metrics,
                    step=None if not math.isfinite(m[PREFIX + "step"]) else int(m[PREFIX + "step"]),
                )
            except Exception as e:  # noqa: BLE001 - a store that cannot be written must not stop the trial
                log.warning("wwmonitor: could not record %s in the run store: %r", sorted(eval_metrics), e)
        return bool(self.trial.should_prune())

    def step(self, step: int, *, eval_metrics: Optional[Mapping[str, Any]] = None) -> None:
        """:meth:`report`, then raise ``optuna.TrialPruned`` when the trial should be pruned."""
        if self.report(step, eval_metrics=eval_metrics):
            raise optuna.TrialPruned(
                f"pruned at step {step} on {self.metric} = {self.sign * (self.last_value or float('nan')):.4g}"
            )


# --- Lightning ----------------------------------------------------------------------------------------------

_CALLBACK_CLASS: Optional[type] = None


def _callback_class() -> (
    type
):  # long-function: builds the Lightning callback class in one place so lightning is imported lazily
    """:class:`SpectralPruningCallback`, built on first use (it needs ``lightning``)."""
    global _CALLBACK_CLASS
    if _CALLBACK_CLASS is not None:
        return _CALLBACK_CLASS
    from ..callbacks.lightning import WeightWatcherCallback

    class SpectralPruningCallback(WeightWatcherCallback):
        """The Lightning :class:`~wwmonitor.callbacks.lightning.WeightWatcherCallback` in an Optuna trial.

        At the end of every training epoch (after validation and this callback's snapshot) it reports
        ``metric`` to the trial at the epoch, records the trainer's ``val_*`` metrics in the run store and
        raises ``optuna.TrialPruned`` when the pruner says so (Lightning closes the monitor on the way out).
        ``run_name`` defaults to :func:`trial_run_name`, ``config`` to ``trial.params``; the trial's
        ``wwmonitor_run_dir`` attribute is set when fit starts.  Other arguments: those of
        ``WeightWatcherCallback``.
        """

        def __init__(
            self,
            trial: "optuna.trial.Trial",
            every_n_epochs: Optional[int] = 1,
            *,
            metric: str = "mean_alpha",
            negate: Optional[bool] = None,
            run_name: Optional[str] = None,
            config: Optional[Mapping[str, Any]] = None,
            record_eval: bool = True,
            eval_metrics: Optional[Sequence[str]] = None,
            **kwargs: Any,
        ) -> None:
            super().__init__(
                every_n_epochs,
                run_name=run_name or trial_run_name(trial),
                config={**dict(trial.params), **dict(config or {})},
                **kwargs,
            )
            self.trial = trial
            self.metric, self.negate = metric, negate
            self.record_eval = bool(record_eval)
            self.eval_metric_names = None if eval_metrics is None else tuple(eval_metrics)
            self.pruning: Optional[SpectralPruning] = None

        def on_fit_start(self, trainer: Any, pl_module: Any) -> None:
            super().on_fit_start(trainer, pl_module)
            if self.monitor is not None:
                _mark(self.trial, self.monitor)
                self.pruning = SpectralPruning(
                    self.trial,
                    self.monitor,
                    metric=self.metric,
                    negate=self.negate,
                    flush_timeout=getattr(self, "flush_timeout", 120.0),
                    record_eval=self.record_eval,
                )

        def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
            super().on_train_epoch_end(trainer, pl_module)
            if self.pruning is None or getattr(trainer, "sanity_checking", False):
                return
            evals: dict[str, float] = {}
            for k, v in dict(getattr(trainer, "callback_metrics", {}) or {}).items():
                wanted = k in self.eval_metric_names if self.eval_metric_names is not None else k.startswith("val_")
                if wanted:
                    try:
                        evals[str(k)] = float(v.item() if hasattr(v, "item") else v)
                    except (TypeError, ValueError):
                        continue
            self.pruning.step(int(trainer.current_epoch), eval_metrics=evals)

    SpectralPruningCallback.__qualname__ = "SpectralPruningCallback"  # picklable by name (module __getattr__)
    _CALLBACK_CLASS = SpectralPruningCallback
    return SpectralPruningCallback


def __getattr__(name: str) -> Any:
    if name == "SpectralPruningCallback":
        return _callback_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
