"""Controller callback logic shared by the ``lightning`` and ``pytorch_lightning`` packages.

:class:`WWControlMixin` drives a controller (:class:`wwmonitor.control.TempBalance`,
:class:`wwmonitor.control.AlphaDecay`) from the monitor of the
:class:`~wwmonitor.callbacks.lightning.WeightWatcherCallback` in the same
``Trainer``.  Like :mod:`._lightning_common` it never imports either package;
:mod:`wwmonitor.callbacks.lightning` and :mod:`wwmonitor.callbacks.pytorch_lightning`
bind it to their ``Callback``.

Hooks used (and why), Lightning 2.6
-----------------------------------
``on_train_start``      bind: ``configure_optimizers`` has run (``trainer.optimizers``)
                        and every callback's ``on_fit_start`` -- the monitor
                        callback opens its monitor there -- whatever the list order.
``on_train_batch_end``  ``ctl.step(trainer.global_step)``: Lightning calls it after
                        the batch's optimizer step and after the ``interval="step"``
                        schedulers (and, on an epoch's last batch, the
                        ``interval="epoch"`` ones) stepped.
``on_train_batch_start`` the same call again, before the batch's update: the
                        monitor callback snapshots in ``on_train_epoch_end``, after
                        the last ``on_train_batch_end``, so this is where an
                        epoch-end snapshot's factors (``sync=True``: always) are
                        taken up -- before the next epoch's first update.
``on_fit_end`` / ``teardown`` / ``on_exception``  release the optimizer.

``trainer.global_step`` counts optimizer steps: with ``accumulate_grad_batches``
the controller is stepped once per optimizer step (a step number is never
passed twice by the same hook); under manual optimization it counts every
``optimizer.step()`` the module makes, the axis the monitor's step snapshots use.

Several optimizers (manual optimization): the controller drives one optimizer;
``optimizer_index`` picks it from ``trainer.optimizers`` (required when there
are several -- a clear error says so).  Two controllers (e.g. TempBalance on a
generator's optimizer, another on a discriminator's) are two callbacks.
"""

from __future__ import annotations

from typing import Any, Optional

from ._control import ControlDriver
from ._lightning_common import WeightWatcherMixin

__all__ = ["WWControlMixin"]


class WWControlMixin:
    """Apply a controller's per-layer learning rates / weight decays during ``Trainer.fit``.

    Parameters
    ----------
    controller:
        A configured :class:`wwmonitor.control.TempBalance` or
        :class:`wwmonitor.control.AlphaDecay`; bound at train start to the
        LightningModule, the optimizer and the monitor of the
        ``WeightWatcherCallback`` in ``trainer.callbacks``.
    monitor_callback:
        The ``WeightWatcherCallback`` to follow (default: the one in
        ``trainer.callbacks``; required when there are several).
    optimizer_index:
        Which of ``trainer.optimizers`` the controller drives (default: the only one;
        required when ``configure_optimizers`` returns several).
    state_key:
        Key of this callback's state in checkpoints (default: the class name and the
        controller's class; give distinct keys to two callbacks with the same controller class).

    The controller's state (its current factors) is saved in checkpoints, so a
    resumed fit continues with the same factors.
    """

    def __init__(
        self,
        controller: Any,
        *,
        monitor_callback: Any = None,
        optimizer_index: Optional[int] = None,
        state_key: Optional[str] = None,
    ) -> None:
        super().__init__()
        self.driver = ControlDriver(controller, "WWControlCallback (Lightning)")
        self.monitor_callback = monitor_callback
        self.optimizer_index = optimizer_index
        self._state_key = state_key

    @property
    def controller(self) -> Any:
        return self.driver.controller

    # ------------------------------------------------------------ Lightning API
    @property
    def state_key(self) -> str:
        if self._state_key:
            return self._state_key
        gen = getattr(self, "_generate_state_key", None)
        name = type(self.controller).__name__
        return gen(controller=name) if callable(gen) else f"{type(self).__qualname__}{{controller={name}}}"

    def state_dict(self) -> dict[str, Any]:
        return self.driver.state_dict()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.driver.load_state_dict(state_dict)

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        ww = self._monitor_callback(trainer)
        optimizer = self._optimizer(trainer)
        self.driver.bind(model=pl_module, optimizer=optimizer, monitor=ww.session.monitor)

    def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:
        self.driver.step(int(trainer.global_step), "before")

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        self.driver.step(int(trainer.global_step), "after")

    def on_fit_end(self, trainer: Any, pl_module: Any) -> None:
        self.driver.unbind()

    def teardown(self, trainer: Any, pl_module: Any, stage: str) -> None:
        if stage == "fit":
            self.driver.unbind()

    def on_exception(self, trainer: Any, pl_module: Any, exception: BaseException) -> None:
        self.driver.unbind()

    # ------------------------------------------------------------ internals
    def _monitor_callback(self, trainer: Any) -> Any:
        if self.monitor_callback is not None:
            if not isinstance(self.monitor_callback, WeightWatcherMixin):
                raise TypeError(
                    "WWControlCallback: monitor_callback must be a wwmonitor WeightWatcherCallback, "
                    f"got {type(self.monitor_callback).__name__}"
                )
            return self.monitor_callback
        found = [cb for cb in getattr(trainer, "callbacks", []) or [] if isinstance(cb, WeightWatcherMixin)]
        if not found:
            raise ValueError(
                "WWControlCallback: no WeightWatcherCallback in trainer.callbacks; the controller reads the "
                "spectra that callback analyses -- add one, e.g. callbacks=[WeightWatcherCallback(every_n_epochs=1), "
                "WWControlCallback(TempBalance())]"
            )
        if len(found) > 1:
            raise ValueError(
                f"WWControlCallback: {len(found)} WeightWatcherCallbacks in trainer.callbacks; say which one the "
                "controller follows with monitor_callback="
            )
        return found[0]

    def _optimizer(self, trainer: Any) -> Any:
        opts = list(getattr(trainer, "optimizers", []) or [])
        if not opts:
            raise ValueError("WWControlCallback: the Trainer has no optimizer (configure_optimizers returned none)")
        if self.optimizer_index is None:
            if len(opts) > 1:
                raise ValueError(
                    f"WWControlCallback: configure_optimizers returned {len(opts)} optimizers; a controller drives "
                    "one: pass optimizer_index= (one WWControlCallback per optimizer to control several)"
                )
            return opts[0]
        if not 0 <= self.optimizer_index < len(opts):
            raise ValueError(
                f"WWControlCallback: optimizer_index={self.optimizer_index}, but the Trainer has "
                f"{len(opts)} optimizer(s)"
            )
        return opts[self.optimizer_index]
