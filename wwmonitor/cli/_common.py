"""Conventions shared by the ``wwmonitor`` subcommands that write files.

A problem with the user's input (a missing run folder, an unknown layer,
step or parameter) is one line ``wwmonitor <command>: <reason>`` on stderr
and exit status 2 -- never a traceback; a written report is announced with
its ``file://`` address so it can be opened from the terminal.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Union

__all__ = ["INPUT_ERRORS", "fail", "announce_written"]

#: exceptions of the report writers that mean "bad input", reported as exit status 2
INPUT_ERRORS: tuple[type[Exception], ...] = (FileNotFoundError, ValueError, KeyError)


def fail(command: str, reason: object) -> int:
    """Print ``wwmonitor <command>: <reason>`` to stderr; return the exit status 2."""
    print(f"wwmonitor {command}: {reason}", file=sys.stderr)
    return 2


def announce_written(what: str, index: Union[str, os.PathLike]) -> int:
    """Print where ``what`` was written and its ``file://`` address; return the exit status 0."""
    print(f"{what} written: {index}")
    print(f"open it with:   file://{Path(index).resolve()}")
    return 0


#: errors of the report writers reported as one line and exit status 2: bad input, and files that cannot be
#: written or read (``OSError`` names the path)
REPORT_ERRORS: tuple[type[Exception], ...] = INPUT_ERRORS + (OSError,)


def error_reason(err: BaseException) -> str:
    """The message of ``err`` for :func:`fail` (a ``KeyError`` without the quotes its ``str`` adds)."""
    if isinstance(err, KeyError) and err.args:
        return str(err.args[0])
    return str(err)


def announce_problems(command: str, what: str, problems: "list[str]") -> None:
    """Tell on stderr that ``what`` was written with figures or sections missing, one line each."""
    if not problems:
        return
    n = len(problems)
    print(
        f"wwmonitor {command}: the {what} was written with {n} problem{'s' if n != 1 else ''} "
        "(listed at the top of the page):",
        file=sys.stderr,
    )
    for p in problems:
        print(f"  - {p}", file=sys.stderr)
