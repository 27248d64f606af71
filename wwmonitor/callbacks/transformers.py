"""Hugging Face ``transformers.Trainer`` callback.

Example::

    from transformers import Trainer, TrainingArguments
    from wwmonitor.callbacks.transformers import WeightWatcherCallback

    args = TrainingArguments("out", num_train_epochs=3, report_to=["tensorboard", "wandb"])
    trainer = Trainer(model=model, args=args, train_dataset=ds,
                      callbacks=[WeightWatcherCallback(every_n_steps=500)])
    trainer.train()                       # run store in out/wwmonitor-runs/<run>/run.sqlite

Hooks used (and why)
--------------------
``on_train_begin``   refuse FSDP1/DeepSpeed (every rank), build the monitor;
                     when ``trainer.train(resume_from_checkpoint=...)``
                     restored a ``TrainerState`` (``global_step > 0``), read
                     this callback's state from its ``stateful_callbacks`` and
                     continue that run.  Runs after the reporting
                     integrations' own ``on_train_begin`` (the Trainer puts
                     them before user callbacks).
``on_step_begin``    attach the logger sinks once (every integration is set up
                     by then, whatever the callback order).
``on_step_end``      optional snapshot every ``every_n_steps`` optimizer steps
                     (``state.global_step``; once per optimizer step, also with
                     gradient accumulation); deliver W&B rows; the stop decision.
``on_epoch_end``     snapshot every ``every_n_epochs`` epochs; deliver W&B rows;
                     the stop decision (collective under DDP).
``on_train_end``     wait for the analysis (every rank), close.

Both snapshot hooks run before the Trainer saves a checkpoint at that step,
so a checkpoint's state includes the snapshot of its own step.

Checkpoints
-----------
The callback is an ``ExportableState``: ``state()`` goes into the
checkpoint's ``trainer_state.json`` (``stateful_callbacks``) -- the monitor's
run folder and id, the last snapshotted step and the alert rules'
hysteresis state, all JSON.  On resume the callback reads it back itself, so
``restore_callback_states_from_checkpoint`` need not be set; when it is set,
the Trainer re-creates callbacks from ``state()["args"]``, which names this
live instance (by ``state_key``), so the callback the user passed keeps its
options and stays the one in the Trainer.

Distributed
-----------
Under DDP (``torchrun`` / ``accelerate launch``) and FSDP2 every rank builds a
Monitor (:func:`wwmonitor.callbacks._sharding.open_rank_monitor`): matrix ``i``
is analysed on rank ``i mod world_size``, rank 0 alone writes.  FSDP1 and
DeepSpeed are refused at train begin, by name.  FSDP2 under the Trainer has
not run here: on CPU accelerate 1.15 ignores the FSDP plugin (it selects FSDP
only for GPU-like devices) and trains as DDP, which is what is monitored.
"""

from __future__ import annotations

import logging
import math
import os
import sys
import weakref
from typing import TYPE_CHECKING, Any, Optional, Sequence, Union

from transformers.trainer_callback import CallbackHandler, TrainerCallback

try:  # transformers >= 4.41: callback state saved in checkpoints
    from transformers.trainer_callback import ExportableState
except ImportError:  # pragma: no cover - older transformers: no callback state in checkpoints

    class ExportableState:  # type: ignore[no-redef]
        pass


from ..alerts import AlertRules
from ..analyze import AnalysisOptions
from ..distributed import UnsupportedStrategyError, broadcast_object
from ._options import (
    MonitorOptions,
    apply_callback_state,
    callback_state,
    check_interval,
    pump_sinks,
    stop_reason,
    store_monitor_options,
)
from ._sharding import open_rank_monitor, safe_snapshot, shard_layers

if TYPE_CHECKING:
    from types import FrameType

__all__ = ["WeightWatcherCallback"]

log = logging.getLogger("wwmonitor")

#: live callbacks by state key, for the Trainer's ``restore_callback_states_from_checkpoint``
_LIVE: "weakref.WeakValueDictionary[str, WeightWatcherCallback]" = weakref.WeakValueDictionary()

_RUN_SUBDIR = "wwmonitor-runs"


