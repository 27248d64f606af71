"""``logs(match)``: assert that the ``wwmonitor`` logger said something matching ``match``.

wwmonitor reports faults as one log record each (no duplicate Python
warning), so tests check the log, not ``pytest.warns``.
"""

from __future__ import annotations

import contextlib
import logging
import re
from typing import Iterator


@contextlib.contextmanager
def logs(match: str = "", level: int = logging.WARNING) -> Iterator[list[logging.LogRecord]]:
    records: list[logging.LogRecord] = []
    handler = logging.Handler(level)
    handler.emit = records.append  # type: ignore[method-assign]
    logger = logging.getLogger("wwmonitor")
    old = logger.level
    logger.addHandler(handler)
    logger.setLevel(min(level, old) if old else level)
    try:
        yield records
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old)
    said = [r.getMessage() for r in records if r.levelno >= level]
    assert any(re.search(match, m) for m in said), f"no log record matching {match!r}; got {said}"
