"""A Ray Tune sweep of the batch size with wwmonitor in every trial: ASHA and a stopper act on the spectra.

Each trial trains MicroAlexNet (the model of ``wwmonitor demo``) on
scikit-learn's digits with plain SGD and a :class:`wwmonitor.Monitor` whose
run store goes into the trial's folder.  After every epoch the trial reports
its validation accuracy together with wwmonitor's spectral summaries
(``ww/mean_alpha``, ``ww/mean_stable_rank``, ``ww/phase_count/<phase>`` ...) in
one ``tune.report``:

* the ASHA scheduler keeps the trials with the *lowest* ``ww/mean_alpha``
  (heavier-tailed, better-trained layers) and stops the others at its rungs;
* :class:`~wwmonitor.integrations.ray_tune.WWAlertStopper` stops a trial as soon
  as an ``alpha_high`` alert (a layer with alpha above ``--alpha-high`` after
  the warm-up snapshot: it stays random-like) fires in it.

Run::

    python examples/ray_tune_sweep.py OUT_DIR                # local Ray, 2 CPUs, batch sizes 16,32,64,128
    wwmonitor compare OUT_DIR                                  # the sweep report of the experiment

``OUT_DIR`` receives the Ray Tune experiment (``OUT_DIR/ww_batch_size_sweep``,
one folder per trial with its ``params.json``, ``result.json`` and
``wwmonitor/<trial>/run.sqlite``).  ``--address`` (or ``RAY_ADDRESS``)
connects to a running Ray cluster instead of starting one; on a cluster,
``OUT_DIR`` must be on a filesystem every node shares.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

EXPERIMENT = "ww_batch_size_sweep"


def train_digits(config: dict[str, Any]) -> None:
    """One Tune trial: MicroAlexNet on digits at ``config["batch_size"]``, a snapshot and a report per epoch."""
    import torch
    from torch.nn import functional as F

    from wwmonitor.alerts import AlertRules
    from wwmonitor.demo import build_model, load_digits_split
    from wwmonitor.integrations import ray_tune as wwtune

    torch.set_num_threads(1)
    torch.manual_seed(config["seed"])
    xtr, ytr, xva, yva = load_digits_split()
    model = build_model()
    opt = torch.optim.SGD(model.parameters(), lr=config["lr"])
    gen = torch.Generator().manual_seed(config["seed"])
    bs = int(config["batch_size"])
    # an alpha_high alert (a layer still random-like after the first snapshot) carries stop_training=True:
    # the monitor reports ww/alerts_stop = 1 and WWAlertStopper ends the trial
    alerts = (
        AlertRules(
            rules=["alpha_high"], alpha_high=config["alpha_high"], warmup=1, stop_on=["alpha_high"], log_alerts=False
        )
        if config.get("alpha_high")
        else None
    )
    step = 0
    with wwtune.trial_monitor(model, config=config, alerts=alerts, esd_every_n_epochs=0) as mon:
        for epoch in range(int(config["epochs"])):
            model.train()
            perm = torch.randperm(len(xtr), generator=gen)
            for i in range(0, len(xtr), bs):
                idx = perm[i : i + bs]
                loss = F.cross_entropy(model(xtr[idx]), ytr[idx])
                opt.zero_grad()
                loss.backward()
                opt.step()
                step += 1
            mon.snapshot(step=step, epoch=epoch)
            model.eval()
            with torch.no_grad():
                logits = model(xva)
                val_acc = float((logits.argmax(1) == yva).float().mean())
                val_loss = float(F.cross_entropy(logits, yva))
            # one report per epoch: our metrics and the spectra of the snapshot just taken (val_* also go to the
            # run store, where `wwmonitor compare` ranks the spectra against them)
            wwtune.report({"val_acc": val_acc, "val_loss": val_loss, "epoch": epoch + 1}, mon)


def _ints(s: str) -> list[int]:
    return [int(x) for x in s.split(",") if x.strip()]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out_dir", help="folder for the Ray Tune experiment")
    ap.add_argument("--batch-sizes", type=_ints, default=[16, 32, 64, 128])
    ap.add_argument("--seeds", type=_ints, default=[0])
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--lr", type=float, default=0.05)
    ap.add_argument(
        "--alpha-high",
        type=float,
        default=8.0,
        help="stop a trial once a layer's alpha is above this after the first snapshot (0: never)",
    )
    ap.add_argument("--scheduler", choices=["asha", "fifo"], default="asha")
    ap.add_argument("--num-cpus", type=int, default=2, help="CPUs of the local Ray (one trial per CPU)")
    ap.add_argument("--address", default=None, help="a running Ray cluster (default: $RAY_ADDRESS, else local)")
    args = ap.parse_args(argv)

    import ray
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    from wwmonitor.integrations.ray_tune import WWAlertStopper

    out = Path(args.out_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    address = args.address or os.environ.get("RAY_ADDRESS")
    t0 = time.perf_counter()
    if address:
        ray.init(address=address, log_to_driver=False)
    else:
        ray.init(num_cpus=args.num_cpus, include_dashboard=False, log_to_driver=False)
    scheduler = (
        ASHAScheduler(time_attr="training_iteration", max_t=args.epochs, grace_period=1, reduction_factor=2)
        if args.scheduler == "asha"
        else FIFOScheduler()
    )
    tuner = tune.Tuner(
        train_digits,
        param_space={
            "batch_size": tune.grid_search(args.batch_sizes),
            "seed": tune.grid_search(args.seeds),
            "epochs": args.epochs,
            "lr": args.lr,
            "alpha_high": args.alpha_high,
        },
        # the scheduler acts on a wwmonitor metric: lower mean alpha = heavier-tailed layers
        tune_config=tune.TuneConfig(
            metric="ww/mean_alpha", mode="min", scheduler=scheduler, reuse_actors=True
        ),  # a trial after another skips the imports
        run_config=tune.RunConfig(name=EXPERIMENT, storage_path=str(out), stop=WWAlertStopper(), verbose=0),
    )
    grid = tuner.fit()
    rows = []
    for res in grid:
        if res.error:
            print(f"trial {res.path} failed: {res.error}", file=sys.stderr)
            return 1
        m, c = res.metrics, res.config
        rows.append(
            (
                c["batch_size"],
                c["seed"],
                int(m["training_iteration"]),
                m["ww/mean_alpha"],
                m["ww/mean_stable_rank"],
                m["val_acc"],
                int(m["ww/alerts_stop"]),
            )
        )
    print(f"{'batch':>5} {'seed':>4} {'epochs':>6} {'mean alpha':>10} {'stable rank':>11} {'val acc':>7}  stopped")
    for bs, seed, it, a, sr, acc, stop in sorted(rows):
        why = "" if it >= args.epochs else "by WWAlertStopper (alpha_high alert)" if stop else "by ASHA"
        print(
            f"{bs:>5} {seed:>4} {it:>6} {a if math.isfinite(a) else float('nan'):>10.3f} {sr:>11.2f} {acc:>7.3f}  {why}"
        )
    print(f"experiment: {grid.experiment_path}   ({time.perf_counter() - t0:.0f} s)")
    print(f"report:     wwmonitor compare {out}")
    ray.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
