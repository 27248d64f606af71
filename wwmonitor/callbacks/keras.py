"""Keras 3 callback (any backend: torch, jax, tensorflow).

Example::

    import keras
    from wwmonitor.callbacks.keras import WeightWatcherCallback

    model.fit(x, y, epochs=10,
              callbacks=[WeightWatcherCallback(log_dir="logs", wandb=False, alerts="default")])

Design
------
* Only ``on_train_begin``, ``on_epoch_end`` and ``on_train_end`` are
  implemented -- no batch hooks -- so Keras keeps dispatching batch-end
  callbacks asynchronously (overriding ``on_train_batch_end`` would turn that
  off for the whole callback list).
* Weights are read with ``keras.ops.convert_to_numpy`` (through
  :func:`wwmonitor.layers.extract_matrices`, which walks nested layers,
  Dense kernels ``(in, out)``, Conv kernels ``(*k, in, out)``, Embedding
  tables) on the training thread at epoch end; the analysis runs in the
  monitor's background thread.
* TensorBoard events are written with ``torch.utils.tensorboard`` when torch
  is importable, else with the ``tensorboard`` package's own event writer --
  never ``keras.callbacks.TensorBoard``, which imports TensorFlow.
* W&B is optional: ``wandb=True`` uses the active ``wandb.run`` (or starts one
  with ``wandb.init()``), or pass a run.  wandb is called only from the
  training thread (deferred delivery, pumped at epoch end and train end).
* Alerts named in ``stop_on`` set ``model.stop_training = True``.
* The step of a snapshot is the optimizer's iteration count.
* Keras needs one backend (``KERAS_BACKEND``: torch, jax or tensorflow); when it
  cannot load it, importing this module raises an ImportError naming the
  backend and the ``pip install`` command.  On tensorflow, graph mode, XLA
  (``jit_compile=True``), ``mixed_float16`` (the float32 variables are read)
  and ``MirroredStrategy`` are tested.
"""

from __future__ import annotations

import logging
import os
from typing import Any, Optional, Sequence, Union

# pip packages of Keras's backends, and the wwmonitor extras that install one with Keras
_BACKEND_PACKAGES = {"tensorflow": "tensorflow", "jax": "jax", "torch": "torch", "openvino": "openvino"}
_BACKEND_EXTRAS = {"tensorflow": "keras-tensorflow", "jax": "keras-jax", "torch": "keras-torch"}


def _configured_backend() -> str:
    """The backend Keras tried to load: its config module reads ``KERAS_BACKEND`` and ``keras.json``."""
    import sys

    cfg = sys.modules.get("keras.src.backend.config")
    try:
        return str(cfg.backend()) if cfg is not None else os.environ.get("KERAS_BACKEND", "tensorflow")
    except Exception:  # pragma: no cover - a Keras without backend()
        return os.environ.get("KERAS_BACKEND", "tensorflow")


def _import_error(e: ImportError) -> ImportError:
    """An ImportError that says what to install: Keras itself, or the backend it is configured for."""
    if e.name == "keras":
        return ImportError(
            "wwmonitor.callbacks.keras needs Keras 3 and one backend (torch, jax or tensorflow): "
            "pip install 'wwmonitor[keras-torch]' (or keras-jax, keras-tensorflow)"
        )
    backend = _configured_backend()
    pkg = _BACKEND_PACKAGES.get(backend, backend)
    extra = _BACKEND_EXTRAS.get(backend)
    cmd = f"pip install 'wwmonitor[{extra}]' (or: pip install {pkg})" if extra else f"pip install {pkg}"
    return ImportError(
        f"wwmonitor.callbacks.keras: Keras is configured for the {backend!r} backend (KERAS_BACKEND or "
        f"~/.keras/keras.json) but could not load it ({type(e).__name__}: {e}). Install it with {cmd}, or "
        f"choose an installed backend with KERAS_BACKEND=torch|jax|tensorflow before importing keras."
    )


try:
    import keras
except ImportError as _e:
    raise _import_error(_e) from _e

from ..alerts import AlertRules
from ..analyze import AnalysisOptions
from ._options import check_interval, monitor_kwargs, pump_sinks, stop_reason, store_monitor_options

__all__ = ["WeightWatcherCallback"]

log = logging.getLogger("wwmonitor")


