"""Run the benchmarks (``bench_*.py``) and print their side-by-side ratios; optionally write their tables into the
docs.

Usage::

    python -m benchmarks [name ...]                 # run (all, or those whose module name contains a name)
    python -m benchmarks --write-docs [name ...]    # run those with a docs block and rewrite the blocks
    python -m benchmarks --write-docs --force ...   # write even on a busy machine (the stamp records the load)
    python -m benchmarks --write-docs --quick ...   # a smoke run (tiny inputs): for tests, never for the docs

Each module defines ``main() -> None`` (prints a Markdown table).  A module with a docs block also defines
``DOC_BLOCKS`` (block name -> Markdown file), ``measure(quick=False)`` and ``render(result) -> {block: body}``;
see ``benchmarks/docs_blocks.py``.  The load average is printed at the start and the end; ``--write-docs``
refuses to write (exit status 3) when it is above the CPU count at either point, unless ``--force``.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys
import time
from pathlib import Path
from typing import Any, Optional

if __package__ in (None, ""):  # `python benchmarks/__main__.py`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import docs_blocks  # noqa: E402


def _modules(selected: list[str]) -> list[str]:
    here = Path(__file__).parent
    names = sorted(m.name for m in pkgutil.iter_modules([str(here)]) if m.name.startswith("bench_"))
    return [n for n in names if any(a in n for a in selected)] if selected else names


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.split("\n\n")[0])
    p.add_argument("names", nargs="*", help="run only the benchmarks whose module name contains one of these")
    p.add_argument("--write-docs", action="store_true", help="rewrite the benchmarks' marker blocks in docs/")
    p.add_argument("--force", action="store_true", help="write the docs even when the load is above the CPU count")
    p.add_argument("--quick", action="store_true", help="tiny inputs (a smoke run of the pipeline)")
    return p


def _run_all(names: list[str]) -> int:
    for name in names:
        print(f"\n## {name}\n", flush=True)
        t0 = time.perf_counter()
        importlib.import_module(f"benchmarks.{name}").main()
        print(f"\n({name} took {time.perf_counter() - t0:.1f} s)", flush=True)
    return 0


def _measure_blocks(names: list[str], quick: bool) -> list[tuple[str, str, str]]:
    """``(file, block, body)`` of every selected benchmark that has docs blocks, measured now."""
    out = []
    for name in names:
        mod: Any = importlib.import_module(f"benchmarks.{name}")
        blocks = getattr(mod, "DOC_BLOCKS", None)
        if not blocks:
            continue
        print(f"\n## {name}\n", flush=True)
        t0 = time.perf_counter()
        bodies = mod.render(mod.measure(quick=quick))
        print(f"({name} took {time.perf_counter() - t0:.1f} s)", flush=True)
        for block, body in bodies.items():
            print(body, flush=True)
            out.append((blocks[block], block, body))
    return out


def main(argv: list[str], root: Optional[Path] = None) -> int:
    """The command line; ``root``: the repository whose docs are written (tests pass a copy)."""
    args = _parser().parse_args(argv)
    names = _modules(args.names)
    cpus = docs_blocks.cpu_count()
    start = docs_blocks.load_average()
    print(f"{cpus} CPU(s); load average (1/5/15 min) at start: {docs_blocks.format_load(start)}", flush=True)
    if not args.write_docs:
        code = _run_all(names)
        print(f"load average (1/5/15 min) at end: {docs_blocks.format_load(docs_blocks.load_average())}")
        return code
    measured = _measure_blocks(names, args.quick)
    end = docs_blocks.load_average()
    print(f"load average (1/5/15 min) at end: {docs_blocks.format_load(end)}", flush=True)
    if not measured:
        print("no selected benchmark has a docs block", file=sys.stderr)
        return 2
    busy = docs_blocks.too_busy([start, end], cpus)
    if busy and not args.force:
        print(f"not writing the docs: {busy} (use --force to write anyway; the stamp records it)", file=sys.stderr)
        return 3
    command = "python -m benchmarks --write-docs " + " ".join(argv_ for argv_ in argv if argv_ != "--write-docs")
    stamp = docs_blocks.stamp(command.strip(), start, end)
    base = root or docs_blocks.ROOT
    for rel, block, body in measured:
        docs_blocks.write_block(base / rel, block, f"{stamp}\n\n{body}")
        print(f"wrote block {block!r} of {rel}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
