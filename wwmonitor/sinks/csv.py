"""CSV sink: every scalar of every snapshot, one row per value (long format).

Columns: ``step, epoch, layer, metric, value`` -- the same shape as
``load_run(path).metrics``, so ``pandas.read_csv(...).pivot_table(...)``
gives curves.  Model-level means (``result.summary``) are rows with
``layer = "__model__"`` (as in the run store); a controller's assignments (:mod:`wwmonitor.control`)
are rows ``control.<quantity>`` / ``control.<quantity>_factor``.  The file is append-only (a header is written only
when it is new), so a resumed run continues the same file.

Under Lightning, the callback writes ``wwmonitor_metrics.csv`` into the
``CSVLogger``'s ``log_dir`` next to its ``metrics.csv`` instead of calling
``CSVLogger.log_metrics``: that logger rewrites its whole file whenever a new
column appears and is not meant to be fed from a second thread; hundreds of
``ww.<metric>/<layer>`` columns would also swamp the user's own metrics.
"""

from __future__ import annotations

import csv
import math
import os
import threading
from pathlib import Path
from typing import IO, TYPE_CHECKING, Optional, Sequence, Union

from ..records import MODEL_LAYER, ControlRecord, SnapshotResult
from ._render import layer_scalars, resolve_metrics

if TYPE_CHECKING:
    from _csv import Writer

__all__ = ["CSVSink", "MODEL_LAYER", "CSV_NAME"]

#: default file name inside a directory
CSV_NAME = "wwmonitor_metrics.csv"
_HEADER = ["step", "epoch", "layer", "metric", "value"]


class CSVSink:
    """Append snapshot scalars to a CSV file.

    Parameters
    ----------
    path:
        A ``.csv`` file, or a directory (then ``<dir>/wwmonitor_metrics.csv``).
    metrics:
        ``"default"``, ``"all"`` or a list of metric names (see
        :class:`~wwmonitor.sinks.tensorboard.TensorBoardSink`).
    """

    def __init__(self, path: Union[str, os.PathLike], *, metrics: Union[str, Sequence[str]] = "all") -> None:
        p = Path(path)
        if p.suffix.lower() != ".csv":
            p = p / CSV_NAME
        try:
            p.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise ValueError(f"CSVSink: cannot create folder {str(p.parent)!r}: {e}") from e
        self.path = p
        self.metrics = resolve_metrics(metrics)
        self._lock = threading.Lock()
        self._fh: Optional[IO[str]] = None

    def _open(self) -> tuple[IO[str], Writer]:
        """The open file and its CSV writer (opened, with a header if the file is new, on first use)."""
        if self._fh is None:
            new = not self.path.exists() or self.path.stat().st_size == 0
            self._fh = open(self.path, "a", newline="", encoding="utf-8")
            self._writer: Writer = csv.writer(self._fh)
            if new:
                self._writer.writerow(_HEADER)
        return self._fh, self._writer

    def write(self, result: SnapshotResult) -> None:
        """Append the snapshot's rows and flush (called from the worker thread)."""
        epoch = "" if result.epoch is None else int(result.epoch)
        rows = []
        for lm in result.layers:
            for m, v in layer_scalars(lm, self.metrics).items():
                rows.append([int(result.step), epoch, lm.name, m, repr(v)])
        for k, v in result.summary.items():
            if v is not None and math.isfinite(float(v)):
                rows.append([int(result.step), epoch, MODEL_LAYER, k, repr(float(v))])
        with self._lock:
            fh, w = self._open()
            w.writerows(rows)
            fh.flush()

    def write_control(self, records: Sequence[ControlRecord]) -> None:
        """Append a controller's assignments: per layer the rows ``control.<quantity>`` (the value the
        update used) and ``control.<quantity>_factor`` at the step they took effect (``epoch`` empty)."""
        rows = []
        for r in records:
            rows.append([int(r.step), "", r.layer, f"control.{r.quantity}", repr(float(r.value))])
            rows.append([int(r.step), "", r.layer, f"control.{r.quantity}_factor", repr(float(r.factor))])
        with self._lock:
            fh, w = self._open()
            w.writerows(rows)
            fh.flush()

    def close(self) -> None:
        with self._lock:
            if self._fh is not None:
                self._fh.close()
                self._fh = None
