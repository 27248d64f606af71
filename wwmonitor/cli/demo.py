"""``wwmonitor demo``: the batch-size sweep (MicroAlexNet on sklearn digits, Lightning callback)."""

from __future__ import annotations

import argparse
import sys
from typing import Any


def _ints(s: str) -> tuple[int, ...]:
    try:
        vals = tuple(int(x) for x in s.replace(" ", "").split(",") if x)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {s!r}") from None
    if not vals:
        raise argparse.ArgumentTypeError("expected at least one integer")
    return vals


def add_parser(sub: Any) -> None:
    from wwmonitor.demo import DEFAULT_BATCH_SIZES, DEFAULT_SEEDS, DemoConfig

    d = DemoConfig()
    p = sub.add_parser(
        "demo",
        help="train MicroAlexNet at several batch sizes and write the comparison report",
        description="Batch-size sweep of Martin & Mahoney, reproduced on sklearn's digits: smaller "
        "batches give heavier-tailed layers (lower alpha / MP soft rank / stable rank, "
        "more spikes).",
    )
    p.add_argument("--out", default=d.out, help=f"output folder (default: ./{d.out})")
    p.add_argument("--epochs", type=int, default=d.epochs, help=f"epochs per run (default {d.epochs})")
    p.add_argument(
        "--batch-sizes",
        type=_ints,
        default=DEFAULT_BATCH_SIZES,
        help="comma-separated batch sizes (default " + ",".join(map(str, DEFAULT_BATCH_SIZES)) + ")",
    )
    p.add_argument(
        "--seeds",
        type=_ints,
        default=DEFAULT_SEEDS,
        help="comma-separated seeds (default " + ",".join(map(str, DEFAULT_SEEDS)) + ")",
    )
    p.add_argument("--lr", type=float, default=d.lr, help=f"SGD learning rate (default {d.lr})")
    p.add_argument(
        "--lr-scaling",
        choices=["constant", "linear"],
        default=d.lr_scaling,
        help="'linear' scales lr with batch/--lr-ref-batch: the control experiment in which the trend "
        "largely vanishes (keep batch sizes <= 128 with it: lr 0.05*512/32 = 0.8 can diverge)",
    )
    p.add_argument("--lr-ref-batch", type=int, default=d.lr_ref_batch, help="reference batch for --lr-scaling linear")
    p.add_argument("--workers", type=int, default=d.workers, help=f"parallel training processes (default {d.workers})")
    p.add_argument(
        "--backend",
        choices=["local", "ray"],
        default=d.backend,
        help="'local': a process pool on this machine (default); 'ray': Ray tasks, on a local Ray with "
        '--workers CPUs or on the cluster at --address (needs ray: pip install "wwmonitor[ray]")',
    )
    p.add_argument(
        "--address",
        default=None,
        help="Ray cluster address for --backend ray (e.g. ray://head:10001 or auto); --out must then be "
        "a folder every node shares",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--no-report", action="store_true", help="skip the HTML comparison report")


def run(args: argparse.Namespace) -> int:
    from wwmonitor.demo import DemoConfig, missing_demo_requirement, run_demo

    try:
        cfg = DemoConfig(
            out=args.out,
            epochs=args.epochs,
            batch_sizes=args.batch_sizes,
            seeds=args.seeds,
            lr=args.lr,
            lr_scaling=args.lr_scaling,
            lr_ref_batch=args.lr_ref_batch,
            workers=args.workers,
            progress=not args.no_progress,
            report=not args.no_report,
            backend=args.backend,
            address=args.address,
        )
    except ValueError as e:
        print(f"wwmonitor demo: {e}", file=sys.stderr)
        return 2
    missing = missing_demo_requirement()  # one line naming the extra, not a traceback from a worker
    if missing:
        print(missing, file=sys.stderr)
        return 2
    if cfg.backend == "ray":
        import importlib.util

        if importlib.util.find_spec("ray") is None:
            print(
                'wwmonitor demo: --backend ray needs ray; install it with: pip install "wwmonitor[ray]"',
                file=sys.stderr,
            )
            return 2
    run_demo(cfg)
    return 0
