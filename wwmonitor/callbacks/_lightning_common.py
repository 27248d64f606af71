"""Logic shared by the ``lightning`` and ``pytorch_lightning`` callbacks.

The two packages ship distinct ``Callback``/``Trainer`` classes, so each has
a thin subclass (:mod:`wwmonitor.callbacks.lightning`,
:mod:`wwmonitor.callbacks.pytorch_lightning`) of :class:`WeightWatcherMixin`
and its package's ``Callback``.  The mixin uses only duck-typed trainer
attributes and never imports either package.

Hooks used (and why)
--------------------
``setup``             refuse FSDP1/DeepSpeed (on every rank, before anything runs).
``on_fit_start``      open the session's monitor(s) -- after Lightning restored
                      this callback's checkpoint state, so a resumed fit
                      continues the same run.
``on_train_batch_end`` optional snapshot every ``every_n_steps`` optimizer steps.
``on_train_epoch_end`` snapshot every ``every_n_epochs`` epochs, then the stop
                      decision (collective under DDP).
``on_train_end``      wait for the analysis (every rank).
``on_fit_end`` / ``teardown`` / ``on_exception``  close the monitor (idempotent).

Distributed (DDP, FSDP2 under ``ModelParallelStrategy``)
--------------------------------------------------------
Every rank builds a :class:`~wwmonitor.Monitor` of the module (the
framework-free :class:`wwmonitor.callbacks._session.CallbackSession`, with
``distributed=`` from :func:`wwmonitor.callbacks._sharding.monitor_distributed`);
its DDP / FSDP2 snapshot strategy analyses matrix ``i`` on rank
``i mod world_size`` and rank 0 files the merged results (store, alert rules,
logger sinks).  The session is shared by every callback (options, schedule,
state, stop decision, close).
"""

from __future__ import annotations

import logging
from typing import Any, Optional

from ..distributed import check_strategy
from ..monitor.loggers import csv_sink, mlflow_sink, tensorboard_sink, wandb_sink
from ._options import SessionAttributes
from ._session import CallbackSession

log = logging.getLogger("wwmonitor")

__all__ = ["WeightWatcherMixin"]


def _rank_zero() -> tuple[Any, Any]:
    from lightning_utilities.core.rank_zero import rank_zero_info, rank_zero_warn

    return rank_zero_info, rank_zero_warn


