"""wwmonitor inside Ray Tune trials: spectral metrics for schedulers and stoppers, run stores per trial.

Install: ``pip install "wwmonitor[ray]"`` (``ray[tune]``).

Why the metrics are merged into *your* ``tune.report``
------------------------------------------------------
In Ray 2.x ``tune.report`` must be called from the trial's training thread:
it hands the result to Tune and may block there, or end the thread when Tune
stops the trial.  wwmonitor's sinks run on the monitor's own thread, so they
cannot call it.  The recommended way is therefore to take the spectral
metrics with :func:`ww_metrics` (or :func:`report`) right after the snapshot
and report them **together with your own metrics, in one call per epoch**;
one ``tune.report`` is one ``training_iteration``, which is what ASHA's and
PBT's time attribute counts::

    from ray import tune
    from wwmonitor.integrations import ray_tune as wwtune

    def trainable(config):
        model = build(config)
        with wwtune.trial_monitor(model, config=config) as mon:   # store in the trial's folder
            for epoch in range(config["epochs"]):
                step = train_one_epoch(model, config)
                mon.snapshot(step=step, epoch=epoch)
                acc = evaluate(model)
                wwtune.report({"val_acc": acc}, mon)  # = tune.report({"val_acc": acc, **ww_metrics(mon)})

    tuner = tune.Tuner(trainable, param_space={"batch_size": tune.grid_search([16, 32, 64, 128])},
                       tune_config=tune.TuneConfig(scheduler=ASHAScheduler(metric="ww/mean_alpha", mode="min")),
                       run_config=tune.RunConfig(storage_path=OUT_DIR, stop=wwtune.WWAlertStopper()))

:func:`report` also records the ``val_*`` metrics in the run store, where
``wwmonitor compare`` ranks the runs' spectra against them.  With Lightning,
:class:`TuneReportCallback` (a :class:`~wwmonitor.callbacks.lightning.WeightWatcherCallback`)
does all of this at the end of every epoch.  :class:`TuneReportSink` is the
alternative for loops that report nothing else: a *deferred* sink whose
``pump()`` the training loop calls (each analysed snapshot becomes one
``tune.report``).

Reported keys (:func:`wwmonitor.integrations.flat_metrics`): ``ww/mean_alpha``,
``ww/mean_alpha_weighted``, ``ww/mean_stable_rank``, ``ww/mean_mp_softrank``,
``ww/mean_log_norm``, ``ww/mean_log_spectral_norm`` (NaN until a layer has a
value), ``ww/phase_count/<phase>`` for each of the 5+1 phases,
``ww/alerts_stop`` (1 once an alert of a ``stop_on`` rule fired),
``ww/alert/<rule>`` (alerts of each rule so far), ``ww/step``, ``ww/epoch``.

Where the run stores go
-----------------------
:func:`trial_run_dir`: ``<storage_path>/<experiment>/<trial folder>/wwmonitor``
when the storage is a local (or shared, e.g. NFS) filesystem, so that
``wwmonitor compare <storage_path>/<experiment>`` finds every trial's store
and its ``params.json``.  With remote storage (``s3://...``) it is the trial's
working directory, which Ray uploads only with
``RunConfig(sync_config=tune.SyncConfig(sync_artifacts=True))``.
"""

from __future__ import annotations

import collections
import logging
import os
import threading
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Sequence

from ray import tune
from ray.tune import Stopper

from ._common import PREFIX, flat_metrics, record_eval_metrics, ww_metrics
from .discovery import discover_runs

# TuneReportCallback is built on first use by the module's __getattr__ (it needs lightning)
__all__ = [
    "PREFIX",
    "TuneReportCallback",  # noqa: F822
    "TuneReportSink",
    "WWAlertStopper",
    "discover_runs",
    "report",
    "trial_monitor",
    "trial_run_dir",
    "ww_metrics",
]

log = logging.getLogger("wwmonitor")
_warned_remote = False


def _in_trial() -> bool:
    try:
        from ray.train._internal.session import get_session
    except ImportError:  # pragma: no cover - a Ray without the private module: assume a trial
        return True
    return get_session() is not None


