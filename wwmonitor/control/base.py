"""What TempBalance and AlphaDecay share: bind to a model, an optimizer and a monitor; apply newer results.

Life of a controller::

    ctl = TempBalance()                                   # configuration only
    ctl.bind(model=model, optimizer=opt, monitor=mon)     # layers -> parameters, hooks the optimizer
    for step ...:
        loss.backward(); opt.step(); sched.step()
        mon.snapshot(step=step, ...)                      # returns at once (analysis in the background)
        ctl.step(step)                                    # cheap: applies a newer result if there is one

``step(s)`` is called after the update that made step ``s``; what it applies is used from the next
``optimizer.step()`` on, and recorded with ``step = s``.  It never waits, except with ``sync=True``:
then, when a snapshot was taken since the previous call, it waits for that snapshot's analysis
(``Monitor.flush``) and applies it -- the references' timing (ESD at the boundary, new values before
the next update).
"""

from __future__ import annotations

import math
from typing import Any, Optional

import numpy as np

from ..records import ControlRecord
from .ddp import Agreement
from .decide import Decision, check_alpha, decide, optional_alpha
from .hooks import GroupSplitter, unwrap_optimizer
from .layout import NORMS, Layer, build_layers, unwrap_model

__all__ = ["Controller"]


class Controller:
    """Base class of the controllers (configuration at construction; :meth:`bind` before use)."""

    #: the name written in the records (``ControlRecord.controller``)
    name = "Controller"
    #: the optimizer entry it sets: ``"lr"`` or ``"weight_decay"``
    quantity = "lr"

    def __init__(
        self,
        *,
        alpha: str = "median",
        keep_ends: bool = True,
        min_evals: int = 50,
        norms: str = "batch",
        sync: bool = False,
        record: bool = True,
    ) -> None:
        self.alpha = check_alpha(alpha)
        if norms not in NORMS:
            raise ValueError(f"norms must be one of {NORMS}, got {norms!r}")
        if isinstance(min_evals, bool) or not isinstance(min_evals, int) or min_evals < 0:
            raise ValueError(f"min_evals must be an int >= 0, got {min_evals!r}")
        self.keep_ends = bool(keep_ends)
        self.min_evals = min_evals
        self.norms = norms
        self.sync = bool(sync)
        self.record = bool(record)
        self.assignments: list[ControlRecord] = []
        self._layers: list[Layer] = []
        self._monitor: Any = None
        self._splitter: Optional[GroupSplitter] = None
        self._agreement: Optional[Agreement] = None
        self._decision: Optional[Decision] = None
        self._seen = 0
        self._pending_state: Optional[dict[str, Any]] = None

    # ------------------------------------------------------------ the formula (subclasses)
    def assign(self, alphas: np.ndarray) -> np.ndarray:
        """Factors of the layers that take part, from their alphas."""
        raise NotImplementedError

    # ------------------------------------------------------------ binding
    def bind(self, *, model: Any = None, optimizer: Any, monitor: Any) -> "Controller":
        """Map the monitor's layers to ``model``'s parameters and hook ``optimizer`` (see the module doc).

        ``model`` defaults to the monitor's.  Raises ``ValueError`` naming the parameter when a layer's
        parameter is not in the optimizer or belongs to two layers, or the group when it has no
        ``lr``/``weight_decay``; ``RuntimeError`` when already bound.  Under DDP call it on every rank.
        """
        if self._splitter is not None:
            raise RuntimeError(f"{self.name} is already bound; build a new one for another optimizer")
        model = unwrap_model(model if model is not None else getattr(monitor, "model", None))
        if model is None or not callable(getattr(model, "named_modules", None)):
            raise ValueError(f"{self.name}.bind: model must be the torch nn.Module the monitor watches")
        names = list(monitor.layer_names)
        if not names:
            raise ValueError(f"{self.name}.bind: the monitor has no layers yet (build it with the model)")
        layers = build_layers(model, names, norms=self.norms)
        layer_of = {id(p): i for i, layer in enumerate(layers) for _, p in layer.params}
        _check_in_optimizer(unwrap_optimizer(optimizer), layers)
        self._splitter = GroupSplitter(optimizer, layer_of, self.quantity)
        self._layers, self._monitor = layers, monitor
        self._seen = int(monitor.snapshots_taken)
        self._agreement = Agreement.for_monitor(monitor)
        if self._pending_state is not None:
            self._restore_state(self._pending_state)
            self._pending_state = None
        return self

    def unbind(self) -> None:
        """Remove the optimizer hooks (the optimizer's own values are untouched)."""
        if self._splitter is not None:
            self._splitter.remove()
        self._splitter = None

    @property
    def layers(self) -> list[str]:
        """The controlled layers (module names), in the monitor's order."""
        return [layer.name for layer in self._layers]

    # ------------------------------------------------------------ stepping
    def step(self, step: int) -> bool:
        """Apply the newest analysed result if it is newer than the last applied one; whether it applied."""
        if self._splitter is None:
            raise RuntimeError(f"{self.name}.step: call bind(model=, optimizer=, monitor=) first")
        taken = int(self._monitor.snapshots_taken)
        new_snapshot, self._seen = taken != self._seen, taken
        if self._agreement is not None:
            if not new_snapshot:
                return False
            if self.sync:
                self._monitor.flush()
            got = self._agreement.share(self._newest() if self._agreement.rank == 0 else None)
        else:
            if self.sync and new_snapshot:
                self._monitor.flush()
            got = self._newest()
        if got is None:
            return False
        self._apply(got, int(step))
        return True

    def _newest(self) -> Optional[Decision]:
        results = self._monitor.results
        if not results:
            return None
        res = results[-1]
        last = self._decision.source_step if self._decision is not None else None
        if last is not None and int(res.step) <= last:
            return None
        return decide(
            res,
            [layer.matrices for layer in self._layers],
            self.assign,
            alpha=self.alpha,
            keep_ends=self.keep_ends,
            min_evals=self.min_evals,
        )

    def _apply(self, d: Decision, step: int) -> None:
        assert self._splitter is not None
        self._splitter.set_factors(d.factors)
        self._decision = d
        recs = [self._record(i, d, step) for i in range(len(self._layers))]
        self.assignments.extend(recs)
        if self.record and recs and callable(getattr(self._monitor, "record_control", None)):
            self._monitor.record_control(recs)

    def _base(self, i: int) -> float:
        assert self._splitter is not None
        params = [p for _, p in self._layers[i].params]
        for p in params:
            try:
                return float(self._splitter.group_of(p)[self.quantity])
            except ValueError:  # a frozen parameter, not in the optimizer
                continue
        return math.nan

    def _record(self, i: int, d: Decision, step: int) -> ControlRecord:
        base = self._base(i)
        f = d.factors[i]
        return ControlRecord(
            step=step,
            layer=self._layers[i].name,
            controller=self.name,
            quantity=self.quantity,
            alpha=optional_alpha(d.alphas[i]),
            factor=f,
            value=base * f,
            base=base,
            source_step=d.source_step,
        )

    # ------------------------------------------------------------ state
    @property
    def factors(self) -> dict[str, float]:
        """Layer -> the factor in use (1.0 everywhere before the first result)."""
        fs = self._decision.factors if self._decision is not None else (1.0,) * len(self._layers)
        return {layer.name: f for layer, f in zip(self._layers, fs)}

    @property
    def current(self) -> dict[str, float]:
        """Layer -> the value the next update uses (the optimizer's current base × the factor)."""
        return {name: self._base(i) * f for i, (name, f) in enumerate(self.factors.items())}

    def state_dict(self) -> dict[str, Any]:
        """The factors in use and the snapshot they came from (for a checkpoint)."""
        d = self._decision
        return {
            "controller": self.name,
            "quantity": self.quantity,
            "source_step": None if d is None else d.source_step,
            "layers": self.layers,
            "alphas": None if d is None else list(d.alphas),
            "factors": None if d is None else list(d.factors),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue with the factors of ``state`` (before or after :meth:`bind`); ``ValueError`` when it
        was written by another controller or for other layers."""
        if state.get("controller") != self.name:
            raise ValueError(f"{self.name}.load_state_dict: the state is of {state.get('controller')!r}")
        if self._splitter is None:
            self._pending_state = dict(state)
        else:
            self._restore_state(state)

    def _restore_state(self, state: dict[str, Any]) -> None:
        if state.get("factors") is None:
            return
        if list(state["layers"]) != self.layers:
            raise ValueError(
                f"{self.name}.load_state_dict: the state's layers {state['layers']} differ from this "
                f"model's {self.layers}"
            )
        d = Decision(int(state["source_step"]), tuple(state["alphas"]), tuple(state["factors"]))
        assert self._splitter is not None
        self._splitter.set_factors(d.factors)
        self._decision = d


def _check_in_optimizer(optimizer: Any, layers: list[Layer]) -> None:
    have = {id(p) for g in optimizer.param_groups for p in g["params"]}
    for layer in layers:
        for pname, p in layer.params:
            if getattr(p, "requires_grad", True) and id(p) not in have:
                raise ValueError(
                    f"control: parameter {pname!r} of layer {layer.name!r} is not in the optimizer; "
                    "a controlled layer's trainable parameters must all be optimised (or exclude the "
                    "layer from the monitor)"
                )
