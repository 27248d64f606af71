"""The embedded run store: one SQLite database per run, and its reader.

Layout: ``<run_dir>/<run_id>/run.sqlite`` (WAL journal), written by
:class:`RunStore` -- the default sink of every :class:`wwmonitor.Monitor` --
and read by :func:`load_run`, also from another process while training runs.

Tables (all keyed so that a resumed run never duplicates a step):

==============  ==============================================================
``run_meta``    key -> JSON value: ``name``, ``run_id``, ``config``, ``meta``
                (library versions, model class, layer shapes, monitor
                settings), ``schema_version``, ``created``
``layers``      one row per matrix: type, shape (``"a x b"`` / ``"K x a x b"``),
                ``N``, ``M``, ``Q = N/M``
``snapshots``   one row per analysed step: epoch, wall-clock ``time`` (Unix s)
``metrics``     (step, layer, metric) -> value; every numeric
                :meth:`LayerMetrics.numeric` field, plus model-level means as
                layer ``"__model__"``
``layer_status``(step, layer) -> status, message, warning
``phases``      (step, layer) -> phase, reason
``esds``        (step, layer) -> λ-axis ESD (eigenvalues of ``X = WᵀW/N``),
                float32, byte-shuffled and zlib-compressed
``alerts``      (step, layer, rule) -> severity, message, value
==============  ==============================================================

Durability: each snapshot is one transaction, committed before the next one
starts, with ``synchronous=NORMAL`` -- in WAL mode a committed transaction
survives the writing process being killed (SIGKILL), so everything committed
before a crash stays loadable.  A write that fails (disk full, database
locked by another process) is rolled back and raised to the worker, which
reports it (``stats["store_errors"]`` and a warning) and carries on; earlier
snapshots are untouched.
"""

from __future__ import annotations

import json
import logging
import math
import sqlite3
import threading
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Optional, Union

import numpy as np

from .records import MODEL_LAYER, SnapshotResult
from .runlock import RunLockedError, WriterLock

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

__all__ = ["RunStore", "RunLockedError", "Run", "load_run", "DB_NAME", "MODEL_LAYER", "encode_esd", "decode_esd"]

log = logging.getLogger("wwmonitor")

DB_NAME = "run.sqlite"
SCHEMA_VERSION = 1
ESD_CODEC = "f32-shuffle-zlib"

