"""Plain PyTorch: per-layer learning rates from the layers' alphas (TempBalance), fed by the monitor.

    python examples/tempbalance_pytorch.py [--epochs 5] [--out wwmonitor-examples]

An MLP 64-256-128-128-64-10 trained on sklearn's digits (shipped with scikit-learn, no download) with
SGD and a cosine schedule.  ``mon.snapshot()`` at each epoch's end returns at once; the analysis runs in
the background, and ``tb.step(step)`` -- called after every update, it costs a list look-up -- applies
the newest analysed snapshot as soon as it is ready: each layer's rate is the scheduled rate times a
factor in [0.5, 1.5] from its alpha (first and last layer keep the scheduled rate).  Every assignment
is in the run store (``load_run(...).control_records()``) and in the sinks.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from sklearn.datasets import load_digits

import wwmonitor
from wwmonitor.control import TempBalance


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--out", default="wwmonitor-examples")
    args = ap.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)

    X, y = load_digits(return_X_y=True)
    X = ((X - X.mean()) / X.std()).astype(np.float32)
    x_t, y_t = torch.from_numpy(X), torch.from_numpy(y.astype(np.int64))
    x_train, y_train, x_test, y_test = x_t[:1500], y_t[:1500], x_t[1500:], y_t[1500:]
    sizes = [64, 256, 128, 128, 64, 10]
    layers: list[torch.nn.Module] = []
    for a, b in zip(sizes[:-1], sizes[1:]):
        layers += [torch.nn.Linear(a, b), torch.nn.ReLU()]
    model = torch.nn.Sequential(*layers[:-1])
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=args.epochs, eta_min=0.005)

    step = 0
    with wwmonitor.Monitor(
        model, root=f"{args.out}/runs", run_name="tempbalance-mlp", resume=False, every_n_epochs=1
    ) as mon:
        tb = TempBalance().bind(model=model, optimizer=opt, monitor=mon)  # linear map, median-xmin alpha
        for epoch in range(args.epochs):
            perm = torch.randperm(len(x_train))
            for i in range(0, len(x_train), args.batch_size):
                idx = perm[i : i + args.batch_size]
                opt.zero_grad()
                torch.nn.functional.cross_entropy(model(x_train[idx]), y_train[idx]).backward()
                opt.step()
                step += 1
                tb.step(step)  # never waits: applies a newer analysed snapshot if there is one
            sched.step()
            mon.snapshot(step=step, epoch=epoch)  # returns at once
        mon.flush()
        tb.step(step)  # the last epoch's analysis (it would steer a next epoch)
        with torch.no_grad():
            acc = (model(x_test).argmax(1) == y_test).float().mean().item()
    print(f"test accuracy: {acc:.3f}")
    recs = wwmonitor.load_run(mon.run_dir).control_records()
    last = max(r.step for r in recs)
    print(f"TempBalance assignments recorded: {len(recs)}; the last one (step {last}):")
    for r in recs:
        if r.step == last:
            alpha = "   -" if r.alpha is None else f"{r.alpha:.2f}"
            print(f"  layer {r.layer:>2}  alpha {alpha}  factor {r.factor:.3f}  lr {r.value:.5f}")


if __name__ == "__main__":
    main()
