"""``wwmonitor report RUN_DIR``: write the static HTML report of one run."""
from __future__ import annotations

import argparse
import sys
from typing import Any


def add_parser(sub: Any) -> None:
    p = sub.add_parser("report", help="write a static HTML report (with PNGs) of one run store")
    p.add_argument("run_dir", help="run folder (contains run.sqlite)")
    p.add_argument("-o", "--out", default=None, help="output folder (default: RUN_DIR/report)")
    p.add_argument("--steps", nargs="+", type=int, default=None, metavar="STEP",
                   help="snapshots (steps) for the ESD gallery (default: first, middle, last)")
    p.add_argument("--n-steps", type=int, default=3, help="number of gallery snapshots when --steps is not given")
    p.add_argument("--layers", nargs="+", default=None, help="only these layers")
    p.add_argument("--dpi", type=int, default=90, help="PNG resolution (default 90)")


def run(args: argparse.Namespace) -> int:
    from wwmonitor.report.html import write_report

    if args.n_steps < 1:
        print("wwmonitor report: --n-steps must be >= 1", file=sys.stderr)
        return 2
    try:
        index = write_report(args.run_dir, args.out, esd_steps=args.steps, n_esd_steps=args.n_steps,
                             layers=args.layers, dpi=args.dpi)
    except (FileNotFoundError, ValueError, KeyError) as e:
        print(f"wwmonitor report: {e}", file=sys.stderr)
        return 2
    print(f"report written: {index}")
    print(f"open it with:   file://{index.resolve()}")
    return 0
