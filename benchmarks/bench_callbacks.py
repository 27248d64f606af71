"""Lightning ``Trainer.fit`` wall time with the WeightWatcherCallback against without, side by side.

Setup: MLP 64-512-512-10 on sklearn digits (1,797 samples, batch 32), plain
SGD, CPU, ``torch.set_num_threads(1)``, in two scenarios: short epochs (57
steps, ~0.3 s; the worst case for the ratio) and longer ones (the data
repeated 10x).  The variants run interleaved (round-robin, ``REPEATS`` rounds) so machine noise
hits them alike; the table gives the median wall time of each and its ratio
to the plain fit:

* ``no callback``        -- plain ``Trainer.fit``;
* ``callback, store``     -- snapshot every epoch, run store only;
* ``callback, store+TB``  -- also a TensorBoardLogger with per-layer scalars,
  phase text and ESD images every 5 epochs (the default);
* ``callback, store+TB, ESD every epoch`` -- ESD images at every snapshot.

The wall time includes waiting for the last analysis at the end of fit.
Usage: ``python -m benchmarks callbacks``.
"""

from __future__ import annotations

import statistics
import tempfile
import time
import warnings


def _module(pl, repeat: int = 1):
    import torch
    from sklearn.datasets import load_digits
    from torch import nn
    from torch.utils.data import DataLoader, TensorDataset

    X, y = load_digits(return_X_y=True)
    X = (X - X.mean(0)) / (X.std(0) + 1e-6)
    Xt, yt = torch.tensor(X, dtype=torch.float32).repeat(repeat, 1), torch.tensor(y).repeat(repeat)

    class MLP(pl.LightningModule):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.net = nn.Sequential(nn.Linear(64, 512), nn.ReLU(), nn.Linear(512, 512), nn.ReLU(), nn.Linear(512, 10))

        def training_step(self, batch, _):
            xb, yb = batch
            return nn.functional.cross_entropy(self.net(xb), yb)

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.05)

        def train_dataloader(self):
            return DataLoader(
                TensorDataset(Xt, yt), batch_size=32, shuffle=True, generator=torch.Generator().manual_seed(0)
            )

    return MLP()


REPEATS = 3


def _fit(variant: str, root: str, epochs: int = 6, repeat: int = 1) -> tuple[float, dict]:
    import lightning.pytorch as pl
    from lightning.pytorch.loggers import TensorBoardLogger

    from wwmonitor.callbacks.lightning import WeightWatcherCallback

    callbacks, logger = [], False
    if variant != "no callback":
        esd_every = 1 if variant.endswith("ESD every epoch") else 5
        callbacks = [
            WeightWatcherCallback(
                every_n_epochs=1, run_dir=f"{root}/runs", alerts="default", esd_every_n_epochs=esd_every
            )
        ]
    if "TB" in variant:
        logger = TensorBoardLogger(f"{root}/tb")
    trainer = pl.Trainer(
        max_epochs=epochs,
        accelerator="cpu",
        devices=1,
        logger=logger,
        callbacks=callbacks,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
    )
    model = _module(pl, repeat)
    t0 = time.perf_counter()
    trainer.fit(model)
    wall = time.perf_counter() - t0
    info: dict = {}
    if callbacks:
        mon = callbacks[0].monitor
        res = mon.results
        info = {
            "blocked_s": mon.stats["blocked_s"],
            "analysis_s": statistics.mean(r.meta.get("analysis_s", 0.0) for r in res) if res else 0.0,
        }
    return wall, info


SCENARIOS = [
    # (title, epochs, data repeat): short epochs (~0.3 s) are the worst case for the overhead ratio
    ("short epochs: digits once (57 steps/epoch), 6 epochs", 6, 1),
    ("longer epochs: digits x10 (562 steps/epoch), 3 epochs", 3, 10),
]


def main() -> None:
    import logging

    import torch

    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
    for name in ("lightning.pytorch", "lightning.fabric", "wwmonitor.alerts"):
        logging.getLogger(name).setLevel(logging.ERROR)
    variants = ["no callback", "callback, store", "callback, store+TB", "callback, store+TB, ESD every epoch"]
    print(
        f"Lightning fit of an MLP 64-512-512-10 on sklearn digits, batch 32, snapshot every epoch, CPU, "
        f"1 torch thread; median of {REPEATS} interleaved rounds.\n"
    )
    with tempfile.TemporaryDirectory() as root:
        _fit("no callback", root, 1)  # warm-up (imports, first-call costs)
        _fit("callback, store", root, 1)
        for title, epochs, repeat in SCENARIOS:
            times: dict[str, list[float]] = {v: [] for v in variants}
            infos: dict[str, list[dict]] = {v: [] for v in variants}
            for _ in range(REPEATS):
                for v in variants:
                    wall, info = _fit(v, root, epochs, repeat)
                    times[v].append(wall)
                    infos[v].append(info)
            base = statistics.median(times["no callback"])
            print(f"\n**{title}**\n")
            print(
                "| variant | fit wall time (s) | ratio to no callback | training thread blocked (s) "
                "| analysis per snapshot (s) |"
            )
            print("|---|---|---|---|---|")
            for v in variants:
                med = statistics.median(times[v])
                if infos[v][0]:
                    blocked = statistics.median(i["blocked_s"] for i in infos[v])
                    ana = statistics.median(i["analysis_s"] for i in infos[v])
                    extra = f"{blocked:.3f} | {ana:.2f}"
                else:
                    extra = "- | -"
                print(f"| {v} | {med:.2f} | {med / base:.2f}x | {extra} |")


if __name__ == "__main__":
    main()
