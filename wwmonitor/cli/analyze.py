"""``wwmonitor analyze PATH``: analyse a checkpoint and print a per-layer table.

Under ``torchrun --nproc-per-node K -m wwmonitor analyze PATH`` the matrices
are split over the ranks (matrix ``i`` on rank ``i mod K``) and rank 0 writes
the single report.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

DEFAULT_COLUMNS = [
    "name", "type", "shape", "Q", "alpha", "D", "alpha_weighted", "log_norm",
    "stable_rank", "mp_softrank", "num_spikes", "phase", "warning",
]


def add_parser(sub: Any) -> None:
    p = sub.add_parser("analyze", help="analyse a model checkpoint (safetensors, torch state_dict, npz, keras, HF folder)")
    p.add_argument("path", help="checkpoint file or Hugging Face style model folder")
    p.add_argument("--layers", nargs="+", default=None, help="only these layer names / glob patterns / types")
    p.add_argument("--exclude", nargs="+", default=None, help="skip these layer names / glob patterns / types")
    p.add_argument("--json", dest="json_out", metavar="FILE", help="write the full table as JSON ('-' for stdout)")
    p.add_argument("--csv", dest="csv_out", metavar="FILE", help="write the full table as CSV ('-' for stdout)")
    p.add_argument("--min-evals", type=int, default=50, help="skip fits below this many eigenvalues (default 50)")
    p.add_argument("--max-evals", type=int, default=None, help="skip matrices with more eigenvalues")
    p.add_argument("--conv", choices=["pool", "slices"], default="pool", help="pool conv kernel slices or keep them apart")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    import pandas as pd

    from wwmonitor.analyze import AnalysisOptions
    from wwmonitor.model import analyze_model

    rank, world = _maybe_init_distributed()
    try:
        rep = analyze_model(
            args.path,
            layers=args.layers,
            exclude=args.exclude,
            conv=args.conv,
            options=AnalysisOptions(min_evals=args.min_evals, max_evals=args.max_evals),
            progress=None if not args.no_progress else False,
            distributed=world > 1,
        )
    except (FileNotFoundError, ValueError, TypeError) as e:
        if rank == 0:
            print(f"wwmonitor analyze: error: {e}", file=sys.stderr)
        return 2
    if rank != 0:
        _finish_distributed(world)
        return 0
    df = rep.to_pandas()
    summary = rep.summary()
    if args.json_out:
        payload = {"source": rep.source, "summary": summary, "layers": json.loads(df.to_json(orient="records"))}
        _write(args.json_out, json.dumps(payload, indent=2))
    if args.csv_out:
        _write(args.csv_out, df.to_csv(index=False))
    if not (args.json_out == "-" or args.csv_out == "-"):
        cols = [c for c in DEFAULT_COLUMNS if c in df.columns]
        with pd.option_context("display.max_rows", None, "display.width", 200, "display.float_format", "{:.3f}".format):
            print(df[cols].to_string(index=False))
        ok = summary["num_ok"]
        print(
            f"\n{summary['num_layers']} matrices ({ok} fitted); mean alpha {_fmt(summary.get('mean_alpha'))}, "
            f"mean alpha_weighted {_fmt(summary.get('mean_alpha_weighted'))}, mean log_norm {_fmt(summary.get('mean_log_norm'))}; "
            f"phases {summary['phase_counts']}"
        )
        bad = df[df["status"] != "ok"]
        if len(bad):
            print(f"{len(bad)} matrices not fitted:")
            for _, row in bad.iterrows():
                print(f"  {row['name']}: {row['status']}: {row['message']}")
    _finish_distributed(world)
    return 0


def _fmt(v: Any) -> str:
    return "n/a" if v is None else f"{v:.3f}"


def _write(target: str, text: str) -> None:
    if target == "-":
        sys.stdout.write(text + "\n")
    else:
        with open(target, "w", encoding="utf-8") as f:
            f.write(text)


def _maybe_init_distributed() -> tuple[int, int]:
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return 0, 1
    from wwmonitor.distributed import init_from_env

    return init_from_env("gloo")


def _finish_distributed(world: int) -> None:
    if world > 1:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.barrier()
            dist.destroy_process_group()
