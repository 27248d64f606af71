"""``python -m benchmarks.alert_bench [record|table|refresh] [--split tune|heldout|all] [--families ...] [--seeds N]
[--mode reanalyse|results] [--cache DIR] [--write-docs [--force]]``

``record`` trains and records the runs (into the cache), then prints the table; ``table`` replays the recorded
runs with the current default rules and prints the table (no training); ``refresh`` re-analyses the recorded runs
with the current analysis code, rewrites their ``results.pkl`` (for ``--mode results``) and prints the table.
``--write-docs`` writes the table into docs/alerts.md between its ``bench:alert-bench`` markers
(benchmarks/docs_blocks.py), stamped with the load at the start and the end; like ``python -m benchmarks
--write-docs`` it refuses (exit status 3) when the load is above the CPU count unless ``--force``.  Otherwise the
exit status is 0 whatever the budget: the budget is a measurement.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path
from typing import Optional, Sequence


def main(argv: Optional[Sequence[str]] = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("KERAS_BACKEND", "torch")
    from benchmarks import docs_blocks

    from .families import FAMILIES
    from .record import cache_dir, record
    from .replay import MODES, recorded_runs, replay
    from .split import SPLITS
    from .table import DOC, docs_block, make_row, markdown, summary, write_docs

    ap = argparse.ArgumentParser(
        prog="python -m benchmarks.alert_bench",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("command", nargs="?", default="table", choices=("record", "table", "refresh"))
    ap.add_argument("--split", default="all", choices=tuple(SPLITS))
    ap.add_argument("--families", nargs="+", choices=sorted(FAMILIES), help="instead of --split")
    ap.add_argument("--settings", nargs="+", help="record only these settings (the reference is always needed)")
    ap.add_argument("--seeds", type=int, default=3, help="seeds 0 .. N-1 (default 3)")
    ap.add_argument("--mode", default="reanalyse", choices=MODES, help="replay mode (see replay.py)")
    ap.add_argument("--cache", help="cache folder (default $WWM_ALERT_BENCH_CACHE or /work/alert_bench_cache)")
    ap.add_argument("--write-docs", action="store_true", help="write the table into docs/alerts.md")
    ap.add_argument("--force", action="store_true", help="write the docs even when the load is above the CPU count")
    args = ap.parse_args(argv)
    families = list(args.families or SPLITS[args.split])
    seeds = list(range(args.seeds))
    cache = cache_dir(args.cache)
    logging.getLogger("wwmonitor").setLevel(logging.ERROR)
    t0 = time.perf_counter()
    load_start = docs_blocks.load_average()
    if args.command == "record":
        record(families, seeds, cache, args.settings, log=lambda s: print(s, file=sys.stderr, flush=True))
    if not recorded_runs(cache, families):
        print(f"nothing recorded for {families} in {cache}; run `record` first", file=sys.stderr)
        return 1
    refresh = args.command == "refresh"
    reps = replay(cache, families, "reanalyse" if refresh else args.mode, seeds=seeds, refresh=refresh)
    rows = sorted(
        (make_row(r, cache) for r in reps),
        key=lambda r: (families.index(r.family), list(FAMILIES[r.family].settings).index(r.setting), r.seed),
    )
    print(markdown(rows))
    print()
    print(summary(rows))
    replay_s = sum(r.seconds for r in reps)
    print(
        f"\n({len(rows)} runs; recorded in {sum(r.seconds for r in rows):.0f} s of wall time; replay ({args.mode}) "
        f"{replay_s:.1f} s; this command {time.perf_counter() - t0:.0f} s)"
    )
    if args.write_docs:
        load_end = docs_blocks.load_average()
        busy = docs_blocks.too_busy([load_start, load_end], docs_blocks.cpu_count())
        if busy and not args.force:
            print(f"not writing the docs: {busy} (use --force to write anyway; the stamp records it)", file=sys.stderr)
            return 3
        cmd = "python -m benchmarks.alert_bench " + " ".join(argv if argv is not None else sys.argv[1:])
        docs = Path(__file__).resolve().parents[2] / DOC
        write_docs(docs_block(rows, args.mode, docs_blocks.stamp(cmd.strip(), load_start, load_end)), docs)
        print(f"wrote the table into {docs}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
