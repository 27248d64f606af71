"""Lightning: one callback line adds spectra to TensorBoard and CSV logs and the run store.

    python examples/lightning_callback.py [--epochs 4] [--out wwmonitor-examples]

Then ``tensorboard --logdir wwmonitor-examples/tb`` shows ``ww.alpha/<layer>``
and friends, ESD images and phase labels; ``wwmonitor report
wwmonitor-examples/runs/lightning-mlp`` writes the HTML report.
"""

from __future__ import annotations

import argparse

import lightning.pytorch as L
import numpy as np
import torch
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from sklearn.datasets import load_digits
from torch.utils.data import DataLoader, TensorDataset

from wwmonitor.callbacks.lightning import WeightWatcherCallback


class DigitsMLP(L.LightningModule):
    def __init__(self, lr: float = 0.05) -> None:
        super().__init__()
        self.net = torch.nn.Sequential(
            torch.nn.Linear(64, 256),
            torch.nn.ReLU(),
            torch.nn.Linear(256, 128),
            torch.nn.ReLU(),
            torch.nn.Linear(128, 10),
        )
        self.lr = lr

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = torch.nn.functional.cross_entropy(self.net(x), y)
        self.log("train_loss", loss)
        return loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.lr)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--out", default="wwmonitor-examples")
    args = ap.parse_args()
    torch.set_num_threads(1)
    L.seed_everything(0)

    X, y = load_digits(return_X_y=True)
    X = ((X - X.mean()) / X.std()).astype(np.float32)
    data = DataLoader(
        TensorDataset(torch.from_numpy(X), torch.from_numpy(y.astype(np.int64))), batch_size=16, shuffle=True
    )
    ww = WeightWatcherCallback(
        every_n_epochs=1,
        root=f"{args.out}/runs",
        run_name="lightning-mlp",
        alerts="default",
        config={"batch_size": 16, "lr": 0.05},
    )
    trainer = L.Trainer(
        max_epochs=args.epochs,
        accelerator="cpu",
        callbacks=[ww],
        logger=[TensorBoardLogger(f"{args.out}/tb", name="lightning-mlp"), CSVLogger(f"{args.out}/csv")],
        enable_checkpointing=False,
        enable_model_summary=False,
    )
    trainer.fit(DigitsMLP(), data)

    import wwmonitor

    run = wwmonitor.load_run(f"{args.out}/runs/lightning-mlp")
    print(run.to_pandas().query("step == @run.steps[-1]")[["layer", "alpha", "stable_rank", "num_spikes", "phase"]])
    print(f"TensorBoard: tensorboard --logdir {args.out}/tb")
    print(f"report:      wwmonitor report {args.out}/runs/lightning-mlp")


if __name__ == "__main__":
    main()
