"""``wwmonitor analyze PATH``: analyse a checkpoint and print a per-layer table.

A ``.safetensors`` file or a folder of shards is streamed: only the headers
are read up front, and each tensor is memory-mapped when its matrix is
analysed and dropped afterwards, so memory follows the largest tensor, not
the checkpoint (``--low-memory`` also keeps each matrix's working set near
its own size).  A progress bar goes to stderr when it is a terminal
(``--progress``: always, ``--no-progress``: never).

Under ``torchrun --nproc-per-node K -m wwmonitor analyze PATH`` the matrices
are split over the ranks (matrix ``i`` on rank ``i mod K``; each rank maps
only its own tensors) and rank 0 writes the single report.

Bad input -- a missing, unreadable, truncated or corrupt checkpoint, an
unknown layer pattern, a ``--json``/``--csv`` target that cannot be written
(checked before the analysis starts) -- is one line
``wwmonitor analyze: error: <reason>`` on stderr and exit status 2, never a
traceback.  Entries of the checkpoint that are not analysed (biases, norms,
non-float arrays, ...) are listed with their reason after the table
(``"skipped"`` in the JSON output).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any, Optional, Sequence

DEFAULT_COLUMNS = [
    "name",
    "type",
    "shape",
    "Q",
    "alpha",
    "D",
    "alpha_weighted",
    "log_norm",
    "stable_rank",
    "mp_softrank",
    "num_spikes",
    "phase",
    "warning",
]


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "analyze", help="analyse a model checkpoint (safetensors, torch state_dict, npz, keras, HF folder)"
    )
    p.add_argument("path", help="checkpoint file or Hugging Face style model folder")
    p.add_argument("--layers", nargs="+", default=None, help="only these layer names / glob patterns / types")
    p.add_argument("--exclude", nargs="+", default=None, help="skip these layer names / glob patterns / types")
    p.add_argument("--json", dest="json_out", metavar="FILE", help="write the full table as JSON ('-' for stdout)")
    p.add_argument("--csv", dest="csv_out", metavar="FILE", help="write the full table as CSV ('-' for stdout)")
    p.add_argument("--min-evals", type=int, default=50, help="skip fits below this many eigenvalues (default 50)")
    p.add_argument("--max-evals", type=int, default=None, help="skip matrices with more eigenvalues")
    p.add_argument(
        "--conv", choices=["pool", "slices"], default="pool", help="pool conv kernel slices or keep them apart"
    )
    bar = p.add_mutually_exclusive_group()
    bar.add_argument(
        "--progress",
        action="store_true",
        help="progress bar on stderr even when it is not a terminal (default: only on a terminal)",
    )
    bar.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument(
        "--low-memory",
        action="store_true",
        help="in-place eigen route: ~2.5x each matrix's float32 size of working memory instead of ~6x "
        "(float64 Gram built in BLAS blocks, no float64 copy of the matrix); same eigenvalues to "
        "float64 rounding",
    )


def run(args: argparse.Namespace) -> int:
    from wwmonitor.analyze import AnalysisOptions
    from wwmonitor.model import analyze_model

    if _env_rank() == 0:  # only rank 0 writes: check its targets before any work
        for opt, target in (("--json", args.json_out), ("--csv", args.csv_out)):
            problem = _output_problem(target)
            if problem:
                return _error(f"{opt} {target}: {problem}")
    rank, world = _maybe_init_distributed()
    progress: Optional[bool] = None  # default: on a terminal, rank 0 only (analyze_model decides)
    if args.no_progress or (getattr(args, "progress", False) and rank != 0):
        progress = False
    elif getattr(args, "progress", False):
        progress = True
    low_memory = bool(getattr(args, "low_memory", False))
    try:
        rep = analyze_model(
            args.path,
            layers=args.layers,
            exclude=args.exclude,
            conv=args.conv,
            options=AnalysisOptions(min_evals=args.min_evals, max_evals=args.max_evals, low_memory=low_memory),
            progress=progress,
            distributed=world > 1,
        )
    except (FileNotFoundError, ValueError, TypeError, OSError, ImportError) as e:
        if rank == 0:
            _error(e)
        return 2
    if rank != 0:
        _finish_distributed(world)
        return 0
    code = _emit(args, rep)
    _finish_distributed(world)
    return code


def _emit(args: argparse.Namespace, rep: Any) -> int:
    """Rank 0's output: the ``--json``/``--csv`` files, and the table (unless one of them is stdout)."""
    df = rep.to_pandas()
    summary = rep.summary()
    try:
        if args.json_out:
            payload = {
                "source": rep.source,
                "summary": _jsonable(summary),
                "layers": [_jsonable(lm.to_dict()) for lm in rep.layers],
                "skipped": [{"name": n, "reason": r} for n, r in rep.skipped],
            }
            _write(args.json_out, json.dumps(payload, indent=2))
        if args.csv_out:
            _write(args.csv_out, df.to_csv(index=False))
    except OSError as e:
        return _error(f"cannot write {e.filename or 'the output'}: {e.strerror or e}")
    if args.json_out == "-" or args.csv_out == "-":
        for line in _skipped_lines(rep.skipped):  # stdout holds the table: the list goes to stderr
            print(line, file=sys.stderr)
    else:
        _print_table(df, summary, rep.skipped)
    return 0


