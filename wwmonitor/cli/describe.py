"""``wwmonitor describe PATH_OR_MODULE``: every weight of a model, analysed or skipped and why.

``PATH`` is a checkpoint file or folder, as for ``wwmonitor analyze``
(safetensors, torch state_dict, npz, keras, Hugging Face folder).
``MODULE`` names a Python object: ``pkg.module:attr`` (a model, or a
``state_dict``) or ``pkg.module:factory()`` (called without arguments); the
current directory is importable.  The table has one row per weight tensor of
>= 2 dimensions (see :func:`wwmonitor.describe`); ``--json`` / ``--csv``
write it (``-`` for stdout).  Nothing is analysed, so this is quick.

Bad input -- a missing or unreadable checkpoint, a module or attribute that
cannot be imported, a module or factory that calls ``sys.exit`` (named with its file), a factory
that raises, an object that is not a model, a
``--json``/``--csv`` target that cannot be written -- is one line
``wwmonitor describe: <reason>`` on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import os
import re
import sys
from pathlib import Path
from typing import Any

from ._common import error_reason, fail

_MODULE_TARGET = re.compile(r"^([A-Za-z_][\w.]*):([A-Za-z_][\w.]*)(\(\))?$")


def add_parser(sub: Any) -> None:
    """Register ``wwmonitor describe`` and its options."""
    p = sub.add_parser("describe", help="list every weight of a model: analysed as which matrices, or skipped and why")
    p.add_argument(
        "target",
        metavar="PATH_OR_MODULE",
        help="checkpoint file or model folder, or pkg.module:attr / pkg.module:factory()",
    )
    p.add_argument("--json", dest="json_out", metavar="FILE", help="write the table as JSON ('-' for stdout)")
    p.add_argument("--csv", dest="csv_out", metavar="FILE", help="write the table as CSV ('-' for stdout)")
    p.add_argument(
        "--conv",
        choices=["pool", "slices"],
        default="pool",
        help="conv kernels as one pooled matrix per layer, or one per kernel position",
    )


def run(args: argparse.Namespace) -> int:
    """Print (or write) the table; 0 on success, 2 on bad input."""
    from wwmonitor.describe import describe

    from .analyze import _output_problem

    for opt, target in (("--json", args.json_out), ("--csv", args.csv_out)):
        problem = _output_problem(target)
        if problem:
            return _fail(f"{opt} {target}: {problem}")
    try:
        obj = resolve_target(args.target)
        df = describe(obj, conv=args.conv)
    except (FileNotFoundError, ValueError, TypeError, OSError, ImportError, AttributeError) as e:
        return _fail(e)
    table = df.assign(shape=[_fmt_shape(s) for s in df["shape"]])
    try:
        if args.json_out:
            payload = {
                "source": args.target,
                **{k: v for k, v in df.attrs.items() if k != "source"},
                "weights": [{**row, "shape": list(row["shape"])} for row in df.to_dict(orient="records")],
            }
            _write(args.json_out, json.dumps(payload, indent=2))
        if args.csv_out:
            _write(args.csv_out, table.to_csv(index=False))
    except OSError as e:
        return _fail(f"cannot write {e.filename or 'the output'}: {e.strerror or e}")
    if args.json_out == "-" or args.csv_out == "-":
        print(_footer(df), file=sys.stderr)  # stdout holds the table
        return 0
    if len(table):
        print(_text_table(table))
    print(_footer(df))
    return 0


def resolve_target(target: str) -> Any:
    """A path (returned as given) or the object a ``pkg.module:attr`` / ``pkg.module:factory()`` target names."""
    if Path(target).exists():
        return target
    m = _MODULE_TARGET.match(target)
    if not m:
        return target  # describe() reports the missing file
    modname, attr, call = m.group(1), m.group(2), m.group(3)
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:
        sys.path.insert(0, cwd)
    try:
        obj: Any = importlib.import_module(modname)
    except ImportError as e:
        raise ImportError(f"cannot import module {modname!r} ({type(e).__name__}: {e})") from e
    except SystemExit as e:  # not an Exception: without this, describe would end with no table and no error
        raise ValueError(
            f"importing module {modname!r} ({_module_file(modname)}) called sys.exit({e.code!r}); "
            "guard the script's top-level code with `if __name__ == '__main__':` so that importing it "
            "only defines the model"
        ) from e
    except Exception as e:  # noqa: BLE001 - an error while importing the user's module
        raise ValueError(f"importing module {modname!r} failed: {type(e).__name__}: {e}") from e
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise AttributeError(f"module {modname!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    if call:
        if not callable(obj):
            raise TypeError(f"{modname}:{attr} is not callable (drop the '()')")
        try:
            obj = obj()
        except SystemExit as e:  # not an Exception: see the import above
            raise ValueError(
                f"{modname}:{attr}() ({_module_file(modname)}) called sys.exit({e.code!r}) instead of returning a model"
            ) from e
        except Exception as e:  # noqa: BLE001 - the user's factory failed
            raise ValueError(f"{modname}:{attr}() raised {type(e).__name__}: {e}") from e
    return obj


def _module_file(modname: str) -> str:
    """The file ``modname`` is imported from, or ``"file unknown"``."""
    try:
        spec = importlib.util.find_spec(modname)
    except (Exception, SystemExit):  # noqa: BLE001 - a parent package that fails to import: no file to name
        spec = None
    return str(spec.origin) if spec is not None and spec.origin else "file unknown"


def _fmt_shape(shape: Any) -> str:
    return "x".join(str(int(s)) for s in shape)


def _text_table(df: Any) -> str:
    """``df`` as left-aligned columns, two spaces apart."""
    cols = list(df.columns)
    cells = [[str(v) for v in row] for row in df.itertuples(index=False)]
    widths = [max([len(c)] + [len(r[i]) for r in cells]) for i, c in enumerate(cols)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(cols, widths)).rstrip()]
    lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip() for r in cells]
    return "\n".join(lines)


def _footer(df: Any) -> str:
    analysed = int((df["status"] == "analysed").sum()) if len(df) else 0
    skipped = len(df) - analysed
    a = df.attrs
    n = int(a.get("num_matrices", 0))
    line = (
        f"{len(df)} weight{'' if len(df) == 1 else 's'} of >= 2 dims: {analysed} analysed "
        f"({n} matri{'x' if n == 1 else 'ces'}), {skipped} skipped"
    )
    if a.get("num_vectors"):
        line += f"; {a['num_vectors']} vectors (biases, norms: 0-D/1-D) not listed"
    if a.get("num_other"):
        line += f"; {a['num_other']} entries that are not arrays not listed"
    return line


def _fail(reason: object) -> int:
    """One line ``wwmonitor describe: <reason>`` on stderr; exit status 2."""
    text = error_reason(reason) if isinstance(reason, BaseException) else str(reason)
    return fail("describe", " ".join(text.split()))


def _write(target: str, text: str) -> None:
    if target == "-":
        sys.stdout.write(text + "\n")
    else:
        with open(target, "w", encoding="utf-8") as f:
            f.write(text)