def trial_run_dir(subdir: str = "wwmonitor") -> Path:
    """The folder for this trial's run stores: ``<trial folder in the experiment>/<subdir>``.

    Must be called inside a Tune trial.  The trial folder is the one in the
    experiment's storage (``storage_path/<experiment>/<trial>``, beside
    ``params.json``) when that storage is a local filesystem; otherwise (remote
    storage) the trial's working directory, with a one-time log line saying
    that ``SyncConfig(sync_artifacts=True)`` uploads it.
    """
    global _warned_remote
    if not _in_trial():
        raise RuntimeError("trial_run_dir: not inside a Ray Tune trial; pass run_dir= explicitly")
    path: Optional[Path] = None
    try:  # Ray's storage context (not public API): the trial's folder in the experiment's storage
        import pyarrow.fs
        from ray.train._internal.session import get_session

        session = get_session()
        assert session is not None
        storage = session.storage
        if isinstance(storage.storage_filesystem, pyarrow.fs.LocalFileSystem):
            path = Path(storage.trial_fs_path)
    except Exception as e:  # noqa: BLE001 - another Ray version: fall back to the working directory
        log.debug("wwmonitor: Ray's trial storage path is not available (%r)", e)
    if path is None:
        path = Path(os.getcwd())
        if not _warned_remote:
            _warned_remote = True
            log.warning(
                "wwmonitor: the trial's storage is not a local filesystem; its run store goes to the trial's "
                "working directory %s, which Ray uploads only with SyncConfig(sync_artifacts=True)",
                path,
            )
    return path / subdir


def _trial_name() -> str:
    name = tune.get_context().get_trial_name()
    if not name:
        raise RuntimeError("ray_tune.trial_monitor: not inside a Ray Tune trial; pass run_name= explicitly")
    return str(name)


def trial_monitor(
    model: Any = None,
    *,
    config: Optional[Mapping[str, Any]] = None,
    run_dir: Any = None,
    run_name: Optional[str] = None,
    **monitor_kwargs: Any,
) -> Any:
    """A :class:`wwmonitor.Monitor` for this trial: its store in :func:`trial_run_dir`, named after the trial.

    ``config`` is the trial's config (pass the trainable's ``config``: reports read the swept keys from
    it; ``compare`` also merges the trial's ``params.json``).  Other arguments go to ``Monitor``
    (``every_n_epochs=1`` by default: one snapshot per ``snapshot(epoch=...)`` call at an epoch end).
    Use it as a context manager so the store is closed when Tune stops the trial.
    """
    from ..monitor import Monitor

    return Monitor(
        model,
        run_dir if run_dir is not None else trial_run_dir(),
        run_name=run_name or _trial_name(),
        config=dict(config or {}),
        **monitor_kwargs,
    )


def report(
    metrics: Optional[Mapping[str, Any]],
    monitor: Any,
    *,
    checkpoint: Any = None,
    flush: bool = True,
    timeout: Optional[float] = 120.0,
    record_eval: bool = True,
    report_fn: Optional[Callable[..., Any]] = None,
) -> dict[str, float]:
    """``tune.report({**metrics, **ww_metrics(monitor)})``, from the training thread; returns what was reported.

    ``flush`` waits for the analysis of the snapshot just taken (see :func:`ww_metrics`).  With
    ``record_eval`` the ``val_*`` entries of ``metrics`` are also stored in the run store
    (:func:`wwmonitor.integrations.record_eval_metrics`).  ``report_fn`` replaces ``tune.report`` (tests).
    """
    mine = {str(k): (v.item() if hasattr(v, "item") else v) for k, v in (metrics or {}).items()}
    out = {**mine, **ww_metrics(monitor, flush=flush, timeout=timeout)}
    if record_eval:
        _record_val(monitor, mine, out.get(PREFIX + "step"))
    fn = report_fn or tune.report
    if checkpoint is not None:
        fn(out, checkpoint=checkpoint)
    else:
        fn(out)
    return out


def _record_val(monitor: Any, metrics: Mapping[str, Any], step: Any) -> None:
    vals = {
        k: v
        for k, v in metrics.items()
        if k.startswith("val_") and isinstance(v, (int, float)) and not isinstance(v, bool)
    }
    if not vals:
        return
    try:
        record_eval_metrics(monitor, vals, step=None if step is None or step != step else int(step))
    except Exception as e:  # noqa: BLE001 - a store that cannot be written must not stop the trial
        log.warning("wwmonitor: could not record %s in the run store: %r", sorted(vals), e)