class WeightWatcherMixin(SessionAttributes):
    """Monitor weight spectra during ``Trainer.fit`` (shared implementation).

    Parameters
    ----------
    every_n_epochs:
        Snapshot at the end of every n-th training epoch (``None``: never at
        epoch end).
    every_n_steps:
        Also snapshot every n optimizer steps (``trainer.global_step``; step 0 never).
    state_key:
        Key of this callback's state in checkpoints (default: class name plus
        run name and intervals; give distinct keys to two instances).
    **options:
        Every :class:`wwmonitor.Monitor` option, same names and meaning
        (:class:`~wwmonitor.monitor.options.MonitorOptions`): ``root``,
        ``run_name``, ``resume``, ``layers``, ``exclude``, ``alerts``,
        ``stop_on``, ``sinks``, ``loggers``, ``metrics``, ``queue_size``,
        ``policy``, ``options``, ``config``, ``flush_timeout``,
        ``sink_timeout``, ``analyze_fn``, ``history``, ``blas_threads``, ``analysis_nice``,
        ``esd_every_n_epochs``, ``esd_layers``, ``analysis_device``, ``lora``,
        ``base_model``, ``announce``.  ``loggers=True`` (default) writes to
        the trainer's loggers (TensorBoard, W&B, CSV, MLflow).  ``stop_on``
        sets ``trainer.should_stop``, decided with
        ``strategy.reduce_boolean_decision`` so every rank stops together.
        Restoring a checkpoint that holds this callback's state continues
        that run.
    """

    def __init__(
        self,
        every_n_epochs: Optional[int] = 1,
        every_n_steps: Optional[int] = None,
        *,
        state_key: Optional[str] = None,
        **options: Any,
    ) -> None:
        super().__init__()
        self.session = CallbackSession("WeightWatcherCallback (Lightning)", every_n_epochs, every_n_steps, options)
        self._state_key = state_key

    # ------------------------------------------------------------ Lightning API
    @property
    def state_key(self) -> str:
        if self._state_key:
            return self._state_key
        return self._generate_state_key(
            run_name=self.settings.run_name, every_n_epochs=self.every_n_epochs, every_n_steps=self.every_n_steps
        )

    def state_dict(self) -> dict[str, Any]:
        return self.session.state_dict()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.session.load_state_dict(state_dict)

    def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
        if stage == "fit":
            check_strategy(trainer)

    def on_fit_start(self, trainer: Any, pl_module: Any) -> None:
        rank, world = int(trainer.global_rank), int(trainer.world_size)
        use = self.settings.loggers is True and rank == 0
        self.session.open(
            pl_module,
            rank=rank,
            world=world,
            sinks=self._logger_sinks(trainer) if use else [],
            config={"world_size": world, "callback": type(self).__module__},
        )

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        if self.every_n_steps is None:
            return
        self.session.on_step(int(trainer.global_step), int(trainer.current_epoch))
        self.session.pump()

    def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        epoch = int(trainer.current_epoch)
        self.session.on_epoch_end(epoch, int(trainer.global_step))
        self.session.pump()
        self._stop_decision(trainer)

    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        self.session.finish()

    def on_fit_end(self, trainer: Any, pl_module: Any) -> None:
        self.session.close()

    def teardown(self, trainer: Any, pl_module: Any, stage: str) -> None:
        if stage == "fit":
            self.session.close()

    def on_exception(self, trainer: Any, pl_module: Any, exception: BaseException) -> None:
        self.session.close(timeout=10.0)

    # ------------------------------------------------------------ internals
    def _logger_sinks(self, trainer: Any) -> list[Any]:
        """A sink for each of the trainer's loggers that wwmonitor writes to (others: one warning)."""
        _, rank_zero_warn = _rank_zero()
        metrics, cfg = self.settings.metrics, self.settings.config
        sinks: list[Any] = []
        for lg in getattr(trainer, "loggers", []) or []:
            kinds = {c.__name__ for c in type(lg).__mro__}
            try:
                if "TensorBoardLogger" in kinds:
                    sinks.append(tensorboard_sink(lg.experiment, metrics, cfg, shared=True))
                elif "WandbLogger" in kinds:
                    sinks.append(wandb_sink(lg.experiment, metrics, cfg))
                elif "CSVLogger" in kinds:
                    sinks.append(csv_sink(lg.log_dir))
                elif "MLFlowLogger" in kinds:
                    # lg.experiment (an MlflowClient) creates the logger's run if needed; then lg.run_id is set
                    client = lg.experiment
                    params = {**cfg, "world_size": int(trainer.world_size), "callback": type(self).__module__}
                    sinks.append(mlflow_sink(lg.run_id, metrics, params, client=client))
                else:
                    rank_zero_warn(
                        f"wwmonitor: logger {type(lg).__name__} is not supported; only the run store "
                        "gets its results (supported: TensorBoardLogger, WandbLogger, CSVLogger, "
                        "MLFlowLogger)"
                    )
            except Exception as e:  # a broken logger must not stop training
                rank_zero_warn(f"wwmonitor: could not attach to logger {type(lg).__name__}: {e!r}")
        return sinks

    def _stop_decision(self, trainer: Any) -> None:
        local = self.session.stop_requested()
        strategy = getattr(trainer, "strategy", None)
        decision = strategy.reduce_boolean_decision(local, all=False) if strategy is not None else local
        if decision and not trainer.should_stop:
            trainer.should_stop = True
            self.session.note_stop(f"at epoch {trainer.current_epoch}")
