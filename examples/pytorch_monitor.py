"""Plain PyTorch: monitor a training loop with ``wwmonitor.Monitor``, then write the HTML report.

    python examples/pytorch_monitor.py [--epochs 5] [--out wwmonitor-examples]

An MLP 64-256-128-10 trained on sklearn's digits (shipped with scikit-learn,
no download).  ``mon.snapshot()`` copies the weights and returns at once; a
background thread computes the spectra and writes the run store.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from sklearn.datasets import load_digits

import wwmonitor
from wwmonitor.report.html import write_report


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--out", default="wwmonitor-examples")
    args = ap.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)

    X, y = load_digits(return_X_y=True)
    X = ((X - X.mean()) / X.std()).astype(np.float32)
    x_t, y_t = torch.from_numpy(X), torch.from_numpy(y.astype(np.int64))
    model = torch.nn.Sequential(
        torch.nn.Linear(64, 256),
        torch.nn.ReLU(),
        torch.nn.Linear(256, 128),
        torch.nn.ReLU(),
        torch.nn.Linear(128, 10),
    )
    opt = torch.optim.SGD(model.parameters(), lr=0.05)

    step = 0
    with wwmonitor.Monitor(
        model,
        root=f"{args.out}/runs",
        run_name="pytorch-mlp",
        resume=False,
        config={"batch_size": args.batch_size, "lr": 0.05, "example": "pytorch_monitor"},
    ) as mon:
        for epoch in range(args.epochs):
            perm = torch.randperm(len(x_t))
            for i in range(0, len(x_t), args.batch_size):
                idx = perm[i : i + args.batch_size]
                opt.zero_grad()
                loss = torch.nn.functional.cross_entropy(model(x_t[idx]), y_t[idx])
                loss.backward()
                opt.step()
                step += 1
            mon.snapshot(step=step, epoch=epoch)  # returns at once; analysis runs in the background
            print(f"epoch {epoch}: loss {loss.item():.3f}")
        run_dir = mon.run_dir
    # `with` closed the monitor: every snapshot is analysed and stored
    run = wwmonitor.load_run(run_dir)
    print(run.to_pandas().query("step == @run.steps[-1]")[["layer", "alpha", "stable_rank", "mp_softrank", "phase"]])
    print("report:", write_report(run_dir))


if __name__ == "__main__":
    main()
