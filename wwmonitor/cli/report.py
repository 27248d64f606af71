"""``wwmonitor report RUN_DIR``: write the static HTML report of one run.

A run store that cannot be read, an unknown layer or step, or an output
folder that cannot be written is one line on stderr naming it, exit status
2; figures that could not be drawn are listed on stderr (and at the top of
the page) after the report is written.
"""

from __future__ import annotations

import argparse
from typing import Any

from ._common import REPORT_ERRORS, announce_problems, announce_written, error_reason, fail


def add_parser(sub: Any) -> None:
    """Register ``wwmonitor report`` and its options."""
    p = sub.add_parser("report", help="write a static HTML report (with PNGs) of one run store")
    p.add_argument("run_dir", help="run folder (contains run.sqlite)")
    p.add_argument("-o", "--out", default=None, help="output folder (default: RUN_DIR/report)")
    p.add_argument(
        "--steps",
        nargs="+",
        type=int,
        default=None,
        metavar="STEP",
        help="snapshots (steps) for the ESD gallery (default: first, middle, last)",
    )
    p.add_argument("--n-steps", type=int, default=3, help="number of gallery snapshots when --steps is not given")
    p.add_argument("--layers", nargs="+", default=None, help="only these layers")
    p.add_argument("--dpi", type=int, default=90, help="PNG resolution (default 90)")


def run(args: argparse.Namespace) -> int:
    """Write the report; 0 when written (problems listed on stderr), 2 on bad input or unwritable output."""
    from wwmonitor.report.html import write_report

    if args.n_steps < 1:
        return fail("report", "--n-steps must be >= 1")
    if args.dpi < 1:
        return fail("report", "--dpi must be >= 1")
    problems: list[str] = []
    try:
        index = write_report(
            args.run_dir,
            args.out,
            esd_steps=args.steps,
            n_esd_steps=args.n_steps,
            layers=args.layers,
            dpi=args.dpi,
            problems=problems,
        )
    except REPORT_ERRORS as e:
        return fail("report", error_reason(e))
    announce_problems("report", "report", problems)
    return announce_written("report", index)
