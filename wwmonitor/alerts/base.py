"""What every rule is built from: the per-layer state, the per-layer context and the :class:`Rule` base."""

from __future__ import annotations

import math
from typing import Any, Callable, ClassVar, NamedTuple, Optional

import numpy as np

from ..metrics import LayerMetrics
from ..records import SnapshotResult

__all__ = ["Firing", "LayerContext", "LayerState", "Rule"]


class Firing(NamedTuple):
    """What a rule returns when it fires on a layer: the message and the triggering value."""

    message: str
    value: Optional[float] = None


class LayerState:
    """The rules' memory of one layer, kept across snapshots (and in checkpoints).

    ``seen`` counts the snapshots that contained the layer, ``active`` holds the
    hysteresis flag of every stateful rule, ``fields`` the rules' own counters
    (declared in :attr:`Rule.state`; every declared field is always present).
    """

    __slots__ = ("seen", "active", "fields")

    def __init__(self, fields: dict[str, Any], seen: int = 0, active: Optional[dict[str, bool]] = None) -> None:
        self.seen = seen
        self.active: dict[str, bool] = {} if active is None else active
        self.fields = fields

    def edge(self, rule: str, cond: bool, clear: bool) -> bool:
        """Hysteresis: True on the inactive -> active transition of ``rule``; ``clear`` deactivates it."""
        was = self.active.get(rule, False)
        if not was and cond:
            self.active[rule] = True
            return True
        if was and clear:
            self.active[rule] = False
        return False


class LayerContext:
    """One layer of one snapshot, as the rules see it."""

    __slots__ = ("lm", "result", "where")

    def __init__(self, lm: LayerMetrics, result: SnapshotResult) -> None:
        self.lm = lm
        self.result = result
        epoch = f" (epoch {result.epoch})" if result.epoch is not None else ""
        #: message prefix, e.g. ``"layer 'fc' at step 7 (epoch 1)"``
        self.where = f"layer {lm.name!r} at step {result.step}{epoch}"

    @property
    def alpha(self) -> Optional[float]:
        """The layer's power-law alpha, or ``None`` when it has no finite fit."""
        a = self.lm.alpha
        return float(a) if a is not None and math.isfinite(a) else None

    @property
    def esd(self) -> Optional[np.ndarray]:
        """The layer's λ-axis ESD from the snapshot, if it was kept."""
        return self.result.esds.get(self.lm.name)


class Rule:
    """One alert rule.  Subclasses set the class attributes and implement :meth:`check`.

    A rule object holds only its settings; everything it remembers about a
    layer lives in the :class:`LayerState` it is handed (``state`` declares
    its fields as ``name -> (default, converter)``; converters read the
    checkpointed value back).  :meth:`check` may raise: the engine reports the
    error for this (rule, layer) and goes on with the other rules and layers.
    """

    #: rule id, as in ``AlertRules(rules=[...])``
    id: ClassVar[str]
    #: ``"info" | "warning" | "error"``
    severity: ClassVar[str]
    #: the rule reads what :meth:`inspect` computes from the raw weight matrices
    needs_weights: ClassVar[bool] = False
    #: the rule also runs on layers whose weights are not finite (all others skip them)
    on_non_finite: ClassVar[bool] = False
    #: per-layer fields of :attr:`LayerState.fields` this rule owns
    state: ClassVar[dict[str, tuple[Any, Callable[[Any], Any]]]] = {}

    def check(self, ctx: LayerContext, st: LayerState) -> Optional[Firing]:
        raise NotImplementedError

    def inspect(self, name: str, W: np.ndarray, lm: LayerMetrics) -> None:
        """Compute what the rule needs from the weights into ``lm`` (``lm.num_traps``; analyser thread; no state)."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in vars(self).items())})"
