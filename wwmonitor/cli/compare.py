"""``wwmonitor compare RUN_DIR...``: compare several runs: a sweep (e.g. of the batch size), or any runs side by side.

With a config key that differs between the runs (or ``--param KEY``) the
page is the sweep report; without one (identical configs, no configs, only
the seed differs) or with ``--by-run`` the runs are compared side by side by
name: curves overlaid, one final-snapshot row per run, phases per run.

A run store that cannot be read, an Optuna storage that cannot be read (a
damaged page, a schema this Optuna does not know), runs that cannot be
compared, or an output folder that cannot be written is one line on stderr
naming it, exit status 2 (never a traceback); trials left out are listed, one
line each, before it; figures that could not be drawn are listed on stderr (and at the top of
the page) after the comparison is written.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Optional

from ._common import REPORT_ERRORS, announce_problems, announce_written, error_reason, fail


def add_parser(sub: Any) -> None:
    """Register ``wwmonitor compare`` and its options."""
    p = sub.add_parser("compare", help="compare runs: against a swept config parameter, or side by side (HTML + CSV)")
    p.add_argument(
        "run_dirs",
        nargs="+",
        help="run folders (each contains run.sqlite), a folder of run folders, a Ray Tune experiment "
        "folder (or its storage path) or a folder holding an Optuna study's SQLite storage",
    )
    p.add_argument("-o", "--out", default="wwmonitor-compare", help="output folder (default: ./wwmonitor-compare)")
    p.add_argument(
        "--param",
        default=None,
        help="config key that was swept (default: the key that differs; when none differs the runs are "
        "compared side by side by name)",
    )
    p.add_argument(
        "--by-run", action="store_true", help="compare the runs side by side by name even when a config key differs"
    )
    p.add_argument(
        "--group",
        default="auto",
        help="config key to group repeats by (default: 'seed' when seeds differ; 'none' to disable)",
    )
    p.add_argument("--layers", nargs="+", default=None, help="only these layers")
    p.add_argument("--esd-layer", default=None, help="layer whose ESDs are drawn for every run")
    p.add_argument("--title", default=None, help="page title")
    p.add_argument(
        "--val-metric",
        default="auto",
        help="validation metric the runs recorded to rank their spectra against (default: val_acc, "
        "val_accuracy, val_loss, then any val_*; 'none': no ranking section)",
    )


def expand_run_dirs(paths: list[str], notes: Optional[list[str]] = None) -> list[Any]:
    """Each argument is a run folder, a folder whose sub-folders are runs, or a sweep folder (a Ray Tune
    experiment, an Optuna study's storage: :func:`wwmonitor.integrations.discover_runs`, whose runs come back
    loaded, with their trial's hyper-parameters in the config; ``notes`` receives the trials left out)."""
    out: list[Any] = []
    for p in map(Path, paths):
        if (p / "run.sqlite").is_file() or p.is_file():
            out.append(p)
        elif p.is_dir():
            subs: list[Any] = sorted(q for q in p.iterdir() if (q / "run.sqlite").is_file())
            if not subs:
                from wwmonitor.integrations.discovery import discover_runs

                subs = discover_runs(p, notes=notes)
            if not subs:
                raise FileNotFoundError(
                    f"{str(p)!r} is neither a run folder nor a folder of runs (no run.sqlite), "
                    "nor a Ray Tune experiment or Optuna study folder with run stores"
                )
            out.extend(subs)
        else:
            raise FileNotFoundError(f"no such run folder: {str(p)!r}")
    return out


def run(args: argparse.Namespace) -> int:
    """Write the comparison; 0 when written (problems listed on stderr), 2 on bad input or unwritable output."""
    from wwmonitor.report.compare import write_comparison

    problems: list[str] = []
    notes: list[str] = []
    try:
        try:
            dirs = expand_run_dirs(args.run_dirs, notes)
        finally:  # also when no run was found: the trials left out say why
            for note in notes:
                print(f"wwmonitor compare: left out: {note}", file=sys.stderr)
        if len(dirs) < 2:
            return fail("compare", "need at least two runs to compare")
        if args.by_run and args.param is not None:
            return fail("compare", "--param and --by-run exclude each other")
        index = write_comparison(
            dirs,
            args.out,
            param=args.param,
            by_run=args.by_run,
            group=None if args.group == "none" else args.group,
            layers=args.layers,
            esd_layer=args.esd_layer,
            title=args.title,
            problems=problems,
            val_metric=None if args.val_metric == "none" else args.val_metric,
        )
    except REPORT_ERRORS as e:  # the writers' messages start with "compare: " for Python callers
        return fail("compare", error_reason(e).removeprefix("compare: "))
    announce_problems("compare", "comparison", problems)
    return announce_written(f"comparison of {len(dirs)} runs", index)
