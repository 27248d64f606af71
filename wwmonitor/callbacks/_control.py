"""The framework-free half of the controller callbacks: :class:`ControlDriver`.

A controller (:class:`wwmonitor.control.TempBalance`, :class:`wwmonitor.control.AlphaDecay`)
is configured without an optimizer; a callback binds it once the framework has
built the optimizer and the monitor callback has opened its monitor, then calls
:meth:`ControlDriver.step` with the number of optimizer steps done:

* after every optimizer step (and the scheduler step that follows it), and
* again right before the next update,

so the factors computed from a snapshot taken at an epoch's end (by the monitor
callback, whatever its place in the callback list) apply before the next
epoch's first update.  ``step`` is called at most once per step number and hook
kind; the controller itself never waits unless it was built with ``sync=True``.

Everything framework-specific (which hook, where the optimizer is) lives in the
callbacks: :mod:`wwmonitor.callbacks.lightning`, :mod:`wwmonitor.callbacks.transformers`.
"""

from __future__ import annotations

import logging
from typing import Any, Mapping

__all__ = ["ControlDriver"]

log = logging.getLogger("wwmonitor")

#: version of the checkpoint state a control callback saves
STATE_VERSION = 1


class ControlDriver:
    """Bind a controller once, call its ``step`` once per (step, hook kind), keep its checkpoint state.

    Parameters
    ----------
    controller:
        A :class:`wwmonitor.control.TempBalance` / :class:`wwmonitor.control.AlphaDecay` (configured, unbound).
    owner:
        The callback's name, for messages.
    """

    def __init__(self, controller: Any, owner: str) -> None:
        for need in ("bind", "unbind", "step", "state_dict", "load_state_dict"):
            if not callable(getattr(controller, need, None)):
                raise TypeError(
                    f"{owner}: controller must be a wwmonitor.control controller (TempBalance, AlphaDecay); "
                    f"{type(controller).__name__} has no {need}()"
                )
        self.controller = controller
        self.owner = owner
        self.bound = False
        self._last: dict[str, int] = {}

    def bind(self, *, model: Any, optimizer: Any, monitor: Any) -> None:
        """Bind the controller to ``model``, ``optimizer`` (or a framework's wrapper of it) and ``monitor``."""
        if monitor is None:
            raise ValueError(
                f"{self.owner}: the monitor callback has no open monitor (it opens at fit/train start; "
                "was it given to the same Trainer?)"
            )
        self.unbind()
        # the controller finds the torch optimizer inside framework wrappers (accelerate, Lightning)
        self.controller.bind(model=model, optimizer=optimizer, monitor=monitor)
        self.bound = True
        self._last = {}

    def step(self, step: int, kind: str) -> bool:
        """``ctl.step(step)`` unless this hook kind already called it at ``step``; returns whether it applied."""
        if not self.bound or self._last.get(kind) == step:
            return False
        self._last[kind] = step
        return bool(self.controller.step(int(step)))

    def unbind(self) -> None:
        """Release the optimizer (idempotent); the controller keeps its assignments for reading."""
        if self.bound:
            self.bound = False
            self.controller.unbind()

    # ------------------------------------------------------------ checkpoint state
    def state_dict(self) -> dict[str, Any]:
        return {"version": STATE_VERSION, "controller": self.controller.state_dict()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict` output (the controller applies it now, or at its ``bind``)."""
        ctl = state.get("controller") if state.get("version") == STATE_VERSION else None
        if ctl is not None:
            self.controller.load_state_dict(dict(ctl))