class WeightWatcherCallback(TrainerCallback, ExportableState, MonitorOptions):
    """Monitor weight spectra during ``Trainer.train`` (see the module docstring for the hooks).

    Parameters
    ----------
    every_n_epochs:
        Snapshot at the end of every n-th epoch (``None``: never at epoch end).
    every_n_steps:
        Also snapshot every n optimizer steps (``state.global_step % n == 0``).
    run_dir, run_name:
        Where the embedded run store goes (``run_dir/<run_name>/run.sqlite``;
        default ``run_dir``: ``<TrainingArguments.output_dir>/wwmonitor-runs``).
        ``trainer.train(resume_from_checkpoint=...)`` continues the run of
        that checkpoint; a fresh ``train`` with a used ``run_name`` starts
        ``<run_name>-2`` (and says so) unless ``resume=True``.
    layers, exclude:
        Matrix selection (names, glob patterns, layer types); see
        :func:`wwmonitor.layers.extract_matrices`.
    alerts, stop_on:
        Alert rules (``"default"``, ``None``, dict, :class:`~wwmonitor.alerts.AlertRules`)
        and the rule ids that stop training (``control.should_training_stop``).
    loggers:
        Write to the Trainer's active reporting integrations (TensorBoard,
        W&B, MLflow); ``False``: run store only.
    metrics, esd_every_n_epochs:
        Scalars per layer for the logger sinks, and the ESD image interval in
        epochs (default 5; ``0`` disables images).
    queue_size, policy, options, config, flush_timeout:
        As for the Lightning callback / :class:`wwmonitor.Monitor`.
    state_key:
        Identifies this callback's state in checkpoints (default: class name
        plus run name and intervals; give distinct keys to two instances).
    """

    def __new__(cls, *args: Any, _restore_key: Optional[str] = None, **kwargs: Any) -> "WeightWatcherCallback":
        # The Trainer's restore_callback_states_from_checkpoint re-creates callbacks as type(cb)(**state["args"]);
        # state()["args"] names the live instance (the one in that Trainer, else the last one built with that
        # key), which is handed back unchanged.
        if _restore_key is not None:
            live = _live_instance(cls, _restore_key)
            if live is not None:
                return live
        return super().__new__(cls)

    def __init__(
        self,
        every_n_epochs: Optional[int] = 1,
        every_n_steps: Optional[int] = None,
        *,
        run_dir: Optional[Union[str, os.PathLike]] = None,
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
        _restore_key: Optional[str] = None,
    ) -> None:
        if _restore_key is not None and getattr(self, "_wwmonitor_ready", False):
            return  # the live instance, handed back by __new__: keep it as it is
        if _restore_key is not None:
            log.warning(
                "wwmonitor: the checkpoint's WeightWatcherCallback (state key %r) is not among this "
                "process's callbacks; the Trainer re-created it with default options",
                _restore_key,
            )
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
        self._state_key = state_key if state_key is not None else _restore_key
        self.monitor: Any = None  # rank 0's main monitor (store, alerts, sinks); kept, closed, after train
        self.errors = 0  # snapshots that raised (logged; training continues)
        self._rank, self._world = 0, 1
        self._last_step: Optional[int] = None
        self._handler: Any = None
        self._sinks_attached = True
        self._wandb_sinks: list[Any] = []
        #: the logger sinks attached in the last ``train`` (rank 0)
        self.sinks: list[Any] = []
        #: names of the matrices this rank analyses (all of them without DDP)
        self.shard_layers: list[str] = []
        #: the configuration recorded with the run (TrainingArguments' hyper-parameters, then ``config``)
        self.run_config: dict[str, Any] = {}
        self.stopped_by_alert = False
        self._wwmonitor_ready = True
        _LIVE[self.state_key] = self

    # ------------------------------------------------------------ checkpoint state
    @property
    def state_key(self) -> str:
        if self._state_key:
            return self._state_key
        return (
            f"{type(self).__qualname__}{{run_name={self.run_name!r}, every_n_epochs={self.every_n_epochs}, "
            f"every_n_steps={self.every_n_steps}}}"
        )

    def state_dict(self) -> dict[str, Any]:
        """The monitor's run, the last snapshotted step and the alert state (JSON-able)."""
        return {"key": self.state_key, **callback_state(self, self.monitor, self._last_step)}

    def state(self) -> dict[str, Any]:
        """``ExportableState``: what the Trainer stores in ``trainer_state.json`` at each checkpoint."""
        return {"args": {"_restore_key": self.state_key}, "attributes": {}, "wwmonitor": self.state_dict()}

    def _stored_state(self, state: Any) -> Optional[dict[str, Any]]:
        """This callback's entry in a restored ``TrainerState.stateful_callbacks`` (the last saved one)."""
        found = []
        for entry in (getattr(state, "stateful_callbacks", None) or {}).values():
            for d in entry if isinstance(entry, list) else [entry]:
                ww = d.get("wwmonitor") if isinstance(d, dict) else None
                if isinstance(ww, dict) and ww.get("version") == 1:
                    found.append(ww)
        mine = [d for d in found if d.get("key") == self.state_key]
        if mine:
            return mine[-1]
        keys = {d.get("key") for d in found}
        if len(keys) == 1 and not self._state_key:
            # one wwmonitor callback in the checkpoint, under another default key (e.g. every_n_steps changed)
            log.info("wwmonitor: continuing the run of the checkpoint's callback %s", next(iter(keys)))
            return found[-1]
        if found:
            log.warning(
                "wwmonitor: the checkpoint holds wwmonitor state under %s but none under this callback's "
                "key %r; starting a new run",
                sorted(map(str, keys)),
                self.state_key,
            )
        return None

    # ------------------------------------------------------------ Trainer hooks
    def on_train_begin(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
        self._handler, trainer = _trainer_on_stack()
        _check_strategy(args, trainer)  # on every rank, before anything runs
        self._close()  # a second train() with the same callback starts cleanly
        self._last_step, self.stopped_by_alert, self.sinks, self._wandb_sinks = None, False, [], []
        if model is None:
            raise ValueError("WeightWatcherCallback: the Trainer passed no model to on_train_begin")
        self._rank, self._world = int(getattr(args, "process_index", 0)), int(getattr(args, "world_size", 1))
        run_dir = self.run_dir
        if run_dir is None:  # absolute: the checkpoint's state names it, and a resume may run from elsewhere
            run_dir = os.path.abspath(os.path.join(args.output_dir, _RUN_SUBDIR))
        stored = self._stored_state(state) if int(state.global_step) > 0 else None  # resumed from a checkpoint
        self.run_config = _run_config(self, args, model)
        self.monitor = open_rank_monitor(  # every rank: under DDP / FSDP2 the Monitor analyses this rank's share
            self, model, run_dir, self._world, config=self.run_config, restored=(stored or {}).get("monitor")
        )
        self.shard_layers = shard_layers(self.monitor)
        self._last_step = apply_callback_state(self, stored, self.monitor)
        self._sinks_attached = not (self.use_loggers and self._rank == 0)

    def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._attach_sinks(args)

    def on_step_end(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
        step = int(state.global_step)
        due = self.every_n_steps is not None and step > 0 and step % self.every_n_steps == 0
        if due:
            self._snapshot(model, step, _epoch_index(state.epoch), epoch_end=False)
        self._pump()
        if due or self._world == 1:  # under DDP only where every rank decides together
            self._stop_decision(state, control)

    def on_epoch_end(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
        self._attach_sinks(args)
        epoch = _epoch_index(state.epoch)
        if self.every_n_epochs is not None and (epoch + 1) % self.every_n_epochs == 0:
            self._snapshot(model, int(state.global_step), epoch, epoch_end=True)
        self._pump()
        self._stop_decision(state, control)

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._attach_sinks(args)  # (a train that ran no step)
        if self.monitor is not None:
            self.monitor.flush(self.flush_timeout)
        self._close()

    # ------------------------------------------------------------ internals
    def _snapshot(self, model: Any, step: int, epoch: int, *, epoch_end: bool) -> None:
        if self._last_step is not None and step <= self._last_step:
            return  # already snapshotted (resume, or a step snapshot at the epoch's last step)
        self._last_step = step
        if self.monitor is not None:
            safe_snapshot(self.monitor, self, step=step, epoch=epoch, epoch_end=epoch_end)

    def _attach_sinks(self, args: Any) -> None:
        """Rank 0, once per train: a sink for each active reporting integration of the Trainer."""
        if self._sinks_attached:
            return
        self._sinks_attached = True
        if self.monitor is None:
            return
        for sink in _integration_sinks(self, args, self._handler):
            try:
                self.monitor.add_sink(sink)
            except Exception as e:  # a closed monitor: reported, training continues
                log.warning("wwmonitor: could not add the %s sink: %r", type(sink).__name__, e)
                continue
            self.sinks.append(sink)
            if hasattr(sink, "pump"):
                self._wandb_sinks.append(sink)

    def _pump(self) -> None:
        pump_sinks(self._wandb_sinks)

    def _stop_decision(self, state: Any, control: Any) -> None:
        local = bool(self.monitor is not None and self.monitor.should_stop)
        decision = bool(broadcast_object(local, src=0)) if self._world > 1 else local  # collective under DDP
        if not decision:
            return
        control.should_training_stop = True
        if not self.stopped_by_alert:
            self.stopped_by_alert = True
            if self._rank == 0:
                why = stop_reason(self.monitor.alerts_fired if self.monitor is not None else [])
                log.warning(
                    "wwmonitor: stopping training at step %d (epoch %.2f) on an alert%s",
                    int(state.global_step),
                    float(state.epoch or 0.0),
                    why,
                )

    def close(self, timeout: Optional[float] = None) -> None:
        """Close the monitor now (idempotent).  ``train()`` closes it at its end; call this after a
        ``train()`` that raised, to release the run (its lock) before the interpreter exits."""
        self._close(timeout)

    def _close(self, timeout: Optional[float] = None) -> None:
        if self.monitor is not None:
            try:
                self.monitor.close(timeout)
            except Exception as e:
                log.warning("wwmonitor: closing the monitor failed: %r", e)
        self._pump()
        # keep self.monitor for inspection (results, run_dir) after train; it is closed


# ---------------------------------------------------------------- helpers
def _epoch_index(epoch: Any) -> int:
    """0-based index of the epoch in progress from ``TrainerState.epoch`` (``1.0`` at the end of the first)."""
    e = float(epoch or 0.0)
    return max(0, math.ceil(round(e, 6)) - 1)


def _live_instance(cls: type[WeightWatcherCallback], key: str) -> Optional[WeightWatcherCallback]:
    """The callback of class ``cls`` with state key ``key``: in the Trainer on the call stack, else the last built."""
    f: Optional[FrameType] = sys._getframe(1)
    try:
        for _ in range(16):
            if f is None:
                break
            handler = getattr(f.f_locals.get("self"), "callback_handler", None)
            for c in getattr(handler, "callbacks", None) or []:
                if type(c) is cls and c.state_key == key:
                    return c
            f = f.f_back
    finally:
        del f
    live = _LIVE.get(key)
    return live if type(live) is cls else None


def _trainer_on_stack() -> tuple[Any, Any]:
    """The ``CallbackHandler`` and the ``Trainer`` running this hook (the hooks are given neither).

    Found on the call stack: ``Trainer -> CallbackHandler.call_event -> our hook``.
    ``(None, None)`` when the hook is called some other way.
    """
    handler = trainer = None
    f: Optional[FrameType] = sys._getframe(1)
    try:
        for _ in range(64):
            if f is None:
                break
            obj = f.f_locals.get("self")
            if handler is None and isinstance(obj, CallbackHandler):
                handler = obj
            elif handler is not None and getattr(obj, "callback_handler", None) is handler:
                trainer = obj
                break
            f = f.f_back
    finally:
        del f
    return handler, trainer


def _check_strategy(args: Any, trainer: Any) -> None:
    """Refuse FSDP1 and DeepSpeed on every rank, naming them; FSDP2 is monitored (the Monitor's FSDP2 strategy).

    On CPU, accelerate (1.15) never selects FSDP: its FSDP plugin is honoured only on GPU-like devices
    (``DistributedType.MULTI_GPU`` ...), a CPU run with ``fsdp=...`` trains as DDP and is monitored as DDP."""
    from ..sharding.detect import DEEPSPEED_MESSAGE, FSDP1_MESSAGE

    if getattr(trainer, "is_deepspeed_enabled", False) or getattr(args, "deepspeed", None):
        raise UnsupportedStrategyError(f"WeightWatcherCallback: {DEEPSPEED_MESSAGE}")
    if getattr(trainer, "is_fsdp_enabled", False) or getattr(args, "fsdp", None):
        plugin = getattr(getattr(getattr(trainer, "accelerator", None), "state", None), "fsdp_plugin", None)
        cfg = getattr(args, "fsdp_config", None) or {}
        version = getattr(plugin, "fsdp_version", None) or cfg.get("version", cfg.get("fsdp_version", 2))
        if int(version) != 2:
            raise UnsupportedStrategyError(
                f"WeightWatcherCallback: {FSDP1_MESSAGE} With the Trainer: fsdp_config={{'version': 2}}."
            )


def _run_config(cb: WeightWatcherCallback, args: Any, model: Any) -> dict[str, Any]:
    """What the run store records as the run's configuration (reports read it); the user's ``config`` wins."""
    world = int(getattr(args, "world_size", 1))
    base: dict[str, Any] = {
        "callback": type(cb).__module__,
        "world_size": world,
        "model_class": f"{type(model).__module__}.{type(model).__qualname__}",
    }
    for key in ("learning_rate", "weight_decay", "seed", "gradient_accumulation_steps"):
        if getattr(args, key, None) is not None:
            base[key] = getattr(args, key)
    per_device = getattr(args, "per_device_train_batch_size", None)
    if per_device:
        base["batch_size"] = int(per_device) * world * int(getattr(args, "gradient_accumulation_steps", 1) or 1)
    return {**base, **cb.config}


def _integration_kinds(args: Any, handler: Any) -> list[tuple[str, Any]]:
    """``(kind, callback)`` of the Trainer's reporting integrations: its callbacks when known, else ``report_to``."""
    if handler is not None:
        out: list[tuple[str, Any]] = []
        for c in handler.callbacks:
            names = {k.__name__ for k in type(c).__mro__}
            for kind in ("TensorBoardCallback", "WandbCallback", "MLflowCallback"):
                if kind in names:
                    out.append((kind, c))
                    break
            else:
                if type(c).__module__.startswith("transformers.integrations"):
                    out.append((type(c).__name__, c))
        return out
    report_to = getattr(args, "report_to", None) or []
    if isinstance(report_to, str):
        report_to = [] if report_to == "none" else [report_to]
    by_name = {"tensorboard": "TensorBoardCallback", "wandb": "WandbCallback", "mlflow": "MLflowCallback"}
    return [(by_name.get(r, r), None) for r in report_to]


def _tensorboard_dir(args: Any, tb_callback: Any) -> str:
    writer = getattr(tb_callback, "tb_writer", None)
    for d in (
        getattr(writer, "log_dir", None),
        getattr(writer, "logdir", None),  # torch / tensorboardX
        getattr(tb_callback, "logging_dir", None),
        os.environ.get("TENSORBOARD_LOGGING_DIR"),
    ):
        if d:
            return os.fspath(d)
    from transformers.integrations.integration_utils import default_logdir

    return os.path.join(args.output_dir, default_logdir())


def _integration_sinks(cb: WeightWatcherCallback, args: Any, handler: Any) -> list[Any]:
    """One sink per active reporting integration (TensorBoard, W&B, MLflow); others get a log note."""
    sinks: list[Any] = []
    for kind, integration in _integration_kinds(args, handler):
        try:
            if kind == "TensorBoardCallback":
                from ..sinks.tensorboard import TensorBoardSink

                # its own writer in the integration's log dir: the integration closes its writer at train end,
                # before this callback's last results are written
                sinks.append(
                    TensorBoardSink(_tensorboard_dir(args, integration), metrics=cb.metrics, hparams=cb.run_config)
                )
            elif kind == "WandbCallback":
                import wandb

                if wandb.run is None:
                    log.warning("wwmonitor: W&B reporting is on but there is no active wandb run; not logging to W&B")
                    continue
                from ..sinks.wandb import WandbSink

                sinks.append(
                    WandbSink(
                        wandb.run,
                        step_metric="train/global_step",
                        metrics=cb.metrics,
                        deliver="deferred",
                        hparams=cb.run_config,
                    )
                )
            elif kind == "MLflowCallback":
                try:
                    from ..sinks.mlflow import MLflowSink
                except ImportError:
                    log.info(
                        "wwmonitor: no MLflow sink in this wwmonitor (wwmonitor.sinks.mlflow); not logging to MLflow"
                    )
                    continue
                import mlflow

                run = mlflow.active_run()
                if run is None:
                    log.warning(
                        "wwmonitor: MLflow reporting is on but there is no active MLflow run; not logging to MLflow"
                    )
                    continue
                sinks.append(MLflowSink(run.info.run_id, metrics=cb.metrics, params=cb.run_config))
            else:
                log.info(
                    "wwmonitor: reporting integration %s is not supported; only the run store gets its "
                    "results (supported: TensorBoard, W&B, MLflow)",
                    kind,
                )
        except Exception as e:  # a broken integration must not stop training
            log.warning("wwmonitor: could not attach to %s: %r", kind, e)
    return sinks
