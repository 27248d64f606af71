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