class WeightWatcherCallback(keras.callbacks.Callback):
    """Monitor a Keras 3 model's weight spectra during ``model.fit``.

    Parameters
    ----------
    log_dir:
        TensorBoard log directory (``None``: no TensorBoard).
    wandb:
        ``False`` (default), ``True`` (the active ``wandb.run``, else
        ``wandb.init()``) or a wandb Run.
    csv:
        A CSV file or folder for the long-format scalars (``None``: none).
    every_n_epochs:
        Snapshot at the end of every n-th epoch.
    run_dir, run_name, resume, layers, exclude, queue_size, policy, options, config:
        As for :class:`wwmonitor.Monitor` (the run store is always written).
        A run of the same name is continued only with ``resume=True``;
        otherwise each ``fit`` starts a new run (``<name>-2`` ...) and says so.
    alerts, stop_on:
        Alert rules (``"default"``, ``None``, dict, :class:`AlertRules`) and
        the rule ids that stop training.
    metrics, esd_every_n_epochs:
        Scalars per layer for TensorBoard / W&B, and the ESD image interval in
        epochs (default 5: each figure costs ~0.1-0.7 s of background CPU per
        layer; ``0`` disables images).
    """

    def __init__(
        self,
        log_dir: Optional[Union[str, os.PathLike]] = None,
        *,
        wandb: Any = False,
        csv: Optional[Union[str, os.PathLike]] = None,
        every_n_epochs: int = 1,
        run_dir: Union[str, os.PathLike] = "wwmonitor-runs",
        run_name: Optional[str] = None,
        layers: Optional[Sequence[Any]] = None,
        exclude: Optional[Sequence[Any]] = None,
        alerts: Union[None, bool, str, dict, AlertRules] = "default",
        stop_on: Sequence[str] = (),
        metrics: Union[str, Sequence[str]] = "default",
        esd_every_n_epochs: int = 5,
        queue_size: int = 3,
        policy: str = "block",
        options: Optional[AnalysisOptions] = None,
        config: Optional[dict] = None,
        flush_timeout: Optional[float] = 300.0,
        resume: bool = False,
    ) -> None:
        super().__init__()
        check_interval("every_n_epochs", every_n_epochs, allow_none=False)
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
        self.log_dir = log_dir
        self.wandb = wandb
        self.csv = csv
        self.every_n_epochs = every_n_epochs
        self.monitor: Any = None
        self.sinks: list[Any] = []
        self._wandb_sink: Any = None
        self.stopped_by_alert = False

    # Keras checks this to keep batch hooks asynchronous; we implement none anyway.
    async_safe = True

    def _step(self) -> int:
        opt = getattr(self.model, "optimizer", None)
        it = getattr(opt, "iterations", None)
        if it is None:
            return 0
        return int(keras.ops.convert_to_numpy(it))

    def on_train_begin(self, logs: Optional[dict] = None) -> None:
        from ..monitor import Monitor
        from ..sinks.csv import CSVSink
        from ..sinks.tensorboard import TensorBoardSink
        from ..sinks.wandb import WandbSink

        self.close()
        sinks: list[Any] = []
        if self.log_dir is not None:
            sinks.append(TensorBoardSink(self.log_dir, metrics=self.metrics, hparams=self.config))
        if self.wandb is not False and self.wandb is not None:
            run = self.wandb
            if run is True:
                import wandb as _wandb

                run = _wandb.run if _wandb.run is not None else _wandb.init()
            self._wandb_sink = WandbSink(
                run, step_metric="ww/step", metrics=self.metrics, deliver="deferred", hparams=self.config
            )
            sinks.append(self._wandb_sink)
        if self.csv is not None:
            sinks.append(CSVSink(self.csv))
        self.sinks = sinks
        config = {**self.config, "backend": keras.backend.backend(), "callback": __name__}
        self.monitor = Monitor(
            self.model,
            self.run_dir,
            run_name=self.run_name,
            every_n_epochs=self.every_n_epochs,
            sinks=sinks,
            config=config,
            resume=self.resume,
            **monitor_kwargs(self),
        )

    def on_epoch_end(self, epoch: int, logs: Optional[dict] = None) -> None:
        mon = self.monitor
        if mon is None:
            return
        step = self._step()
        try:
            if mon.should_snapshot(epoch=epoch, step=step):
                mon.snapshot(step=step, epoch=epoch, model=self.model)
        except Exception as e:  # monitoring must never stop training
            log.warning(
                "wwmonitor: snapshot at epoch %d failed (%s: %s); training continues", epoch, type(e).__name__, e
            )
        self._pump()
        if mon.should_stop and not self.model.stop_training:
            self.model.stop_training = True
            self.stopped_by_alert = True
            log.warning(
                "wwmonitor: stopping training after epoch %d on an alert%s", epoch, stop_reason(mon.alerts_fired)
            )

    def on_train_end(self, logs: Optional[dict] = None) -> None:
        if self.monitor is not None:
            self.monitor.flush(self.flush_timeout)
        self.close()

    def close(self) -> None:
        """Close the monitor (flushes, closes the sinks) and deliver pending W&B rows."""
        if self.monitor is not None:
            self.monitor.close()
        self._pump()

    def _pump(self) -> None:
        if self._wandb_sink is not None:
            pump_sinks([self._wandb_sink])
