"""What a training family is: settings, a reference setting, and a task factory.

A :class:`Task` is one training run in the making: ``model`` (what ``wwmonitor.Monitor`` watches),
``train_epoch()`` (one epoch; returns the global step), ``val_loss()`` and ``tracked()`` (the trained hidden
weight matrices the criterion reads, as NumPy arrays, ``out`` first).  :class:`TorchTask` implements it for a
torch model trained by a plain minibatch loop.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Protocol

import numpy as np


class Task(Protocol):
    model: Any
    #: extra keyword arguments for ``wwmonitor.Monitor`` (e.g. ``exclude=``), as a user would pass them
    monitor_kwargs: dict[str, Any]

    def train_epoch(self) -> int: ...

    def val_loss(self) -> float: ...

    def tracked(self) -> dict[str, np.ndarray]: ...


@dataclass(frozen=True)
class Family:
    """One training family: its settings (name -> hyper-parameters) and the reference (standard) setting.

    ``intent`` says what each setting was *meant* to do ("healthy" or "collapse"); it is documentation only --
    the label of a run comes from :mod:`..criterion`.
    """

    name: str
    kind: str
    epochs: int
    settings: dict[str, dict[str, Any]]
    reference: str
    make: Callable[[dict[str, Any], int], Task]
    intent: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        assert self.reference in self.settings, (self.name, self.reference)
        assert set(self.intent) <= set(self.settings), self.name


class TorchTask:
    """A torch model trained by minibatch steps over ``(x_train, y_train)``, shuffled by a seeded generator.

    ``tracked_params``: names of the parameters the criterion reads (conv kernels are flattened by it).
    A non-finite loss does not stop the run: the weights go on being what the optimiser makes of them.
    """

    def __init__(
        self,
        model: Any,
        opt: Any,
        loss_fn: Callable[[Any, Any], Any],
        data: tuple[Any, Any, Any, Any],
        *,
        batch: int,
        seed: int,
        tracked_params: list[str],
        monitor_kwargs: Optional[dict[str, Any]] = None,
        steps_per_epoch: Optional[int] = None,
    ) -> None:
        import torch

        self.model, self.opt, self.loss_fn = model, opt, loss_fn
        self.xtr, self.ytr, self.xva, self.yva = data
        self.batch = batch
        self.gen = torch.Generator().manual_seed(1000 + seed)
        self.params = dict(model.named_parameters())
        missing = [n for n in tracked_params if n not in self.params]
        assert not missing, f"unknown tracked parameters {missing}"
        self.tracked_params = tracked_params
        self.monitor_kwargs = dict(monitor_kwargs or {})
        self.steps_per_epoch = steps_per_epoch
        self.step = 0

    def train_epoch(self) -> int:
        import torch

        self.model.train()
        n = len(self.xtr)
        if self.steps_per_epoch is None:  # one pass over the shuffled data
            perm = torch.randperm(n, generator=self.gen)
            batches = [perm[i : i + self.batch] for i in range(0, n, self.batch)]
        else:  # full-batch (or fixed-size) steps
            batches = [torch.randperm(n, generator=self.gen)[: self.batch] for _ in range(self.steps_per_epoch)]
        for idx in batches:
            self.opt.zero_grad(set_to_none=True)
            loss = self.loss_fn(self.model(self.xtr[idx]), self.ytr[idx])
            loss.backward()
            self.opt.step()
            self.step += 1
        return self.step

    def val_loss(self) -> float:
        import torch

        self.model.eval()
        with torch.no_grad():
            v = float(self.loss_fn(self.model(self.xva), self.yva))
        return v if math.isfinite(v) else float("nan")

    def tracked(self) -> dict[str, np.ndarray]:
        return {n: self.params[n].detach().cpu().numpy().copy() for n in self.tracked_params}


def noisy_labels(y: Any, fraction: float, n_classes: int, seed: int) -> Any:
    """``y`` with ``fraction`` of its entries replaced by uniformly drawn classes (seeded)."""
    import torch

    if fraction <= 0:
        return y
    g = torch.Generator().manual_seed(2000 + seed)
    flip = torch.rand(len(y), generator=g) < fraction
    out = y.clone()
    out[flip] = torch.randint(0, n_classes, (int(flip.sum()),), generator=g)
    return out
