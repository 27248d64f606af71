"""One run of the demo: sklearn digits, MicroAlexNet, Lightning with the wwmonitor callback."""

from __future__ import annotations

import contextlib
import logging
import math
import os
import shutil
import time
import warnings
from pathlib import Path
from typing import Any, Iterator, Optional

import numpy as np


def load_digits_split(seed: int = 0, val_fraction: float = 0.2) -> tuple[Any, Any, Any, Any]:
    """sklearn digits as torch tensors ``(x_train, y_train, x_val, y_val)``.

    Images are ``(n, 1, 8, 8)`` float32, standardised with the training
    set's pixel mean and standard deviation (one scalar each).  The split is
    fixed by ``seed`` = 0 regardless of the training seed, so every run of a
    sweep sees the same data.
    """
    import torch
    from sklearn.datasets import load_digits

    X, y = load_digits(return_X_y=True)
    rng = np.random.default_rng(seed)
    idx = rng.permutation(len(X))
    n_val = int(round(val_fraction * len(X)))
    tr, va = idx[n_val:], idx[:n_val]
    mu, sd = X[tr].mean(), X[tr].std()
    Xs = ((X - mu) / sd).astype(np.float32).reshape(-1, 1, 8, 8)
    t = torch.from_numpy
    return t(Xs[tr]), t(y[tr].astype(np.int64)), t(Xs[va]), t(y[va].astype(np.int64))


def build_model() -> Any:
    """The MicroAlexNet ``torch.nn.Module`` (layers named ``conv``, ``fc1``, ``fc2``, ``fc3``)."""
    import torch
    from torch import nn

    class MicroAlexNet(nn.Module):
        """Conv(1→64, 3x3) + ReLU + MaxPool(2) → FC1 1024→384 → FC2 384→192 → FC3 192→10."""

        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(1, 64, kernel_size=3, padding=1)
            self.pool = nn.MaxPool2d(2)
            self.fc1 = nn.Linear(64 * 4 * 4, 384)
            self.fc2 = nn.Linear(384, 192)
            self.fc3 = nn.Linear(192, 10)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = self.pool(torch.relu(self.conv(x))).flatten(1)
            x = torch.relu(self.fc1(x))
            x = torch.relu(self.fc2(x))
            return self.fc3(x)

    return MicroAlexNet()


