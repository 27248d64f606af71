"""The demo's settings (:class:`DemoConfig`), its result (:class:`DemoResult`) and its import guard."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

#: batch sizes of the default sweep (powers of two, 2 ... 512)
DEFAULT_BATCH_SIZES: tuple[int, ...] = (2, 4, 8, 16, 32, 64, 128, 256, 512)
DEFAULT_SEEDS: tuple[int, ...] = (0, 1, 2)
#: metrics whose rank correlation with the batch size the demo reports (expected sign +, + , +, -)
TREND_METRICS: dict[str, int] = {"alpha": +1, "mp_softrank": +1, "stable_rank": +1, "num_spikes": -1}
#: layers the demo reports on (the conv layer has 64x1 slices and FC3 only 10 eigenvalues: too few to fit)
DEMO_LAYERS: tuple[str, ...] = ("net.fc1", "net.fc2")


@dataclass
class DemoConfig:
    """Settings of one demo sweep (all have CLI options of the same name)."""

    out: str = "wwmonitor-demo"
    epochs: int = 20
    batch_sizes: tuple[int, ...] = DEFAULT_BATCH_SIZES
    seeds: tuple[int, ...] = DEFAULT_SEEDS
    lr: float = 0.05
    #: "constant" (the demo) or "linear": lr · batch_size / lr_ref_batch (the control experiment)
    lr_scaling: str = "constant"
    lr_ref_batch: int = 32
    workers: int = 2
    progress: bool = True
    report: bool = True
    #: "local" (a process pool on this machine) or "ray" (Ray tasks: a local Ray, or the cluster at ``address``)
    backend: str = "local"
    #: the Ray cluster to run on (``backend="ray"`` only; ``None``: start a local Ray with ``workers`` CPUs)
    address: Optional[str] = None

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise ValueError(f"epochs must be >= 1, got {self.epochs}")
        self.batch_sizes = tuple(int(b) for b in self.batch_sizes)
        self.seeds = tuple(int(s) for s in self.seeds)
        if not self.batch_sizes or any(b < 1 for b in self.batch_sizes):
            raise ValueError(f"batch_sizes must be positive integers, got {self.batch_sizes}")
        if len(set(self.batch_sizes)) != len(self.batch_sizes):
            raise ValueError(f"batch_sizes contains duplicates: {self.batch_sizes}")
        if not self.seeds:
            raise ValueError("seeds: give at least one seed")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ValueError(f"lr must be a positive number, got {self.lr}")
        if self.lr_scaling not in ("constant", "linear"):
            raise ValueError(f"lr_scaling must be 'constant' or 'linear', got {self.lr_scaling!r}")
        if self.workers < 1:
            raise ValueError(f"workers must be >= 1, got {self.workers}")
        if self.backend not in ("local", "ray"):
            raise ValueError(f"backend must be 'local' or 'ray', got {self.backend!r}")
        if self.address is not None and self.backend != "ray":
            raise ValueError("address is for backend='ray' (a Ray cluster); the local backend takes no address")

    def lr_for(self, batch_size: int) -> float:
        """Learning rate used for ``batch_size``."""
        if self.lr_scaling == "linear":
            return self.lr * batch_size / self.lr_ref_batch
        return self.lr


@dataclass
class DemoResult:
    """What :func:`run_demo` produced."""

    out: Path
    runs: list[dict[str, Any]]
    spearman: dict[str, dict[str, dict[str, float]]]  # seed -> layer -> metric -> rho
    report: Optional[Path] = None
    seconds: float = 0.0
    config: dict[str, Any] = field(default_factory=dict)
    #: metric -> what this run measured of its trend with the batch size (see ``demo.findings.measure_trends``)
    trends: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: Spearman of each model-level summary with val_acc, per seed group and over all runs
    val_ranking: list[dict[str, Any]] = field(default_factory=list)


# --------------------------------------------------------------------------
# import guard: what the demo needs beyond the core (the ``demo`` extra)
# --------------------------------------------------------------------------

#: the command that installs everything the demo needs
DEMO_INSTALL = 'pip install "wwmonitor[demo]"'
#: (import name, distribution) of the demo's requirements; TensorBoardLogger accepts tensorboardX instead
_DEMO_REQUIREMENTS: tuple[tuple[str, str], ...] = (
    ("sklearn", "scikit-learn"),
    ("torch", "torch"),
    ("lightning", "lightning"),
    ("tensorboard", "tensorboard"),
)


def missing_demo_requirement() -> Optional[str]:
    """``None`` when the demo can run, else one line saying which requirement is missing and how to install it."""
    import importlib
    import importlib.util

    for module, dist in _DEMO_REQUIREMENTS:
        if module == "tensorboard" and importlib.util.find_spec("tensorboardX") is not None:
            continue
        try:
            importlib.import_module(module)
        except Exception as e:  # ImportError, or a broken install failing while it imports
            why = (str(e).strip().splitlines() or [type(e).__name__])[0]
            return (
                f"wwmonitor demo needs {dist} (import {module} failed: {why}); "
                f"install the demo's requirements with: {DEMO_INSTALL}"
            )
    return None


# --------------------------------------------------------------------------
# data and model
# --------------------------------------------------------------------------
