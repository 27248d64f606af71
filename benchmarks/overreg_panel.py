"""Over-regularization panel: does ``over_regularization`` warn on collapsing runs, and stay silent on healthy ones?

Two small models on scikit-learn's digits (no download), each trained with weight decay
0, 1e-4, 1e-3, 1e-2, 5e-2 and 1e-1 by a plain torch loop, monitored by ``wwmonitor.Monitor`` with a snapshot
every epoch and ``AlertRules`` (the default rules, which include ``over_regularization``):

* ``mlp``: MLP 64-512-512-10 (ReLU), SGD lr 0.05, batch 32, 20 epochs (the run of issue 9);
* ``cnn``: Conv2d 1->16 3x3 and 16->32 3x3 (padding 1, ReLU) on the 8x8 images, AvgPool 2, Linear 512->10,
  the same optimiser and schedule.

Data: the 1797 digits standardised by the global mean and standard deviation, a fixed split of 1437 train /
360 validation images (``numpy.random.default_rng(0)``).  Model initialisation and batch order follow
``torch.manual_seed(seed)``.

A run is called *collapsing* when, at its last epoch, a hidden layer's stable rank is below half of the same
layer's in the wd=0 run of the same model and seed, or its mean validation accuracy over the last 5 epochs is at
least 2 points below that of the wd=0 run; otherwise *healthy*.  Checked per run: a collapsing run gets an
``over_regularization`` warning before its last epoch, and before the epoch of its best validation accuracy; a
healthy run gets none.  Warnings of the other rules are listed separately (a healthy run should have none).

Run: ``python -m benchmarks.overreg_panel`` (about 30 s on 2 cores; ``--seeds 0 1 2`` for more seeds,
``--models mlp``, ``--epochs``).  Prints a Markdown table and the checks.  Importable: :func:`train_run`,
:func:`panel`, :func:`classify`, :func:`table`.
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

import numpy as np

MODELS = ("mlp", "cnn")
WEIGHT_DECAYS = (0.0, 1e-4, 1e-3, 1e-2, 5e-2, 1e-1)
EPOCHS = 20
LR = 0.05
BATCH = 32
N_TRAIN = 1437
#: "collapsing": a hidden layer's final stable rank below this fraction of the wd=0 run's ...
SR_COLLAPSE = 0.5
#: ... or the mean validation accuracy of the last LAST_N epochs this much below the wd=0 run's
ACC_DROP = 0.02
LAST_N = 5
SEVERE = ("warning", "error")


@dataclass
class RunRecord:
    """One monitored training run."""

    model: str
    weight_decay: float
    seed: int
    epochs: int
    val_acc: list[float]
    alerts: list[Any]  # wwmonitor.records.Alert
    #: layer name -> stable rank at each snapshot (in epoch order)
    stable_rank: dict[str, list[float]] = field(default_factory=dict)
    #: analysed layers in model order; the last one is the classifier head
    layers: list[str] = field(default_factory=list)
    seconds: float = 0.0
    verdict: str = ""
    why: str = ""

    @property
    def hidden(self) -> list[str]:
        return self.layers[:-1]

    @property
    def best_epoch(self) -> int:
        return int(np.argmax(self.val_acc))

    def first(self, rule: Optional[str] = None, exclude: Sequence[str] = ()) -> Optional[Any]:
        """The first alert of severity warning/error of ``rule`` (or of any rule not in ``exclude``)."""
        for a in self.alerts:
            if a.severity in SEVERE and (a.rule == rule if rule else a.rule not in exclude):
                return a
        return None


def load_data() -> tuple[Any, Any, Any, Any]:
    """Digits, globally standardised, split 1437 / 360 by ``default_rng(0)`` (train x, train y, val x, val y)."""
    import torch
    from sklearn.datasets import load_digits

    X, y = load_digits(return_X_y=True)
    X = ((X - X.mean()) / X.std()).astype(np.float32)
    perm = np.random.default_rng(0).permutation(len(X))
    tr, va = perm[:N_TRAIN], perm[N_TRAIN:]
    return (
        torch.from_numpy(X[tr]),
        torch.from_numpy(y[tr].astype(np.int64)),
        torch.from_numpy(X[va]),
        torch.from_numpy(y[va].astype(np.int64)),
    )


def make_model(kind: str) -> Any:
    from torch import nn

    if kind == "mlp":
        return nn.Sequential(nn.Linear(64, 512), nn.ReLU(), nn.Linear(512, 512), nn.ReLU(), nn.Linear(512, 10))
    if kind == "cnn":
        return nn.Sequential(
            nn.Unflatten(1, (1, 8, 8)),
            nn.Conv2d(1, 16, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(16, 32, 3, padding=1),
            nn.ReLU(),
            nn.AvgPool2d(2),
            nn.Flatten(),
            nn.Linear(512, 10),
        )
    raise ValueError(f"model must be one of {MODELS}, got {kind!r}")


def default_rules(**kwargs: Any) -> Any:
    """The default alert rules plus ``over_regularization`` (a no-op if it is a default), without log output."""
    from wwmonitor.alerts import DEFAULT_RULES, AlertRules

    rules = tuple(dict.fromkeys((*DEFAULT_RULES, "over_regularization")))
    return AlertRules(rules=rules, log_alerts=False, **kwargs)


def train_run(
    kind: str,
    weight_decay: float,
    *,
    epochs: int = EPOCHS,
    seed: int = 0,
    rules: Any = None,
    data: Optional[tuple[Any, Any, Any, Any]] = None,
) -> RunRecord:
    """Train one model with a snapshot (and the alert rules) every epoch; the alerts are in the record."""
    import torch

    import wwmonitor

    xtr, ytr, xva, yva = data if data is not None else load_data()
    rules = rules if rules is not None else default_rules()
    torch.manual_seed(seed)
    model = make_model(kind)
    opt = torch.optim.SGD(model.parameters(), lr=LR, weight_decay=weight_decay)
    loss_fn = torch.nn.functional.cross_entropy
    accs: list[float] = []
    step = 0
    t0 = time.perf_counter()
    with (
        tempfile.TemporaryDirectory() as tmp,
        wwmonitor.Monitor(
            model, tmp, store=False, alerts=rules, history=epochs + 1, esd_every_n_epochs=0, policy="block"
        ) as mon,
    ):
        for epoch in range(epochs):
            model.train()
            perm = torch.randperm(len(xtr))
            for i in range(0, len(xtr), BATCH):
                idx = perm[i : i + BATCH]
                opt.zero_grad()
                loss_fn(model(xtr[idx]), ytr[idx]).backward()
                opt.step()
                step += 1
            model.eval()
            with torch.no_grad():
                accs.append(float((model(xva).argmax(1) == yva).float().mean()))
            mon.snapshot(step=step, epoch=epoch)
        mon.flush()
        results = mon.results
        alerts = list(mon.alerts_fired)
    layers = [lm.name for lm in results[0].layers] if results else []
    srs: dict[str, list[float]] = {n: [] for n in layers}
    for r in results:
        for lm in r.layers:
            srs.setdefault(lm.name, []).append(float("nan") if lm.stable_rank is None else float(lm.stable_rank))
    return RunRecord(kind, float(weight_decay), seed, epochs, accs, alerts, srs, layers, time.perf_counter() - t0)


def classify(records: Sequence[RunRecord]) -> None:
    """Set ``verdict`` ("collapsing" / "healthy") and ``why`` of each record against its wd=0 twin."""
    base = {(r.model, r.seed): r for r in records if r.weight_decay == 0}
    for r in records:
        ref = base.get((r.model, r.seed))
        if ref is None:
            r.verdict, r.why = "?", "no wd=0 run"
            continue
        reasons = []
        for n in r.hidden:
            mine, theirs = r.stable_rank[n][-1], ref.stable_rank[n][-1]
            if mine < SR_COLLAPSE * theirs:
                reasons.append(f"sr({n}) {mine:.1f} < {SR_COLLAPSE:g} x {theirs:.1f}")
        drop = np.mean(ref.val_acc[-LAST_N:]) - np.mean(r.val_acc[-LAST_N:])
        if drop >= ACC_DROP:
            reasons.append(f"val acc -{100 * drop:.1f} pt")
        r.verdict = "collapsing" if reasons else "healthy"
        r.why = "; ".join(reasons)


def check(r: RunRecord) -> tuple[bool, str]:
    """Does ``over_regularization`` meet the panel's requirement for the run's verdict?  (ok, explanation)

    Collapsing: it warns before the last epoch and before the epoch of the best validation accuracy.
    Healthy: it does not warn.
    """
    a = r.first("over_regularization")
    if r.verdict == "healthy":
        return (a is None, "silent" if a is None else f"false alarm at epoch {a.epoch}")
    if r.verdict == "collapsing":
        if a is None:
            return False, "missed"
        if a.epoch >= r.epochs - 1:
            return False, f"late: at the last epoch {a.epoch}"
        if a.epoch >= r.best_epoch:
            return False, f"epoch {a.epoch}: before the last, not before the best val acc (epoch {r.best_epoch})"
        return True, f"epoch {a.epoch}: before the best val acc (epoch {r.best_epoch})"
    return False, r.why


def other_false_alarm(r: RunRecord) -> Optional[Any]:
    """On a healthy run, the first warning-or-above alert of any *other* rule (``None`` if none or not healthy)."""
    return r.first(exclude=("over_regularization",)) if r.verdict == "healthy" else None


def _alert_cell(a: Any) -> str:
    if a is None:
        return "-"
    return f"{a.epoch} ({a.layer})" if a.rule == "over_regularization" else f"{a.epoch} ({a.rule}, {a.layer})"


def table(records: Sequence[RunRecord]) -> str:
    """The panel as a Markdown table."""
    seeds = len({r.seed for r in records}) > 1
    head = (
        ["model"]
        + (["seed"] if seeds else [])
        + [
            "weight decay",
            "first over_regularization warning: epoch (layer)",
            "first other warning+: epoch (rule, layer)",
            "best val acc: epoch (acc)",
            "final stable rank per hidden layer",
            "final val acc",
            "verdict (why)",
            "over_regularization check",
        ]
    )
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in records:
        ok, msg = check(r)
        srs = ", ".join(f"{n}: {r.stable_rank[n][-1]:.1f}" for n in r.hidden)
        cells = (
            [r.model]
            + ([str(r.seed)] if seeds else [])
            + [
                f"{r.weight_decay:g}",
                _alert_cell(r.first("over_regularization")),
                _alert_cell(r.first(exclude=("over_regularization",))),
                f"{r.best_epoch} ({r.val_acc[r.best_epoch]:.3f})",
                srs,
                f"{r.val_acc[-1]:.3f}",
                r.verdict + (f" ({r.why})" if r.why else ""),
                ("ok: " if ok else "**no**: ") + msg,
            ]
        )
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def panel(
    models: Sequence[str] = MODELS,
    weight_decays: Sequence[float] = WEIGHT_DECAYS,
    seeds: Sequence[int] = (0,),
    epochs: int = EPOCHS,
    rules_kwargs: Optional[dict[str, Any]] = None,
    verbose: bool = False,
) -> list[RunRecord]:
    """Train every (model, seed, weight decay) and classify the runs."""
    import torch

    torch.set_num_threads(1)
    data = load_data()
    records = []
    for kind in models:
        for seed in seeds:
            for wd in weight_decays:
                rules = default_rules(**(rules_kwargs or {}))
                r = train_run(kind, wd, epochs=epochs, seed=seed, data=data, rules=rules)
                if verbose:
                    print(f"  {kind} seed {seed} wd {wd:g}: {r.seconds:.1f} s", file=sys.stderr, flush=True)
                records.append(r)
    classify(records)
    return records


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    ap.add_argument("--seeds", nargs="+", type=int, default=[0])
    ap.add_argument("--epochs", type=int, default=EPOCHS)
    ap.add_argument("--weight-decays", nargs="+", type=float, default=list(WEIGHT_DECAYS))
    args = ap.parse_args(argv)
    if 0.0 not in args.weight_decays:
        ap.error("--weight-decays must include 0 (the healthy reference of the verdicts)")
    logging.getLogger("wwmonitor").setLevel(logging.ERROR)
    t0 = time.perf_counter()
    records = panel(args.models, args.weight_decays, args.seeds, args.epochs, verbose=True)
    print(table(records))
    failed = [r for r in records if not check(r)[0]]
    print(
        f"\nover_regularization meets the requirement on {len(records) - len(failed)}/{len(records)} runs "
        f"({time.perf_counter() - t0:.0f} s):"
    )
    for r in failed:
        print(f"* {r.model} seed {r.seed} wd {r.weight_decay:g} ({r.verdict}): {check(r)[1]}")
    others = [(r, other_false_alarm(r)) for r in records if other_false_alarm(r) is not None]
    print(f"\nhealthy runs with a warning from another rule: {len(others)}")
    for r, a in others:
        print(
            f"* {r.model} seed {r.seed} wd {r.weight_decay:g}: {a.rule} on layer {a.layer!r} at epoch {a.epoch}: "
            f"{a.message}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