def _lightning_module(lr: float) -> Any:
    import lightning.pytorch as L
    import torch
    from torch.nn import functional as F

    class DigitsClassifier(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = build_model()
            self.lr = lr

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.net(x)

        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            x, y = batch
            loss = F.cross_entropy(self(x), y)
            return loss

        def validation_step(self, batch: Any, batch_idx: int) -> None:
            x, y = batch
            logits = self(x)
            self.log("val_loss", F.cross_entropy(logits, y), prog_bar=False)
            self.log("val_acc", (logits.argmax(1) == y).float().mean(), prog_bar=False)

        def configure_optimizers(self) -> Any:
            return torch.optim.SGD(self.parameters(), lr=self.lr, momentum=0.0, weight_decay=0.0)

    return DigitsClassifier()


def _loader(x: Any, y: Any, batch_size: int, shuffle: bool, seed: int) -> Any:
    """A DataLoader that slices whole batches from in-memory tensors (no per-sample collate)."""
    import torch
    from torch.utils.data import BatchSampler, DataLoader, RandomSampler, SequentialSampler, TensorDataset

    ds = TensorDataset(x, y)
    g = torch.Generator().manual_seed(seed)
    base = RandomSampler(ds, generator=g) if shuffle else SequentialSampler(ds)
    return DataLoader(ds, sampler=BatchSampler(base, batch_size, drop_last=False), batch_size=None)


# --------------------------------------------------------------------------
# one run
# --------------------------------------------------------------------------


def run_name(batch_size: int, seed: int) -> str:
    """Folder name of one run: ``bs0002_seed0`` (zero-padded so folders sort by batch size)."""
    return f"bs{batch_size:04d}_seed{seed}"


def train_one(
    batch_size: int,
    seed: int,
    *,
    epochs: int,
    lr: float,
    out: str | os.PathLike[str],
    progress_queue: Any = None,
    extra_config: Optional[dict[str, Any]] = None,
    esd_every_n_epochs: Optional[int] = None,
) -> dict[str, Any]:
    """Train one MicroAlexNet with the Lightning callback; return a summary dict.

    Writes the run store to ``out/runs/<run_name>`` and TensorBoard events to
    ``out/tensorboard/<run_name>`` (replacing an earlier run of the same
    name).  ESD images go to TensorBoard at the first and the last epoch
    (``esd_every_n_epochs`` overrides; rendering them every epoch would
    double the demo's time).  ``progress_queue`` (optional) receives
    one ``1`` per finished epoch (for the parent's progress bar).
    """
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the sweep runs several of these side by side; restored below
    try:
        return _train_one(
            batch_size,
            seed,
            epochs=epochs,
            lr=lr,
            out=out,
            progress_queue=progress_queue,
            extra_config=extra_config,
            esd_every_n_epochs=esd_every_n_epochs,
        )
    finally:
        torch.set_num_threads(threads)


def _train_one(
    batch_size: int,
    seed: int,
    *,
    epochs: int,
    lr: float,
    out: str | os.PathLike[str],
    progress_queue: Any,
    extra_config: Optional[dict[str, Any]],
    esd_every_n_epochs: Optional[int],
) -> dict[str, Any]:
    import lightning.pytorch as L

    out = Path(out)
    name = run_name(batch_size, seed)
    for stale in (out / "runs" / name, out / "tensorboard" / name):
        if stale.exists():  # a re-run replaces this run instead of resuming it
            shutil.rmtree(stale)
    L.seed_everything(seed, workers=False, verbose=False)
    xtr, ytr, xva, yva = load_digits_split()
    module = _lightning_module(lr)
    config = _run_config(batch_size, seed, lr, epochs, len(xtr))
    config.update(extra_config or {})
    ww = _monitor_callback(out, name, config, esd_every_n_epochs or max(1, epochs - 1))
    trainer = _trainer(out, name, epochs, [ww] + ([_EpochTicker(progress_queue)] if progress_queue is not None else []))
    t0 = time.perf_counter()
    trainer.fit(
        module,
        train_dataloaders=_loader(xtr, ytr, batch_size, True, seed),
        val_dataloaders=_loader(xva, yva, 512, False, seed),
    )
    seconds = time.perf_counter() - t0
    scores = _evaluate(module, xtr, ytr, xva, yva)
    from ..integrations import record_eval_metrics

    # the final validation metrics in the run store: `wwmonitor compare` ranks the runs' spectra against them
    record_eval_metrics(ww, scores, step=int(trainer.global_step))
    return {
        "run": name,
        "run_dir": str(out / "runs" / name),
        "tensorboard": str(out / "tensorboard" / name),
        "batch_size": batch_size,
        "seed": seed,
        "lr": lr,
        "epochs": epochs,
        "steps": int(trainer.global_step),
        **{k: scores[k] for k in ("train_acc", "val_acc", "val_loss")},
        "seconds": seconds,
    }


def _run_config(batch_size: int, seed: int, lr: float, epochs: int, n_train: int) -> dict[str, Any]:
    """The run's hyperparameters, as stored with its run (the comparison sweeps ``batch_size``, groups ``seed``)."""
    return {
        "batch_size": batch_size,
        "seed": seed,
        "lr": lr,
        "epochs": epochs,
        "optimizer": "SGD(momentum=0, weight_decay=0)",
        "model": "MicroAlexNet",
        "dataset": "sklearn digits (standardised, 80/20 split)",
        "steps_per_epoch": math.ceil(n_train / batch_size),
    }


def _monitor_callback(out: Path, name: str, config: dict[str, Any], esd_every: int) -> Any:
    """wwmonitor's Lightning callback: a snapshot per epoch into ``out/runs/<name>``."""
    from ..alerts import AlertRules
    from ..callbacks.lightning import WeightWatcherCallback

    return WeightWatcherCallback(
        every_n_epochs=1,
        run_dir=str(out / "runs"),
        run_name=name,
        config=config,
        # alerts go to the run store and TensorBoard, not the console (progress bar)
        alerts=AlertRules(warn=False, log_alerts=False),
        esd_every_n_epochs=esd_every,
        policy="block",  # the demo's record needs every epoch analysed, whatever the machine's load
    )


def _trainer(out: Path, name: str, epochs: int, callbacks: list[Any]) -> Any:
    """A quiet single-CPU Lightning trainer logging to ``out/tensorboard/<name>``."""
    import lightning.pytorch as L
    from lightning.pytorch.loggers import TensorBoardLogger

    return L.Trainer(
        max_epochs=epochs,
        accelerator="cpu",
        devices=1,
        logger=TensorBoardLogger(save_dir=str(out / "tensorboard"), name=name, version=""),
        callbacks=callbacks,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        num_sanity_val_steps=0,
        log_every_n_steps=50,
    )


def _evaluate(module: Any, xtr: Any, ytr: Any, xva: Any, yva: Any) -> dict[str, float]:
    """Final ``train_acc``, ``val_acc`` and ``val_loss`` (cross-entropy) of the trained module."""
    import torch

    with torch.no_grad():
        module.eval()
        train_acc = float((module(xtr).argmax(1) == ytr).float().mean())
        val_logits = module(xva)
        val_acc = float((val_logits.argmax(1) == yva).float().mean())
        val_loss = float(torch.nn.functional.cross_entropy(val_logits, yva))
    return {"val_acc": val_acc, "val_loss": val_loss, "train_acc": train_acc}


def _epoch_ticker_class() -> Any:
    import lightning.pytorch as L

    class EpochTicker(L.Callback):
        def __init__(self, q: Any) -> None:
            self.q = q
            self.broken = False

        def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
            if self.broken:
                return
            try:
                self.q.put(1)
            except Exception as exc:  # a broken progress pipe must not stop training: say so once, go on
                self.broken = True
                # attributed to this module (stacklevel 1): the sweep ignores warnings from Lightning's modules
                warnings.warn(
                    f"wwmonitor demo: progress updates lost ({exc!r}); training continues", RuntimeWarning, stacklevel=1
                )

    return EpochTicker


def _EpochTicker(q: Any) -> Any:
    return _epoch_ticker_class()(q)


#: Lightning's loggers that :func:`_quiet_lightning` turns down while the sweep runs
_LIGHTNING_LOGGERS: tuple[str, ...] = ("lightning", "lightning.pytorch", "lightning.fabric", "lightning_utilities")


@contextlib.contextmanager
def _quiet_lightning() -> Iterator[None]:
    """Keep the sweep's console to the progress bar while it runs: Lightning's per-run banners and tips are
    noise here.  The caller's warning filters and logger levels are restored on exit (the demo may run in the
    caller's own process: ``workers=1``)."""
    import lightning.pytorch  # noqa: F401  (it sets its logger levels on import: save them after that)

    loggers = [logging.getLogger(name) for name in _LIGHTNING_LOGGERS]
    levels = [lg.level for lg in loggers]
    with warnings.catch_warnings():  # also undoes any filter Lightning itself adds during the runs
        warnings.filterwarnings("ignore", module=r"lightning(\.|$)")
        warnings.filterwarnings("ignore", message=r".*(does not have many workers|log_every_n_steps|LeafSpec).*")
        try:
            for lg in loggers:
                lg.setLevel(logging.ERROR)
            yield
        finally:
            for lg, level in zip(loggers, levels):
                lg.setLevel(level)


def _worker(args: tuple[int, int, int, float, str, Any, dict[str, Any]]) -> dict[str, Any]:
    bs, seed, epochs, lr, out, q, extra = args
    with _quiet_lightning():
        return train_one(bs, seed, epochs=epochs, lr=lr, out=out, progress_queue=q, extra_config=extra)
