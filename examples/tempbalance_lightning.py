"""Lightning + TempBalance: per-layer learning rates from the layers' spectra, every epoch.

    python examples/tempbalance_lightning.py [--epochs 6] [--out wwmonitor-examples] [--sync]

``WeightWatcherCallback`` analyses the layers' weight spectra at each epoch's
end (in the background); ``WWControlCallback(TempBalance())`` turns the
newest analysed alphas into per-layer learning-rate factors (linear map from
[min alpha, max alpha] to [0.5, 1.5]; the first and last layers keep the base
rate) that multiply whatever the scheduler (here cosine annealing) sets.
Every assignment goes to the run store (and TensorBoard, as
``ww_control/lr/<layer>``); the script prints the last one per layer.

Training never waits for the analysis: the factors of an epoch's snapshot
apply from the first step after its analysis is done (on a busy machine
that can be an epoch later).  ``--sync`` waits for each epoch's analysis
before the next epoch starts -- the TempBalance reference's timing.
"""

from __future__ import annotations

import argparse

import lightning.pytorch as L
import numpy as np
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from sklearn.datasets import load_digits
from torch.utils.data import DataLoader, TensorDataset

from wwmonitor.callbacks.lightning import WeightWatcherCallback, WWControlCallback
from wwmonitor.control import TempBalance


class DigitsMLP(L.LightningModule):
    """Four Linear layers on the 8x8 digits (64 inputs): the middle two get their own rates."""

    def __init__(self, lr: float = 0.05, epochs: int = 6) -> None:
        super().__init__()
        self.net = torch.nn.Sequential(
            torch.nn.Linear(64, 128),
            torch.nn.ReLU(),
            torch.nn.Linear(128, 128),
            torch.nn.ReLU(),
            torch.nn.Linear(128, 64),
            torch.nn.ReLU(),
            torch.nn.Linear(64, 10),
        )
        self.lr, self.epochs = lr, epochs

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = torch.nn.functional.cross_entropy(self.net(x), y)
        self.log("train_loss", loss)
        return loss

    def configure_optimizers(self):
        opt = torch.optim.SGD(self.parameters(), lr=self.lr, momentum=0.9, weight_decay=5e-4)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=self.epochs)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "epoch"}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--out", default="wwmonitor-examples")
    ap.add_argument("--sync", action="store_true", help="wait for each epoch's analysis (the reference's timing)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    L.seed_everything(0)

    X, y = load_digits(return_X_y=True)
    X = ((X - X.mean()) / X.std()).astype(np.float32)
    data = DataLoader(
        TensorDataset(torch.from_numpy(X), torch.from_numpy(y.astype(np.int64))), batch_size=32, shuffle=True
    )
    ww = WeightWatcherCallback(every_n_epochs=1, root=f"{args.out}/runs", run_name="tempbalance-mlp")
    tb = WWControlCallback(TempBalance(sync=args.sync))
    trainer = L.Trainer(
        max_epochs=args.epochs,
        accelerator="cpu",
        callbacks=[ww, tb],
        logger=TensorBoardLogger(f"{args.out}/tb", name="tempbalance-mlp"),
        enable_checkpointing=False,
        enable_model_summary=False,
        enable_progress_bar=False,
    )
    trainer.fit(DigitsMLP(epochs=args.epochs), data)

    records = tb.controller.assignments
    print(f"{len(records)} assignments recorded")
    last = {r.layer: r for r in records}
    for layer, r in last.items():
        alpha = "-" if r.alpha is None else f"{r.alpha:.3f}"
        lr = f"lr {r.value:.5f} (base {r.base:.5f})"
        print(f"{layer:8s} alpha {alpha:>6s}  factor {r.factor:.3f}  {lr} from step {r.step}")
    print(f"run store: {ww.monitor.run_dir}")
    print(f"TensorBoard: tensorboard --logdir {args.out}/tb")


if __name__ == "__main__":
    main()
