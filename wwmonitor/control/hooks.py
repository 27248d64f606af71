"""Per-layer values inside any optimizer param-group layout, for the update only.

:class:`GroupSplitter` registers a step pre-hook and a step post-hook on a ``torch.optim.Optimizer``.
Just before ``optimizer.step()`` the pre-hook swaps ``optimizer.param_groups`` for a split copy: each
group whose parameters have different factors becomes one group per factor, a shallow copy of the
original with ``params`` the subset and ``lr`` (or ``weight_decay``) multiplied by the factor.  The
post-hook puts the original groups back.  So the update uses ``scheduled value × factor`` while every
learning-rate scheduler (chainable or not), ``state_dict()``, gradient clipping and the user keep
seeing the groups and values they made; the optimizer state is keyed by parameter and is unaffected.
A step that raised leaves the split groups in place until the next pre-hook or :meth:`restore`.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

__all__ = ["GroupSplitter", "unwrap_optimizer"]

Part = tuple[list[Any], float]


def unwrap_optimizer(optimizer: Any) -> Any:
    """The ``torch.optim.Optimizer`` inside framework wrappers (Lightning's ``LightningOptimizer``,
    accelerate's ``AcceleratedOptimizer``: both keep it as ``.optimizer``)."""
    import torch

    for _ in range(5):
        inner = getattr(optimizer, "optimizer", None)
        if not isinstance(inner, torch.optim.Optimizer):
            break
        optimizer = inner
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise TypeError(f"control: optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__}")
    return optimizer


class GroupSplitter:
    """Apply per-parameter factors of ``quantity`` (``"lr"`` / ``"weight_decay"``) to each update (see module doc).

    ``layer_of`` maps ``id(parameter)`` -> layer index; :meth:`set_factors` gives one factor per layer.
    """

    def __init__(self, optimizer: Any, layer_of: dict[int, int], quantity: str) -> None:
        self.optimizer = unwrap_optimizer(optimizer)
        self.quantity = quantity
        self.layer_of = dict(layer_of)
        for i, g in enumerate(self.optimizer.param_groups):
            if quantity not in g:
                raise ValueError(
                    f"control: param group {i} of {type(self.optimizer).__name__} has no {quantity!r}; "
                    f"this optimizer cannot take a per-layer {quantity}"
                )
        self._factors: Optional[list[float]] = None
        self._plan: Optional[list[Optional[list[Part]]]] = None
        self._saved: Optional[tuple[list[dict[str, Any]], list[tuple[dict[str, Any], dict[str, Any]]]]] = None
        self._handles = [
            self.optimizer.register_step_pre_hook(self._pre),
            self.optimizer.register_step_post_hook(self._post),
        ]

    # ------------------------------------------------------------ factors
    def set_factors(self, factors: Sequence[float]) -> None:
        """One factor per layer index; used from the next ``optimizer.step()`` on."""
        self._factors = [float(f) for f in factors]
        self._plan = self._make_plan()

    def factor_of(self, param: Any) -> float:
        """The factor the next update gives ``param`` (1.0 when it belongs to no layer)."""
        i = self.layer_of.get(id(param))
        return 1.0 if i is None or self._factors is None else self._factors[i]

    def group_of(self, param: Any) -> dict[str, Any]:
        """The (user's) param group holding ``param``."""
        for g in self._groups():
            if any(p is param for p in g["params"]):
                return g
        raise ValueError("control: parameter not in the optimizer")

    def _groups(self) -> list[dict[str, Any]]:
        return self._saved[0] if self._saved is not None else self.optimizer.param_groups

    def _make_plan(self) -> Optional[list[Optional[list[Part]]]]:
        plan: list[Optional[list[Part]]] = []
        split = False
        for g in self._groups():
            parts: dict[float, list[Any]] = {}
            for p in g["params"]:
                parts.setdefault(self.factor_of(p), []).append(p)
            if list(parts) == [1.0]:
                plan.append(None)
            else:
                plan.append([(ps, f) for f, ps in parts.items()])
                split = True
        return plan if split else None

    # ------------------------------------------------------------ hooks
    def _pre(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        self.restore()
        if self._plan is None:
            return
        groups = optimizer.param_groups
        if len(self._plan) != len(groups):  # add_param_group since the factors were set
            self._plan = self._make_plan()
            if self._plan is None:
                return
        q = self.quantity
        new: list[dict[str, Any]] = []
        subs: list[tuple[dict[str, Any], dict[str, Any]]] = []
        for g, parts in zip(groups, self._plan):
            if parts is None:
                new.append(g)
                continue
            for ps, f in parts:
                d = dict(g)
                d["params"] = ps
                d[q] = g[q] * f
                new.append(d)
                subs.append((g, d))
        self._saved = (groups, subs)
        optimizer.param_groups = new

    def _post(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        self.restore()

    def restore(self) -> None:
        """Put the user's groups back (keeping any other entry the optimizer changed in a split copy)."""
        if self._saved is None:
            return
        groups, subs = self._saved
        self._saved = None
        for g, d in subs:
            for k, v in d.items():
                if k not in ("params", self.quantity) and g.get(k) is not v:
                    g[k] = v
        self.optimizer.param_groups = groups

    def remove(self) -> None:
        """Unhook from the optimizer (the groups are left as the user made them)."""
        self.restore()
        for h in self._handles:
            h.remove()
        self._handles = []
