"""Keras 3 callback (any backend: torch, jax, tensorflow).

Example::

    import keras
    from wwmonitor.callbacks.keras import WeightWatcherCallback

    model.fit(x, y, epochs=10,
              callbacks=[WeightWatcherCallback(every_n_epochs=1, loggers={"tensorboard": "logs"})])

Design
------
* The same options as every other entry point (``every_n_epochs``,
  ``every_n_steps`` and every :class:`wwmonitor.Monitor` option), driven by
  the shared :class:`wwmonitor.callbacks._session.CallbackSession`.
* With ``every_n_epochs`` only, just ``on_train_begin``, ``on_epoch_end`` and
  ``on_train_end`` are used -- no batch hook -- so Keras keeps dispatching
  batch-end callbacks asynchronously.  ``every_n_steps`` adds a batch-end
  hook on this instance and turns that off (``async_safe = False``): an
  asynchronous hook would read the weights while the next step updates them.
* Weights are read with ``keras.ops.convert_to_numpy`` (through
  :func:`wwmonitor.layers.extract_matrices`, which walks nested layers,
  Dense kernels ``(in, out)``, Conv kernels ``(*k, in, out)``, Embedding
  tables) on the training thread at epoch end; the analysis runs in the
  monitor's background thread.
* TensorBoard events are written with ``torch.utils.tensorboard`` when torch
  is importable, else with the ``tensorboard`` package's own event writer --
  never ``keras.callbacks.TensorBoard``, which imports TensorFlow.
* Keras has no logger objects: ``loggers={"tensorboard": log_dir, "wandb":
  True | run, "csv": path}`` names the outputs (``log_dir=``, ``wandb=``,
  ``csv=`` are the old spelling: they still work, with a ``DeprecationWarning``).
  wandb is called only from the training thread (deferred delivery, pumped
  at epoch end and train end).
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
from typing import Any, Optional

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

from ._options import SessionAttributes, legacy_keras_loggers
from ._session import CallbackSession

__all__ = ["WeightWatcherCallback"]

log = logging.getLogger("wwmonitor")


class WeightWatcherCallback(SessionAttributes, keras.callbacks.Callback):
    """Monitor a Keras 3 model's weight spectra during ``model.fit``.

    Parameters
    ----------
    every_n_epochs:
        Snapshot at the end of every n-th epoch (``None``: never at epoch end).
    every_n_steps:
        Also snapshot every n optimizer steps (``optimizer.iterations``; step 0
        never).  Makes Keras call batch-end hooks synchronously.
    **options:
        Every :class:`wwmonitor.Monitor` option, same names and meaning
        (:class:`~wwmonitor.monitor.options.MonitorOptions`).  ``loggers``: a
        mapping ``{"tensorboard": log_dir, "wandb": True | run, "csv": path}``
        (Keras has no logger objects, so ``True`` adds none).  A run of the
        same name is continued only with ``resume=True``; otherwise each
        ``fit`` starts a new run (``<name>-2`` ...) and says so.
    """

    # Keras checks this to keep batch hooks asynchronous; an instance with every_n_steps sets it False.
    async_safe = True

    def __init__(self, every_n_epochs: Optional[int] = 1, every_n_steps: Optional[int] = None, **options: Any) -> None:
        super().__init__()
        every_n_epochs = legacy_keras_loggers(every_n_epochs, options)
        self.session = CallbackSession("WeightWatcherCallback (Keras)", every_n_epochs, every_n_steps, options)
        if every_n_steps is not None:
            # an instance attribute, not a class method: without every_n_steps Keras still sees the default hook
            self.on_train_batch_end = self._on_train_batch_end
            self.async_safe = False

    def _step(self) -> int:
        opt = getattr(self.model, "optimizer", None)
        it = getattr(opt, "iterations", None)
        if it is None:
            return 0
        return int(keras.ops.convert_to_numpy(it))

    def on_train_begin(self, logs: Optional[dict] = None) -> None:
        self.session.open(self.model, config={"backend": keras.backend.backend(), "callback": __name__})
        self._epoch = 0

    def on_epoch_begin(self, epoch: int, logs: Optional[dict] = None) -> None:
        self._epoch = int(epoch)

    def _on_train_batch_end(self, batch: int, logs: Optional[dict] = None) -> None:
        self._guard(lambda: self.session.on_step(self._step(), self._epoch, model=self.model), "step")
        self.session.pump()
        self._stop_decision(f"at step {self.session.last_step}")

    def on_epoch_end(self, epoch: int, logs: Optional[dict] = None) -> None:
        self._guard(lambda: self.session.on_epoch_end(epoch, self._step(), model=self.model), f"epoch {epoch}")
        self.session.pump()
        self._stop_decision(f"after epoch {epoch}")

    def on_train_end(self, logs: Optional[dict] = None) -> None:
        self.session.finish()
        self.session.close()

    def close(self) -> None:
        """Close the monitor (flushes, closes the sinks) and deliver pending W&B rows."""
        self.session.close()

    def _guard(self, fn: Any, what: str) -> None:
        try:
            fn()
        except Exception as e:  # monitoring must never stop training
            log.warning("wwmonitor: snapshot at %s failed (%s: %s); training continues", what, type(e).__name__, e)

    def _stop_decision(self, where: str) -> None:
        if self.session.stop_requested() and not self.model.stop_training:
            self.model.stop_training = True
            self.session.note_stop(where)
