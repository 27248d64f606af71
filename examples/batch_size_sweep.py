"""A batch-size sweep with the plain-PyTorch Monitor, then ``write_comparison``.

    python examples/batch_size_sweep.py [--batch-sizes 4,16,64,256] [--epochs 6] [--lr-scaling constant|linear]

Each run stores its batch size in the run config; the comparison reads it from
there.  At a constant learning rate smaller batches end with lower stable rank
and MP soft rank (stronger correlations).  ``--lr-scaling linear`` keeps
lr/batch fixed, the control experiment: the trend should largely go away.
``wwmonitor demo`` is the full version (MicroAlexNet, 3 seeds, Lightning).
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from sklearn.datasets import load_digits

import wwmonitor
from wwmonitor.report.compare import final_metrics_table, spearman_by_group, write_comparison


def train(batch_size: int, lr: float, epochs: int, run_root: str) -> str:
    torch.manual_seed(0)
    X, y = load_digits(return_X_y=True)
    X = ((X - X.mean()) / X.std()).astype(np.float32)
    x_t, y_t = torch.from_numpy(X), torch.from_numpy(y.astype(np.int64))
    model = torch.nn.Sequential(
        torch.nn.Linear(64, 512), torch.nn.ReLU(), torch.nn.Linear(512, 256), torch.nn.ReLU(), torch.nn.Linear(256, 10)
    )
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    step = 0
    with wwmonitor.Monitor(
        model,
        root=run_root,
        run_name=f"bs{batch_size:04d}",
        resume=False,
        alerts=None,
        config={"batch_size": batch_size, "lr": lr, "seed": 0},
    ) as mon:
        for epoch in range(epochs):
            perm = torch.randperm(len(x_t))
            for i in range(0, len(x_t), batch_size):
                idx = perm[i : i + batch_size]
                opt.zero_grad()
                torch.nn.functional.cross_entropy(model(x_t[idx]), y_t[idx]).backward()
                opt.step()
                step += 1
            mon.snapshot(step=step, epoch=epoch)
        return str(mon.run_dir)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch-sizes", default="4,16,64,256")
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--lr", type=float, default=0.05)
    ap.add_argument("--lr-scaling", choices=["constant", "linear"], default="constant")
    ap.add_argument("--out", default="wwmonitor-examples/sweep")
    args = ap.parse_args()
    torch.set_num_threads(1)
    sizes = [int(b) for b in args.batch_sizes.split(",")]
    runs = []
    for bs in sizes:
        lr = args.lr * bs / sizes[0] if args.lr_scaling == "linear" else args.lr
        runs.append(train(bs, lr, args.epochs, f"{args.out}/runs-{args.lr_scaling}"))
        print(f"batch size {bs:4d} (lr {lr:.3g}): {runs[-1]}")
    df = final_metrics_table(runs, param="batch_size", group=None)
    cols = ["batch_size", "layer", "alpha", "stable_rank", "mp_softrank", "num_spikes", "phase"]
    print(df[cols].to_string(index=False))
    rho = spearman_by_group(df, param="batch_size", metrics=("alpha", "stable_rank", "mp_softrank", "num_spikes"))
    for layer, vals in rho["all"].items():
        print(f"Spearman vs batch size, layer {layer}: " + ", ".join(f"{k} {v:+.2f}" for k, v in vals.items()))
    print("comparison:", write_comparison(runs, f"{args.out}/compare-{args.lr_scaling}", param="batch_size"))


if __name__ == "__main__":
    main()
