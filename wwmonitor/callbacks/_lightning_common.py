"""Logic shared by the ``lightning`` and ``pytorch_lightning`` callbacks.

The two packages ship distinct ``Callback``/``Trainer`` classes, so each has
a thin subclass (:mod:`wwmonitor.callbacks.lightning`,
:mod:`wwmonitor.callbacks.pytorch_lightning`) of :class:`WeightWatcherMixin`
and its package's ``Callback``.  The mixin uses only duck-typed trainer
attributes and never imports either package.

Hooks used (and why)
--------------------
``setup``             refuse FSDP1/DeepSpeed (on every rank, before anything runs).
``on_fit_start``      build the monitor(s) -- after Lightning restored this
                      callback's checkpoint state, so a resumed fit continues
                      the same run.
``on_train_batch_end`` optional snapshot every ``every_n_steps`` optimizer steps.
``on_train_epoch_end`` snapshot every ``every_n_epochs`` epochs, then the stop
                      decision (collective under DDP).
``on_train_end``      wait for the analysis (every rank).
``on_fit_end`` / ``teardown`` / ``on_exception``  close the monitor (idempotent).

Distributed (DDP, FSDP2 under ``ModelParallelStrategy``)
--------------------------------------------------------
Every rank builds a :class:`~wwmonitor.Monitor` of the module
(:func:`wwmonitor.callbacks._sharding.open_rank_monitor`); its DDP / FSDP2
snapshot strategy analyses matrix ``i`` on rank ``i mod world_size`` and
rank 0 files the merged results (store, alert rules, logger sinks).
"""

from __future__ import annotations

import logging
from typing import Any, Optional, Sequence, Union

from ..alerts import AlertRules
from ..analyze import AnalysisOptions
from ..distributed import check_strategy
from ._options import MonitorOptions, check_interval, pump_sinks, stop_reason, store_monitor_options
from ._sharding import open_rank_monitor, safe_snapshot, shard_layers

log = logging.getLogger("wwmonitor")

__all__ = ["WeightWatcherMixin"]


def _rank_zero() -> tuple[Any, Any]:
    from lightning_utilities.core.rank_zero import rank_zero_info, rank_zero_warn

    return rank_zero_info, rank_zero_warn


