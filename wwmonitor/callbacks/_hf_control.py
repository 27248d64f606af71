"""Hugging Face ``Trainer`` controller callback: :class:`WWControlCallback` (import it from
:mod:`wwmonitor.callbacks.transformers`).

Hooks used (and why), transformers 5.x
--------------------------------------
Trainer callbacks never see each other or the ``Trainer``, so the callback is
given the :class:`~wwmonitor.callbacks.transformers.WeightWatcherCallback` whose
monitor it follows.

``on_train_begin``  bind the controller to the model, the Trainer's optimizer --
                    the real ``torch.optim.Optimizer`` inside accelerate's
                    ``AcceleratedOptimizer`` (hooks on the wrapper would never
                    run) -- with the decay / no-decay param groups the Trainer
                    built, and the monitor.  When the monitor callback comes
                    later in the list (its monitor opens in its own
                    ``on_train_begin``), the binding waits for the first
                    ``on_step_begin``.  A run resumed from a checkpoint restores
                    the controller's factors from ``trainer_state.json``.
``on_step_end``     ``ctl.step(state.global_step)``: after ``optimizer.step()``
                    and ``lr_scheduler.step()`` (once per optimizer step, also
                    with gradient accumulation).
``on_step_begin``   the same call again, before the step's update: the monitor
                    callback's ``on_epoch_end`` snapshot comes after the last
                    ``on_step_end`` of an epoch, so its factors (``sync=True``:
                    always) apply before the next epoch's first update.
``on_train_end``    release the optimizer.

The Trainer's learning-rate scheduler (``LambdaLR``) keeps setting the groups'
rates: the controller multiplies them for each update only.
"""

from __future__ import annotations

import json
import logging
from typing import Any, Optional

from transformers.trainer_callback import TrainerCallback

try:  # transformers >= 4.41: callback state saved in checkpoints
    from transformers.trainer_callback import ExportableState
except ImportError:  # pragma: no cover - older transformers: no callback state in checkpoints

    class ExportableState:  # type: ignore[no-redef]
        pass


from ._control import ControlDriver
from ._options import SessionAttributes

__all__ = ["WWControlCallback"]

log = logging.getLogger("wwmonitor")


class WWControlCallback(TrainerCallback, ExportableState):
    """Apply a controller's per-layer learning rates / weight decays during ``Trainer.train``.

    Parameters
    ----------
    controller:
        A configured :class:`wwmonitor.control.TempBalance` or :class:`wwmonitor.control.AlphaDecay`.
    monitor_callback:
        The :class:`~wwmonitor.callbacks.transformers.WeightWatcherCallback` given to the same
        ``Trainer``, whose analysed spectra drive the controller.
    state_key:
        Identifies this callback's state in checkpoints (default: the class name and the controller's class).

    Example::

        ww = WeightWatcherCallback(every_n_epochs=1)
        trainer = Trainer(model=model, args=args, train_dataset=ds,
                          callbacks=[ww, WWControlCallback(TempBalance(), ww)])
    """

    def __init__(self, controller: Any, monitor_callback: Any, *, state_key: Optional[str] = None) -> None:
        # the Trainer's WeightWatcherCallback: a session-driven callback that is a TrainerCallback
        if not (isinstance(monitor_callback, SessionAttributes) and isinstance(monitor_callback, TrainerCallback)):
            raise TypeError(
                "WWControlCallback: monitor_callback must be the wwmonitor WeightWatcherCallback given to the same "
                f"Trainer, got {type(monitor_callback).__name__}"
            )
        self.driver = ControlDriver(controller, "WWControlCallback (Trainer)")
        self.monitor_callback = monitor_callback
        self._state_key = state_key
        self._to_bind: Optional[tuple[Any, Any]] = None

    @property
    def controller(self) -> Any:
        return self.driver.controller

    @property
    def state_key(self) -> str:
        return self._state_key or f"{type(self).__qualname__}{{controller={type(self.controller).__name__}}}"

    # ------------------------------------------------------------ checkpoint state
    def state(self) -> dict[str, Any]:
        """``ExportableState``: what the Trainer stores in ``trainer_state.json`` (JSON) at each checkpoint."""
        mine = {"key": self.state_key, **self.driver.state_dict()}
        try:
            json.dumps(mine)
        except (TypeError, ValueError) as e:
            log.warning("wwmonitor: the controller's state is not JSON (%s); the checkpoint will not hold it", e)
            mine = {"key": self.state_key, "version": mine["version"], "controller": None}
        # "args" empty: the Trainer cannot re-create this callback (it holds a controller object)
        return {"args": {}, "attributes": {}, "wwmonitor_control": mine}

    def _restore(self, state: Any) -> None:
        found = []
        for entry in (getattr(state, "stateful_callbacks", None) or {}).values():
            for d in entry if isinstance(entry, list) else [entry]:
                mine = d.get("wwmonitor_control") if isinstance(d, dict) else None
                if isinstance(mine, dict) and mine.get("key") == self.state_key:
                    found.append(mine)
        if found:
            self.driver.load_state_dict(found[-1])

    # ------------------------------------------------------------ Trainer hooks
    def on_train_begin(
        self, args: Any, state: Any, control: Any, model: Any = None, optimizer: Any = None, **kwargs: Any
    ) -> None:
        if model is None or optimizer is None:
            raise ValueError("WWControlCallback: the Trainer passed no model or optimizer to on_train_begin")
        if int(state.global_step) > 0:  # resumed from a checkpoint
            self._restore(state)
        self._to_bind = (model, optimizer)
        if self.monitor_callback.session.monitor is not None:
            self._bind()

    def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self._to_bind is not None:
            self._bind()
        self.driver.step(int(state.global_step), "before")

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.driver.step(int(state.global_step), "after")

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._to_bind = None
        self.driver.unbind()

    def _bind(self) -> None:
        assert self._to_bind is not None
        model, optimizer = self._to_bind
        self._to_bind = None
        self.driver.bind(model=model, optimizer=optimizer, monitor=self.monitor_callback.session.monitor)