_SCHEMA = """
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


def _json(v: Any) -> str:
    return json.dumps(v, default=str, sort_keys=True)


def _num(v: Any) -> Optional[float]:
    if v is None:
        return None
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def _connect(path: Path, *, timeout: float) -> sqlite3.Connection:
    conn = sqlite3.connect(str(path), timeout=timeout, isolation_level=None, check_same_thread=False)
    conn.execute(f"PRAGMA busy_timeout={int(timeout * 1000)}")
    return conn


# ---------------------------------------------------------------- writer ---
class RunStore:
    """Writes one run's SQLite database (a :class:`~wwmonitor.sinks.Sink`).

    Parameters
    ----------
    folder:
        The run's folder (created if missing); the database is
        ``folder / "run.sqlite"``.
    busy_timeout:
        Seconds a write waits for a lock held by another connection before
        failing with "database is locked".
    max_bytes:
        Optional size cap of the database file; a write that would exceed it
        fails like a full disk (``SQLITE_FULL``) and is reported, not fatal.

    Raises ``ValueError`` naming the folder when it cannot be created or
    written, and :class:`RunLockedError` when another writer (in this or
    another process) has the run open: a store has one writer at a time.
    """

    def __init__(self, folder: Union[str, Path], *, busy_timeout: float = 5.0, max_bytes: Optional[int] = None) -> None:
        self.folder = Path(folder)
        self.path = self.folder / DB_NAME
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise ValueError(f"run_dir: cannot write the run store at {str(self.path)!r}: {e}") from e
        self._writer_lock = WriterLock(self.folder)  # raises RunLockedError
        try:
            self._conn = _connect(self.path, timeout=busy_timeout)
            mode = self._conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise sqlite3.OperationalError(f"journal_mode=WAL not supported here (got {mode})")
            self._conn.execute("PRAGMA synchronous=NORMAL")
            self._conn.executescript(_SCHEMA)
            if max_bytes is not None:
                page = self._conn.execute("PRAGMA page_size").fetchone()[0]
                self._conn.execute(f"PRAGMA max_page_count={max(1, int(max_bytes) // int(page))}")
        except (OSError, sqlite3.Error) as e:
            self._writer_lock.release()
            raise ValueError(f"run_dir: cannot write the run store at {str(self.path)!r}: {e}") from e
        self._lock = threading.Lock()
        self._closed = False
        self.errors = 0
        self.written = 0

    # -- helpers ----------------------------------------------------------
    def _tx(self, fn: Any) -> Any:
        """Run ``fn(conn)`` in one IMMEDIATE transaction (rolled back on error)."""
        with self._lock:
            if self._closed:
                raise RuntimeError(f"run store {str(self.path)!r} is closed")
            conn = self._conn
            conn.execute("BEGIN IMMEDIATE")
            try:
                out = fn(conn)
                conn.execute("COMMIT")
                return out
            except BaseException:
                try:
                    conn.execute("ROLLBACK")
                except sqlite3.Error:
                    pass
                raise

    def stored_steps(self) -> list[int]:
        """Steps already in the store, ascending."""
        with self._lock:
            return [r[0] for r in self._conn.execute("SELECT step FROM snapshots ORDER BY step")]

    def get_meta(self, key: str, default: Any = None) -> Any:
        with self._lock:
            row = self._conn.execute("SELECT value FROM run_meta WHERE key=?", (key,)).fetchone()
        return default if row is None else json.loads(row[0])

    def set_meta(self, items: dict[str, Any]) -> None:
        """Upsert run-level metadata (JSON-encoded; non-JSON values become strings)."""
        self._tx(
            lambda c: c.executemany(
                "INSERT OR REPLACE INTO run_meta(key, value) VALUES (?, ?)", [(k, _json(v)) for k, v in items.items()]
            )
        )

    def set_layers(self, layers: Iterable[tuple[str, str, tuple[int, ...]]]) -> None:
        """Record matrices ``(name, type, shape)`` (shape 2-D or ``(K, a, b)``)."""
        self._tx(lambda c: self._upsert_layers(c, layers))

    def _upsert_layers(self, c: sqlite3.Connection, layers: Iterable[tuple[str, str, tuple[int, ...]]]) -> None:
        known = dict(c.execute("SELECT layer, ord FROM layers").fetchall())
        next_ord = max(known.values(), default=-1) + 1
        for name, typ, shape in layers:
            shape = tuple(int(s) for s in shape)
            a, b = (shape[-2], shape[-1]) if len(shape) >= 2 else (shape[0] if shape else 0, 1)
            N, M = max(a, b), min(a, b)
            ord_ = known.get(name)
            if ord_ is None:
                ord_ = known[name] = next_ord
                next_ord += 1
            c.execute(
                "INSERT OR REPLACE INTO layers(layer, ord, type, shape, N, M, Q) VALUES (?,?,?,?,?,?,?)",
                (name, ord_, typ, "x".join(map(str, shape)), N, M, N / M if M else None),
            )

    # -- Sink -----------------------------------------------------------------
    def write(self, result: SnapshotResult) -> None:
        """Store one snapshot in one transaction; a step already stored is left as is."""
        step = int(result.step)
        epoch = None if result.epoch is None else int(result.epoch)

        def tx(c: sqlite3.Connection) -> None:
            if c.execute("SELECT 1 FROM snapshots WHERE step=?", (step,)).fetchone():
                return
            known = {r[0] for r in c.execute("SELECT layer FROM layers")}
            new = [(m.name, m.type, m.shape) for m in result.layers if m.name not in known and m.shape]
            if new:
                self._upsert_layers(c, new)
            metrics: list[tuple[int, str, str, Optional[float]]] = []
            status, phases, esds = [], [], []
            for m in result.layers:
                metrics.extend((step, m.name, k, v) for k, v in m.numeric().items())
                status.append((step, m.name, m.status, m.message, m.warning))
                if m.phase is not None:
                    phases.append((step, m.name, m.phase, m.phase_reason))
            metrics.extend((step, MODEL_LAYER, k, _num(v)) for k, v in result.summary.items() if _num(v) is not None)
            for name, ev in result.esds.items():
                ev = np.asarray(ev, dtype=np.float32).ravel()
                esds.append((step, name, int(ev.size), ESD_CODEC, encode_esd(ev)))
            alerts = [
                (
                    step,
                    a.layer or "",
                    a.rule,
                    None if a.epoch is None else int(a.epoch),
                    a.severity,
                    a.message,
                    _num(a.value),
                    int(bool(a.stop_training)),
                )
                for a in result.alerts
            ]
            c.executemany("INSERT OR REPLACE INTO metrics(step, layer, metric, value) VALUES (?,?,?,?)", metrics)
            c.executemany("INSERT OR REPLACE INTO layer_status VALUES (?,?,?,?,?)", status)
            c.executemany("INSERT OR REPLACE INTO phases VALUES (?,?,?,?)", phases)
            c.executemany("INSERT OR REPLACE INTO esds VALUES (?,?,?,?,?)", esds)
            c.executemany("INSERT OR REPLACE INTO alerts VALUES (?,?,?,?,?,?,?,?)", alerts)
            c.execute(
                "INSERT INTO snapshots(step, epoch, time, n_layers, analysis_s) VALUES (?,?,?,?,?)",
                (step, epoch, float(result.time), len(result.layers), _num(result.meta.get("analysis_s"))),
            )

        try:
            self._tx(tx)
        except Exception:
            self.errors += 1
            raise
        self.written += 1

    def close(self) -> None:
        """Checkpoint the WAL into the database file and close (idempotent)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            try:
                self._conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
            except sqlite3.Error as e:  # the WAL stays beside the file; readers still see every row
                log.warning("wwmonitor: could not checkpoint the WAL of %s on close: %s", self.path, e)
            self._conn.close()
            self._writer_lock.release()


