"""``wwmonitor`` command line: ``analyze | describe | report | compare | demo``.

Each subcommand lives in its own module (``wwmonitor/cli/<name>.py``) that
defines ``add_parser(subparsers)`` and ``run(args) -> int``.
"""

from __future__ import annotations

import argparse
import sys
from importlib import import_module
from typing import Optional, Sequence

SUBCOMMANDS = ("analyze", "describe", "report", "compare", "demo")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="wwmonitor", description="Weight-spectrum analysis and training monitor.")
    from wwmonitor import __version__

    p.add_argument("--version", action="version", version=f"wwmonitor {__version__}")
    sub = p.add_subparsers(dest="command", required=True)
    for name in SUBCOMMANDS:
        try:
            mod = import_module(f"wwmonitor.cli.{name}")
        except ModuleNotFoundError as e:  # a subcommand whose module is absent from this install
            if e.name != f"wwmonitor.cli.{name}":
                raise
            continue
        mod.add_parser(sub)
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    return int(import_module(f"wwmonitor.cli.{args.command}").run(args) or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