class WeightWatcherMixin(MonitorOptions):
    """Monitor weight spectra during ``Trainer.fit`` (shared implementation).

    Parameters
    ----------
    every_n_epochs:
        Snapshot at the end of every n-th training epoch (``None``: never at
        epoch end).
    every_n_steps:
        Also snapshot every n optimizer steps (``trainer.global_step % n == 0``).
    run_dir, run_name:
        Where the embedded run store goes (``run_dir/<run_name>/run.sqlite``).
        Restoring a checkpoint that holds this callback's state continues
        that run; a fresh ``fit`` with the same ``run_name`` starts a new run
        ``<run_name>-2`` (and says so) unless ``resume=True``.
    layers, exclude:
        Matrix selection (names, glob patterns, layer types); see
        :func:`wwmonitor.layers.extract_matrices`.
    alerts:
        ``"default"``, ``None``, a dict of :class:`~wwmonitor.alerts.AlertRules`
        arguments, or an :class:`AlertRules`.
    stop_on:
        Alert rule ids that stop training (``trainer.should_stop``; decided
        with ``strategy.reduce_boolean_decision`` so every rank stops together).
    loggers:
        Write to the trainer's loggers (TensorBoard, W&B, CSV); ``False``: run
        store only.
    metrics, esd_every_n_epochs:
        Scalars per layer for the TensorBoard/W&B sinks, and the ESD image
        interval in epochs (default 5: drawing one ESD figure costs ~0.1-0.7 s
        of background CPU per layer; ``0`` disables images).
    queue_size, policy, options, config:
        Passed to :class:`wwmonitor.Monitor`.
    state_key:
        Key of this callback's state in checkpoints (default: class name plus
        run name and intervals; give distinct keys to two instances).
    """

    def __init__(
        self,
        every_n_epochs: Optional[int] = 1,
        every_n_steps: Optional[int] = None,
        *,
        run_dir: str = "wwmonitor-runs",
        run_name: Optional[str] = None,
        layers: Optional[Sequence[Any]] = None,
        exclude: Optional[Sequence[Any]] = None,
        alerts: Union[None, bool, str, dict, AlertRules] = "default",
        stop_on: Sequence[str] = (),
        loggers: bool = True,
        metrics: Union[str, Sequence[str]] = "default",
        esd_every_n_epochs: int = 5,
        queue_size: int = 3,
        policy: str = "block",
        options: Optional[AnalysisOptions] = None,
        config: Optional[dict] = None,
        flush_timeout: Optional[float] = 300.0,
        state_key: Optional[str] = None,
        resume: bool = False,
    ) -> None:
        super().__init__()
        check_interval("every_n_epochs", every_n_epochs, allow_none=True)
        check_interval("every_n_steps", every_n_steps, allow_none=True)
        if every_n_epochs is None and every_n_steps is None:
            raise ValueError("every_n_epochs and every_n_steps are both None: the callback would never snapshot")
        store_monitor_options(
            self,
            run_dir=run_dir,
            run_name=run_name,
            layers=layers,
            exclude=exclude,
            alerts=alerts,
            stop_on=stop_on,
            metrics=metrics,
            esd_every_n_epochs=esd_every_n_epochs,
            queue_size=queue_size,
            policy=policy,
            options=options,
            config=config,
            flush_timeout=flush_timeout,
            resume=resume,
        )
        self.every_n_epochs = every_n_epochs
        self.every_n_steps = every_n_steps
        self.use_loggers = bool(loggers)
        self._state_key = state_key
        self.monitor: Any = None  # this rank's monitor (rank 0 writes the store, alerts, sinks)
        self.errors = 0  # snapshots that raised (logged; training continues)
        self._names: list[str] = []
        self._world = 1
        self._rank = 0
        self._last_step: Optional[int] = None
        self._loaded: Optional[dict[str, Any]] = None
        self._wandb_sinks: list[Any] = []
        self.sinks: list[Any] = []
        #: names of the matrices this rank analyses (all of them without DDP)
        self.shard_layers: list[str] = []
        self.stopped_by_alert = False

    # ------------------------------------------------------------ Lightning API
    @property
    def state_key(self) -> str:
        if self._state_key:
            return self._state_key
        return self._generate_state_key(  # type: ignore[attr-defined]
            run_name=self.run_name, every_n_epochs=self.every_n_epochs, every_n_steps=self.every_n_steps
        )

    def state_dict(self) -> dict[str, Any]:
        return {
            "version": 1,
            "monitor": self.monitor.state_dict() if self.monitor is not None else None,
            "last_step": self._last_step,
            "alerts": self.alert_rules.state_dict() if isinstance(self.alert_rules, AlertRules) else None,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._loaded = dict(state_dict)
        if self.monitor is not None:
            self._apply_loaded()

    def _apply_loaded(self) -> None:
        st, self._loaded = self._loaded, None
        if not st:
            return
        if st.get("last_step") is not None:
            self._last_step = int(st["last_step"])
        if self.monitor is not None and st.get("monitor"):
            self.monitor.load_state_dict(st["monitor"])
        if isinstance(self.alert_rules, AlertRules) and st.get("alerts"):
            self.alert_rules.load_state_dict(st["alerts"])

    def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
        if stage == "fit":
            check_strategy(trainer)

    def on_fit_start(self, trainer: Any, pl_module: Any) -> None:
        self._close()  # a second fit with the same callback starts cleanly
        self._last_step, self.stopped_by_alert = None, False
        self._rank, self._world = int(trainer.global_rank), int(trainer.world_size)
        config = {**self.config, "world_size": self._world, "callback": type(self).__module__}
        if self._rank == 0:
            self.sinks = self._logger_sinks(trainer) if self.use_loggers else []
            self._wandb_sinks = [s for s in self.sinks if hasattr(s, "pump")]
        loaded = (self._loaded or {}).get("monitor") or {}
        # every rank: under DDP / FSDP2 (ModelParallelStrategy) the Monitor analyses this rank's share
        self.monitor = open_rank_monitor(
            self, pl_module, self.run_dir, self._world, sinks=self.sinks, config=config, restored=loaded
        )
        self.shard_layers = shard_layers(self.monitor)
        self._apply_loaded()

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        if self.every_n_steps is None:
            return
        step = int(trainer.global_step)
        if step > 0 and step % self.every_n_steps == 0:
            self._snapshot(trainer, pl_module, step, int(trainer.current_epoch), epoch_end=False)
        self._pump()

    def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        epoch = int(trainer.current_epoch)
        if self.every_n_epochs is not None and (epoch + 1) % self.every_n_epochs == 0:
            self._snapshot(trainer, pl_module, int(trainer.global_step), epoch, epoch_end=True)
        self._pump()
        self._stop_decision(trainer)

    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        if self.monitor is not None:
            self.monitor.flush(self.flush_timeout)
        self._pump()

    def on_fit_end(self, trainer: Any, pl_module: Any) -> None:
        self._close()

    def teardown(self, trainer: Any, pl_module: Any, stage: str) -> None:
        if stage == "fit":
            self._close()

    def on_exception(self, trainer: Any, pl_module: Any, exception: BaseException) -> None:
        self._close(timeout=10.0)

    # ------------------------------------------------------------ internals
    def _logger_sinks(self, trainer: Any) -> list[Any]:
        from ..sinks.csv import CSVSink
        from ..sinks.mlflow import MLflowSink
        from ..sinks.tensorboard import TensorBoardSink
        from ..sinks.wandb import WandbSink

        _, rank_zero_warn = _rank_zero()
        sinks: list[Any] = []
        for lg in getattr(trainer, "loggers", []) or []:
            kinds = {c.__name__ for c in type(lg).__mro__}
            try:
                if "TensorBoardLogger" in kinds:
                    sinks.append(
                        TensorBoardSink(lg.experiment, metrics=self.metrics, close_writer=False, hparams=self.config)
                    )
                elif "WandbLogger" in kinds:
                    sinks.append(
                        WandbSink(
                            lg.experiment,
                            step_metric="trainer/global_step",
                            metrics=self.metrics,
                            deliver="deferred",
                            hparams=self.config,
                        )
                    )
                elif "CSVLogger" in kinds:
                    sinks.append(CSVSink(lg.log_dir))
                elif "MLFlowLogger" in kinds:
                    # lg.experiment (an MlflowClient) creates the logger's run if needed; then lg.run_id is set
                    client = lg.experiment
                    params = {**self.config, "world_size": int(trainer.world_size), "callback": type(self).__module__}
                    sinks.append(MLflowSink(lg.run_id, client=client, metrics=self.metrics, params=params))
                else:
                    rank_zero_warn(
                        f"wwmonitor: logger {type(lg).__name__} is not supported; only the run store "
                        "gets its results (supported: TensorBoardLogger, WandbLogger, CSVLogger, "
                        "MLFlowLogger)"
                    )
            except Exception as e:  # a broken logger must not stop training
                rank_zero_warn(f"wwmonitor: could not attach to logger {type(lg).__name__}: {e!r}")
        return sinks

    def _snapshot(self, trainer: Any, pl_module: Any, step: int, epoch: int, *, epoch_end: bool) -> None:
        if self._last_step is not None and step <= self._last_step:
            return  # already snapshotted (resume, or a step snapshot at the epoch's last step)
        self._last_step = step
        if self.monitor is not None:
            safe_snapshot(self.monitor, self, step=step, epoch=epoch, epoch_end=epoch_end)

    def _pump(self) -> None:
        pump_sinks(self._wandb_sinks)

    def _stop_decision(self, trainer: Any) -> None:
        local = bool(self.monitor is not None and self.monitor.should_stop)
        strategy = getattr(trainer, "strategy", None)
        decision = strategy.reduce_boolean_decision(local, all=False) if strategy is not None else local
        if decision and not trainer.should_stop:
            trainer.should_stop = True
            self.stopped_by_alert = True
            rank_zero_info, _ = _rank_zero()
            why = stop_reason(self.monitor.alerts_fired if self.monitor is not None else [])
            rank_zero_info(f"wwmonitor: stopping training at epoch {trainer.current_epoch} on an alert{why}")

    def _close(self, timeout: Optional[float] = None) -> None:
        if self.monitor is not None:
            try:
                self.monitor.close(timeout)
            except Exception as e:
                log.warning("wwmonitor: closing the monitor failed: %r", e)
        self._pump()
        # keep self.monitor for inspection (results, run_dir) after fit; it is closed