# ---------------------------------------------------------------- reader ---
def _unreadable(db: Path, err: BaseException) -> ValueError:
    """The error for a run store that cannot be read: names the file and the problem.

    ``err`` is the ``sqlite3.Error`` (or the pandas error wrapping one) that
    reading ``db`` raised; a missing table means the file is a database but
    not a run store (an empty file, another program's database), anything
    else that the file is damaged (random bytes, truncated, corrupt pages).
    """
    cause = err.__cause__ if isinstance(err.__cause__, sqlite3.Error) else err
    text = str(cause)
    if "no such table" in text or "no such column" in text:
        why = f"it is not a wwmonitor run store ({text}); is it empty, or another program's database?"
    else:
        why = f"it is not a readable SQLite database ({text}); the file may be truncated or corrupt"
    return ValueError(f"cannot read the run store {str(db)!r}: {why}")


def _open_ro(path: Path) -> sqlite3.Connection:
    """A read-only connection to the run store ``path``, checked to answer a query on ``run_meta``.

    Read-only URI mode first; when that is refused (e.g. a WAL database whose
    ``-shm`` file cannot be created read-only) a normal connection with
    ``query_only``.  Raises ``ValueError`` naming the file when neither can
    read it (not a database, truncated, corrupt, or not a run store).
    """

    def checked(conn: sqlite3.Connection) -> sqlite3.Connection:
        try:
            conn.execute("SELECT 1 FROM run_meta LIMIT 1").fetchall()
        except sqlite3.Error:
            conn.close()
            raise
        return conn

    try:
        return checked(sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10.0, check_same_thread=False))
    except sqlite3.Error:  # read-only mode refused: retry with a query-only connection, whose error is the one reported
        try:
            conn = sqlite3.connect(str(path), timeout=10.0, check_same_thread=False)
            conn.execute("PRAGMA query_only=1")
            return checked(conn)
        except sqlite3.Error as e:
            raise _unreadable(path, e) from e


