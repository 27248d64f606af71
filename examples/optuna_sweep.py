"""An Optuna study of the batch size with wwmonitor in every trial: the pruner acts on the spectra.

Each trial trains MicroAlexNet (the model of ``wwmonitor demo``) on
scikit-learn's digits with Lightning and
:class:`~wwmonitor.integrations.optuna.SpectralPruningCallback`, a
``WeightWatcherCallback`` that after every epoch reports the model's mean
power-law exponent (``mean_alpha``) to the trial as its intermediate value.
Optuna's ``SuccessiveHalvingPruner`` stops a trial whose layers are less
heavy-tailed (higher mean alpha) than those of the better half of the trials
that reached the same epoch (rungs at the 2nd and 3rd epoch).
The study maximizes the validation accuracy, so the callback reports
``-mean_alpha`` (lower alpha is better); each trial's ``val_acc`` is also kept
in its run store, where ``wwmonitor compare`` ranks the spectra against it.

Run::

    python examples/optuna_sweep.py OUT_DIR        # batch sizes 16,32,64,128 (a grid), 4 epochs
    wwmonitor compare OUT_DIR                        # finds OUT_DIR/study.db and every trial's run store

``OUT_DIR`` receives the study's SQLite storage (``study.db``) and the run
stores (``runs/<study>-trial0000/run.sqlite`` ...); each trial's user
attribute ``wwmonitor_run_dir`` names its run folder.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

STUDY = "ww-batch-size"


def _module(lr: float) -> Any:
    import lightning.pytorch as L
    import torch
    from torch.nn import functional as F

    from wwmonitor.demo import build_model

    class Digits(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = build_model()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.net(x)

        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            x, y = batch
            return F.cross_entropy(self(x), y)

        def validation_step(self, batch: Any, batch_idx: int) -> None:
            x, y = batch
            logits = self(x)
            self.log("val_loss", F.cross_entropy(logits, y))
            self.log("val_acc", (logits.argmax(1) == y).float().mean())

        def configure_optimizers(self) -> Any:
            return torch.optim.SGD(self.parameters(), lr=lr)

    return Digits()


def objective(trial: Any, *, out: Path, epochs: int, lr: float, batch_sizes: list[int]) -> float:
    """One trial: Lightning fit at the suggested batch size; the pruner may stop it after any epoch."""
    import lightning.pytorch as L
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    from wwmonitor.demo import load_digits_split
    from wwmonitor.integrations.optuna import SpectralPruningCallback

    bs = trial.suggest_categorical("batch_size", batch_sizes)
    seed = 0
    L.seed_everything(seed, verbose=False)
    xtr, ytr, xva, yva = load_digits_split()
    train = DataLoader(
        TensorDataset(xtr, ytr), batch_size=bs, shuffle=True, generator=torch.Generator().manual_seed(seed)
    )
    val = DataLoader(TensorDataset(xva, yva), batch_size=512)
    cb = SpectralPruningCallback(
        trial,
        metric="mean_alpha",
        root=str(out / "runs"),
        esd_every_n_epochs=0,
        alerts=None,
        config={"seed": seed, "lr": lr, "epochs": epochs},
    )
    trainer = L.Trainer(
        max_epochs=epochs,
        accelerator="cpu",
        devices=1,
        logger=False,
        callbacks=[cb],
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        num_sanity_val_steps=0,
    )
    trainer.fit(_module(lr), train_dataloaders=train, val_dataloaders=val)
    return float(trainer.callback_metrics["val_acc"])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out_dir", help="folder for the study's SQLite storage and the run stores")
    ap.add_argument(
        "--batch-sizes", type=lambda s: [int(x) for x in s.split(",") if x.strip()], default=[16, 32, 64, 128]
    )
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--lr", type=float, default=0.05)
    args = ap.parse_args(argv)

    import logging
    import warnings

    import lightning.pytorch  # noqa: F401  (it sets its loggers' levels on import: quiet them after that)
    import optuna
    import torch

    import wwmonitor
    from wwmonitor.integrations.discovery import RUN_DIR_ATTR
    from wwmonitor.report.compare import eval_metrics

    torch.set_num_threads(1)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    for name in ("lightning", "lightning.pytorch", "lightning.fabric", "lightning_utilities"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", message=r".*(does not have many workers|log_every_n_steps|LeafSpec).*")

    out = Path(args.out_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    study = optuna.create_study(
        study_name=STUDY,
        storage=f"sqlite:///{out / 'study.db'}",
        direction="maximize",
        load_if_exists=True,
        sampler=optuna.samplers.GridSampler({"batch_size": args.batch_sizes}, seed=0),
        # successive halving on -mean_alpha, rungs at epoch indices 1 and 2 (the first snapshot is still close to
        # the random initialisation): a trial goes on only while its current mean alpha is among the lowest half
        # of the trials that reached the same rung.  (MedianPruner would compare each trial's *best* value so far,
        # and a spectral summary is not monotone: alpha rises from its random-init value before it falls.)
        pruner=optuna.pruners.SuccessiveHalvingPruner(min_resource=1, reduction_factor=2),
    )
    study.optimize(
        lambda t: objective(t, out=out, epochs=args.epochs, lr=args.lr, batch_sizes=args.batch_sizes),
        n_trials=len(args.batch_sizes),
    )
    print(f"{'trial':>5} {'batch':>5} {'state':>8} {'epochs':>6} {'mean alpha (last)':>17} {'val acc':>7}")
    for t in study.trials:
        steps = sorted(t.intermediate_values)
        last = -t.intermediate_values[steps[-1]] if steps else float("nan")
        # the last val_acc of the trial (pruned ones too), from its run store
        run = wwmonitor.load_run(t.user_attrs[RUN_DIR_ATTR])
        val = eval_metrics(run).get("val_acc", float("nan"))
        print(
            f"{t.number:>5} {t.params.get('batch_size', '-'):>5} {t.state.name:>8} {len(steps):>6} "
            f"{last:>17.3f} {val:>7.3f}"
        )
    print(f"study:  {out / 'study.db'} ({time.perf_counter() - t0:.0f} s)")
    print(f"report: wwmonitor compare {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