class TuneReportSink:
    """A deferred sink that turns each analysed snapshot into one ``tune.report`` call, on :meth:`pump`.

    ``write`` (the monitor's thread) only queues :func:`~wwmonitor.integrations.flat_metrics`; :meth:`pump`,
    called by the training loop on the trial's thread, reports what is queued.  Use it when the loop
    reports nothing else; otherwise merge with :func:`report` so that one epoch stays one Tune iteration::

        sink = TuneReportSink()
        with trial_monitor(model, config=config, sinks=[sink]) as mon:
            for epoch in ...:
                mon.snapshot(step=step, epoch=epoch)
                sink.pump(mon)       # waits for this snapshot's analysis, then tune.report(...)

    ``extra`` (a dict, or a callable returning one) is merged into every report.  ``report_fn``
    replaces ``tune.report`` (tests).
    """

    def __init__(
        self, *, extra: Any = None, prefix: str = PREFIX, report_fn: Optional[Callable[[dict[str, Any]], Any]] = None
    ) -> None:
        self.prefix = prefix
        self.extra = extra
        self.report_fn = report_fn
        self._queue: collections.deque[dict[str, float]] = collections.deque()
        self._alerts: list[Any] = []
        self._lock = threading.Lock()
        #: snapshots reported so far
        self.reported = 0
        #: calls of :meth:`pump` outside a Tune trial (nothing reported; the rows stay queued)
        self.pumps_outside_trial = 0

    def write(self, result: Any) -> None:
        """Queue one snapshot's flat metrics (the monitor's thread: nothing is reported here)."""
        with self._lock:
            self._alerts.extend(result.alerts)
            self._queue.append(flat_metrics(result, list(self._alerts), prefix=self.prefix))

    def close(self) -> None:
        """Nothing to release; rows still queued are reported by a last :meth:`pump`."""

    @property
    def pending(self) -> int:
        """Snapshots waiting for :meth:`pump`."""
        return len(self._queue)

    def pump(self, monitor: Any = None, *, timeout: Optional[float] = 120.0) -> int:
        """Report every queued snapshot (call from the trial's training thread); returns how many.

        With ``monitor`` the monitor is flushed first (up to ``timeout`` s), so the snapshot just taken is
        among them.  Outside a Tune trial (and without ``report_fn``) ``tune.report`` would drop the rows:
        nothing is reported, the rows stay queued (:attr:`pending`), the call is counted in
        :attr:`pumps_outside_trial`, a warning is logged (first time) and the result is 0.
        """
        if monitor is not None:
            mon = getattr(monitor, "monitor", monitor)
            if mon is not None:
                mon.flush(timeout)
        if self.report_fn is None and not _in_trial():
            self.pumps_outside_trial += 1
            if self.pumps_outside_trial == 1:
                log.warning(
                    "wwmonitor: TuneReportSink.pump() called outside a Ray Tune trial: nothing reported, "
                    "%d snapshot(s) kept queued; run the loop under tune.Tuner, or give report_fn=",
                    self.pending,
                )
            return 0
        n = 0
        fn = self.report_fn or tune.report
        while True:
            with self._lock:
                if not self._queue:
                    break
                row = self._queue.popleft()
            extra = self.extra() if callable(self.extra) else (self.extra or {})
            fn({**dict(extra), **row})
            n += 1
            self.reported += 1
        return n


class WWAlertStopper(Stopper):
    """A Tune :class:`~ray.tune.Stopper` that stops a trial when wwmonitor alerts fired in it.

    It reads the trial's reported results (the keys of :func:`ww_metrics`): by default a trial stops once
    ``ww/alerts_stop`` is 1 (an alert of one of the monitor's ``stop_on`` rules fired); with ``rules`` it
    stops once any alert of those rule ids fired (``ww/alert/<rule>`` > 0), whatever ``stop_on`` says.
    ``stop_all=True`` also ends the whole experiment at the first such trial.  ``stopped`` maps the ids of
    the trials it stopped to the rules that fired (on the driver).
    """

    def __init__(self, rules: Optional[Sequence[str]] = None, *, stop_all: bool = False, prefix: str = PREFIX) -> None:
        self.rules = None if rules is None else tuple(str(r) for r in rules)
        self.prefix = prefix
        self._stop_all = bool(stop_all)
        self.stopped: dict[str, list[str]] = {}

    def __call__(self, trial_id: str, result: dict[str, Any]) -> bool:
        fired = [
            k[len(self.prefix) + 6 :]
            for k, v in result.items()
            if k.startswith(self.prefix + "alert/") and _positive(v)
        ]
        if self.rules is None:
            stop = _positive(result.get(self.prefix + "alerts_stop"))
        else:
            fired = [r for r in fired if r in self.rules]
            stop = bool(fired)
        if stop:
            self.stopped[trial_id] = fired
        return stop

    def stop_all(self) -> bool:
        return self._stop_all and bool(self.stopped)