@dataclass
class Run:
    """A run loaded from its store (a snapshot of the database at load time).

    DataFrames (long format; ``epoch`` is a nullable integer):

    * ``metrics``: step, epoch, layer, metric, value -- every numeric
      :class:`~wwmonitor.metrics.LayerMetrics` field per layer, and the
      model-level means (``mean_alpha`` ...) under ``layer == "__model__"``;
    * ``layers``: layer, type, shape, N, M, Q;
    * ``phases``: step, epoch, layer, phase, reason;
    * ``alerts``: step, epoch, layer (``None`` for model-level), rule,
      severity, message, value;
    * ``snapshots``: step, epoch, time (Unix seconds);
    * ``layer_status``: step, layer, status, message.
    """

    path: Path
    name: str
    run_id: str
    config: dict[str, Any]
    meta: dict[str, Any]
    metrics: "pd.DataFrame"
    layers: "pd.DataFrame"
    phases: "pd.DataFrame"
    alerts: "pd.DataFrame"
    snapshots: "pd.DataFrame"
    layer_status: "pd.DataFrame"
    _db: Path = field(repr=False, default=Path())

    @property
    def steps(self) -> list[int]:
        """Analysed steps, ascending."""
        return [int(s) for s in self.snapshots["step"]]

    @property
    def layer_names(self) -> list[str]:
        return list(self.layers["layer"])

    @property
    def summary(self) -> "pd.DataFrame":
        """Model-level means, one row per step (columns ``mean_alpha`` ...)."""
        m = self.metrics[self.metrics["layer"] == MODEL_LAYER]
        wide = m.pivot(index="step", columns="metric", values="value").reset_index()
        wide.columns.name = None
        return self.snapshots[["step", "epoch"]].merge(wide, on="step", how="inner")

    def esd(self, layer: str, step: Optional[int] = None) -> np.ndarray:
        """λ-axis ESD (eigenvalues of ``X = WᵀW/N``, float32, ascending) of
        ``layer`` at ``step`` (default: the latest step that has it).

        Raises ``KeyError`` when the run has no such ESD, and ``ValueError``
        naming the file, layer and step when the store cannot be read or
        the stored ESD is corrupt.
        """
        conn = _open_ro(self._db)
        try:
            if step is None:
                row = conn.execute(
                    "SELECT n, codec, data, step FROM esds WHERE layer=? ORDER BY step DESC LIMIT 1", (layer,)
                ).fetchone()
            else:
                row = conn.execute(
                    "SELECT n, codec, data, step FROM esds WHERE layer=? AND step=?", (layer, int(step))
                ).fetchone()
        except sqlite3.Error as e:
            raise _unreadable(self._db, e) from e
        finally:
            conn.close()
        if row is None:
            known = self.layer_names
            if layer not in known:
                raise KeyError(f"layer {layer!r} is not in run {self.name!r}; layers: {known}")
            raise KeyError(
                f"no ESD stored for layer {layer!r} at step {step} in run {self.name!r} (steps: {self.steps})"
            )
        n, codec, data, at = row
        if codec != ESD_CODEC:
            raise ValueError(f"unknown ESD codec {codec!r} in {str(self._db)!r}")
        try:
            return decode_esd(data, int(n))
        except (zlib.error, ValueError, TypeError) as e:
            raise ValueError(
                f"the stored ESD of layer {layer!r} at step {at} in {str(self._db)!r} is corrupt "
                f"and cannot be decoded ({e})"
            ) from e

    def to_pandas(self) -> "pd.DataFrame":
        """Wide table: one row per (step, layer), a column per metric, plus
        ``epoch``, ``phase``, ``status``."""
        m = self.metrics[self.metrics["layer"] != MODEL_LAYER]
        wide = m.pivot(index=["step", "layer"], columns="metric", values="value").reset_index()
        wide.columns.name = None
        base = self.layer_status[["step", "layer", "status"]]
        out = base.merge(wide, on=["step", "layer"], how="left")
        out = out.merge(self.phases[["step", "layer", "phase"]], on=["step", "layer"], how="left")
        out = out.merge(self.snapshots[["step", "epoch"]], on="step", how="left")
        cols = ["step", "epoch", "layer", "phase", "status"]
        return out[cols + [c for c in out.columns if c not in cols]].sort_values(["step", "layer"], ignore_index=True)