def _print_table(df: Any, summary: dict[str, Any], skipped: Any) -> None:
    """The per-matrix table, the model summary, the skipped entries and the matrices not fitted, on stdout."""
    import pandas as pd

    cols = [c for c in DEFAULT_COLUMNS if c in df.columns]
    with pd.option_context("display.max_rows", None, "display.width", 200, "display.float_format", "{:.3f}".format):
        print(df[cols].to_string(index=False))
    print(
        f"\n{summary['num_layers']} matrices ({summary['num_ok']} fitted); "
        f"mean alpha {_fmt(summary.get('mean_alpha'))}, "
        f"mean alpha_weighted {_fmt(summary.get('mean_alpha_weighted'))}, "
        f"mean log_norm {_fmt(summary.get('mean_log_norm'))}; "
        f"phases {summary['phase_counts']}"
    )
    for line in _skipped_lines(skipped):
        print(line)
    bad = df[df["status"] != "ok"]
    if len(bad):
        print(f"{len(bad)} matrices not fitted:")
        for _, row in bad.iterrows():
            print(f"  {row['name']}: {row['status']}: {row['message']}")


def _fmt(v: Any) -> str:
    return "n/a" if v is None else f"{v:.3f}"


def _jsonable(v: Any) -> Any:
    """``v`` with NumPy scalars/arrays as Python numbers/lists and non-finite floats as ``None``;
    floats keep every digit (``DataFrame.to_json`` would round them to 10)."""
    import math

    import numpy as np

    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple, np.ndarray)):
        return [_jsonable(x) for x in (v.tolist() if isinstance(v, np.ndarray) else v)]
    if isinstance(v, (bool, np.bool_)):
        return bool(v)
    if isinstance(v, (int, np.integer)):
        return int(v)
    if isinstance(v, (float, np.floating)):
        f = float(v)
        return f if math.isfinite(f) else None
    return v


def _error(reason: object) -> int:
    """One line ``wwmonitor analyze: error: <reason>`` on stderr; exit status 2."""
    print(f"wwmonitor analyze: error: {' '.join(str(reason).split())}", file=sys.stderr)
    return 2


def _env_rank() -> int:
    try:
        return int(os.environ.get("RANK", "0") or 0)
    except ValueError:
        return 0


def _output_problem(target: Optional[str]) -> Optional[str]:
    """Why ``target`` cannot be written (``None``: it can, or it is ``-``/unset).

    Checked without creating anything: the target must not be a folder, an
    existing file must be writable, and a new file's folder must exist and be
    writable.
    """
    if not target or target == "-":
        return None
    p = Path(target)
    if p.is_dir():
        return "is a folder, not a file"
    if p.exists():
        return None if os.access(p, os.W_OK) else "the file is not writable (permission denied)"
    parent = p.parent
    anc = parent
    while not anc.exists() and anc != anc.parent:
        anc = anc.parent
    if anc.exists() and not anc.is_dir():
        return f"cannot create it: {anc} is a file, not a folder"
    if anc != parent or not parent.exists():
        return f"cannot create it: folder {parent} does not exist"
    if not os.access(parent, os.W_OK | os.X_OK):
        return f"cannot create it: folder {parent} is not writable (permission denied)"
    return None


def _skipped_lines(skipped: Sequence[tuple[str, str]], show: int = 6) -> list[str]:
    """The skipped entries grouped by reason, at most ``show`` names per reason."""
    if not skipped:
        return []
    groups: dict[str, list[str]] = {}
    for name, reason in skipped:
        groups.setdefault(reason, []).append(name)
    lines = [f"skipped {len(skipped)} entries not analysed:"]
    for reason, names in groups.items():
        more = f", ... (+{len(names) - show} more)" if len(names) > show else ""
        lines.append(f"  {reason} [{len(names)}]: {', '.join(names[:show])}{more}")
    return lines


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