def _positive(v: Any) -> bool:
    try:
        return float(v) > 0
    except (TypeError, ValueError):
        return False


# --- Lightning ----------------------------------------------------------------------------------------------

_CALLBACK_CLASS: Optional[type] = None


def _tune_report_callback_class() -> (
    type
):  # long-function: builds the Lightning callback class in one place so lightning is imported lazily
    """:class:`TuneReportCallback`, built on first use (it needs ``lightning``)."""
    global _CALLBACK_CLASS
    if _CALLBACK_CLASS is not None:
        return _CALLBACK_CLASS
    from ..callbacks.lightning import WeightWatcherCallback

    class TuneReportCallback(WeightWatcherCallback):
        """The Lightning :class:`~wwmonitor.callbacks.lightning.WeightWatcherCallback` inside a Tune trial.

        At the end of every training epoch (after validation, after this callback's snapshot) it reports
        once to Tune: the trainer's logged metrics (``trainer.callback_metrics``; only the names in
        ``metrics`` when given) merged with :func:`ww_metrics`, and records the ``val_*`` ones in the run
        store.  ``run_dir`` defaults to :func:`trial_run_dir`, ``run_name`` to the trial's name, ``config``
        to nothing (pass the trainable's ``config``).  Other arguments: those of ``WeightWatcherCallback``
        (``stop_on=[...]`` still stops the fit from inside; :class:`WWAlertStopper` stops it from Tune).
        ``report_fn`` replaces ``tune.report`` (tests).
        """

        def __init__(
            self,
            every_n_epochs: Optional[int] = 1,
            *,
            metrics: Optional[Sequence[str]] = None,
            run_dir: Any = None,
            run_name: Optional[str] = None,
            record_eval: bool = True,
            report_fn: Optional[Callable[..., Any]] = None,
            **kwargs: Any,
        ) -> None:
            super().__init__(every_n_epochs, root=run_dir, run_name=run_name, **kwargs)
            self._auto_run_dir = run_dir is None
            self.report_metrics = None if metrics is None else tuple(metrics)
            self.record_eval = bool(record_eval)
            self.report_fn = report_fn

        def on_fit_start(self, trainer: Any, pl_module: Any) -> None:
            if self._auto_run_dir:
                self.configure(root=str(trial_run_dir()))
            if self.settings.run_name is None:
                self.configure(run_name=_trial_name())
            super().on_fit_start(trainer, pl_module)

        def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
            super().on_train_epoch_end(trainer, pl_module)
            if getattr(trainer, "sanity_checking", False) or int(getattr(trainer, "global_rank", 0)) != 0:
                return
            report(
                self._logged(trainer),
                self.monitor,
                timeout=getattr(self, "flush_timeout", 120.0),
                record_eval=self.record_eval,
                report_fn=self.report_fn,
            )

        def _logged(self, trainer: Any) -> dict[str, float]:
            out: dict[str, float] = {}
            for k, v in dict(getattr(trainer, "callback_metrics", {}) or {}).items():
                if self.report_metrics is not None and k not in self.report_metrics:
                    continue
                try:
                    out[str(k)] = float(v.item() if hasattr(v, "item") else v)
                except (TypeError, ValueError):
                    continue
            return out

    TuneReportCallback.__qualname__ = "TuneReportCallback"  # picklable by name (module __getattr__)
    _CALLBACK_CLASS = TuneReportCallback
    return TuneReportCallback


def __getattr__(name: str) -> Any:
    if name == "TuneReportCallback":
        return _tune_report_callback_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
