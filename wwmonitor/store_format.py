"""The run store's on-disk format: schema, version, and the codecs of its ESD and fit columns.

One job: how a :class:`~wwmonitor.records.SnapshotResult` becomes rows and
back.  :mod:`wwmonitor.store` writes, :mod:`wwmonitor.store_reader` reads.

Schema versions
---------------
* **1** -- metrics, status, phases, float32 ESDs, alerts.  The fitted models
  were not kept: a report had to re-fit them from the float32 ESDs.
* **2** -- adds the ``fits`` table: (step, layer) -> the analyzer's fitted
  models on the λ axis (:data:`wwmonitor.metrics.Fits`) as JSON, every float
  written with ``repr`` so it reads back bit for bit.  Reports draw these and
  never re-fit.  A version-1 store still opens: its snapshots simply have no
  stored fits (the report says so where it would draw one); a resumed
  version-1 run gets the table and fits for the snapshots written from then on.
* **3** -- adds the ``control`` table: (step, layer, controller, quantity) -> the value a controller
  (:mod:`wwmonitor.control`) gave that layer from that step on (:class:`~wwmonitor.records.ControlRecord`:
  alpha, factor, value, base, source step).  Version-1/2 stores still open and resume: they get the
  (empty) table, and the reader returns no records for them.

Precision: the ESDs stay float32 (relative error ``<= 6e-8``): they are drawn
(histograms, CCDFs), never fitted again; every number the report prints or
draws as a fit comes from the float64 ``metrics`` and ``fits`` rows.
"""

from __future__ import annotations

import json
import math
import sqlite3
import zlib
from pathlib import Path
from typing import Any, Optional

import numpy as np

from .metrics import Fits

__all__ = ["SCHEMA", "SCHEMA_VERSION", "ESD_CODEC", "encode_esd", "decode_esd", "encode_fits", "decode_fits"]

DB_NAME = "run.sqlite"
#: the version this wwmonitor writes (see the module docstring); stores of a newer version are refused
SCHEMA_VERSION = 3
ESD_CODEC = "f32-shuffle-zlib"

SCHEMA = """
CREATE TABLE IF NOT EXISTS run_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS layers (
    layer TEXT PRIMARY KEY, ord INTEGER NOT NULL, type TEXT, shape TEXT, N INTEGER, M INTEGER, Q REAL);
CREATE TABLE IF NOT EXISTS snapshots (
    step INTEGER PRIMARY KEY, epoch INTEGER, time REAL NOT NULL, n_layers INTEGER, analysis_s REAL);
CREATE TABLE IF NOT EXISTS metrics (
    step INTEGER NOT NULL, layer TEXT NOT NULL, metric TEXT NOT NULL, value REAL,
    PRIMARY KEY (step, layer, metric)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS layer_status (
    step INTEGER NOT NULL, layer TEXT NOT NULL, status TEXT NOT NULL, message TEXT, warning TEXT,
    PRIMARY KEY (step, layer)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS phases (
    step INTEGER NOT NULL, layer TEXT NOT NULL, phase TEXT, reason TEXT,
    PRIMARY KEY (step, layer)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS esds (
    step INTEGER NOT NULL, layer TEXT NOT NULL, n INTEGER NOT NULL, codec TEXT NOT NULL, data BLOB NOT NULL,
    PRIMARY KEY (step, layer)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS alerts (
    step INTEGER NOT NULL, layer TEXT NOT NULL, rule TEXT NOT NULL, epoch INTEGER, severity TEXT,
    message TEXT, value REAL, stop_training INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (step, layer, rule)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS fits (
    step INTEGER NOT NULL, layer TEXT NOT NULL, data TEXT NOT NULL,
    PRIMARY KEY (step, layer)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS control (
    step INTEGER NOT NULL, layer TEXT NOT NULL, controller TEXT NOT NULL, quantity TEXT NOT NULL,
    alpha REAL, factor REAL NOT NULL, value REAL, base REAL, source_step INTEGER,
    PRIMARY KEY (step, layer, controller, quantity)) WITHOUT ROWID;
"""


# ------------------------------------------------------------------ ESDs ---
def encode_esd(ev: np.ndarray) -> bytes:
    """float32 eigenvalues -> byte-shuffled (4 byte planes) zlib stream.

    Sorted float32 values share their high bytes; grouping byte *k* of every
    value together lets zlib find those runs (typically 2-3x smaller than
    compressing the raw bytes).
    """
    a = np.ascontiguousarray(np.asarray(ev, dtype="<f4"))
    planes = a.view(np.uint8).reshape(-1, 4).T.copy()
    return zlib.compress(planes.tobytes(), 6)


def decode_esd(blob: bytes, n: int) -> np.ndarray:
    """Inverse of :func:`encode_esd`."""
    planes = np.frombuffer(zlib.decompress(blob), dtype=np.uint8).reshape(4, n)
    return planes.T.copy().view("<f4").reshape(n).astype(np.float32)


# ------------------------------------------------------------------ fits ---
def _plain(v: Any) -> Any:
    """NumPy scalars/arrays and tuples as JSON values (floats keep every bit: JSON writes ``repr``)."""
    if isinstance(v, np.ndarray):
        return v.tolist()
    if isinstance(v, np.generic):
        return v.item()
    raise TypeError(f"not storable in a fit record: {type(v).__name__}")


def encode_fits(fits: Fits) -> str:
    """A layer's fitted models as JSON (NaN and infinities kept as JSON's ``NaN``/``Infinity``)."""
    return json.dumps(fits, default=_plain, sort_keys=True)


def decode_fits(text: str) -> Fits:
    """Inverse of :func:`encode_fits`; raises ``ValueError`` on text that is not a fit record."""
    out = json.loads(text)
    if not isinstance(out, dict) or not all(isinstance(v, dict) for v in out.values()):
        raise ValueError("a fit record must map 'powerlaw'/'mp' to objects")
    return out


# ----------------------------------------------------------------- values ---
def to_json(v: Any) -> str:
    """A run_meta value as JSON (values JSON cannot hold become strings)."""
    return json.dumps(v, default=str, sort_keys=True)


def finite_or_none(v: Any) -> Optional[float]:
    """``v`` as a finite float, or ``None``."""
    if v is None:
        return None
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def connect(path: Path, *, timeout: float) -> sqlite3.Connection:
    """A writer connection in autocommit mode (transactions are explicit) with a busy timeout."""
    conn = sqlite3.connect(str(path), timeout=timeout, isolation_level=None, check_same_thread=False)
    conn.execute(f"PRAGMA busy_timeout={int(timeout * 1000)}")
    return conn