def load_run(path: Union[str, Path]) -> Run:
    """Load a run from its folder (or its ``run.sqlite``).

    Safe while the run is still being written (reads a consistent snapshot
    of what was committed) and after the writer was killed.

    Raises ``FileNotFoundError`` when there is no ``run.sqlite``, and
    ``ValueError`` naming the file and the problem when it cannot be read
    (not a SQLite database, truncated or corrupt, not a run store, invalid
    metadata).
    """
    import pandas as pd

    p = Path(path)
    db = p if p.is_file() else p / DB_NAME
    if not db.is_file():
        raise FileNotFoundError(f"no run store at {str(db)!r} (expected a run folder containing {DB_NAME})")
    conn = _open_ro(db)
    try:
        conn.execute("BEGIN")  # one read transaction: every table from the same commit
        meta_rows = dict(conn.execute("SELECT key, value FROM run_meta").fetchall())
        try:
            kv = {k: json.loads(v) for k, v in meta_rows.items()}
        except (TypeError, ValueError) as e:
            raise ValueError(
                f"cannot read the run store {str(db)!r}: its run_meta table holds invalid JSON ({e})"
            ) from e

        def q(sql: str) -> pd.DataFrame:
            return pd.read_sql_query(sql, conn)

        snaps = q("SELECT step, epoch, time FROM snapshots ORDER BY step")
        ep = "(SELECT epoch FROM snapshots s WHERE s.step = t.step) AS epoch"
        metrics = q(
            f"SELECT step, {ep}, layer, metric, value FROM metrics t "
            "WHERE step IN (SELECT step FROM snapshots) ORDER BY step, layer, metric"
        )
        layers = q("SELECT layer, type, shape, N, M, Q FROM layers ORDER BY ord")
        phases = q(f"SELECT step, {ep}, layer, phase, reason FROM phases t ORDER BY step, layer")
        alerts = q("SELECT step, epoch, layer, rule, severity, message, value FROM alerts ORDER BY step, layer, rule")
        status = q("SELECT step, layer, status, message FROM layer_status ORDER BY step, layer")
        conn.execute("COMMIT")
    except (sqlite3.Error, pd.errors.DatabaseError) as e:  # pandas wraps the sqlite3 error of a query
        raise _unreadable(db, e) from e
    finally:
        conn.close()
    for df in (snaps, metrics, phases, alerts):
        df["epoch"] = df["epoch"].astype("Int64")
    alerts["layer"] = alerts["layer"].where(alerts["layer"] != "", None)
    return Run(
        path=db.parent,
        name=str(kv.get("name", db.parent.name)),
        run_id=str(kv.get("run_id", db.parent.name)),
        config=dict(kv.get("config") or {}),
        meta=dict(kv.get("meta") or {}),
        metrics=metrics,
        layers=layers,
        phases=phases,
        alerts=alerts,
        snapshots=snaps,
        layer_status=status,
        _db=db,
    )
