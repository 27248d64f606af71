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
``fits``        (step, layer) -> the fitted power law and MP (λ axis) as JSON,
                exactly as the analyzer computed them (schema version 2)
``control``     (step, layer, controller, quantity) -> alpha, factor, value, base,
                source step: what a :mod:`wwmonitor.control` controller set
                (schema version 3)
==============  ==============================================================

Format, codecs and schema versions: :mod:`wwmonitor.store_format` (a version-1
store, without ``fits``, still opens and resumes); reading:
:mod:`wwmonitor.store_reader`.

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
import sqlite3
import threading
from pathlib import Path
from typing import Any, Iterable, Optional, Sequence, Union

import numpy as np

from .records import MODEL_LAYER, ControlRecord, SnapshotResult
from .runlock import RunLockedError, WriterLock
from .store_format import (
    DB_NAME,
    ESD_CODEC,
    SCHEMA,
    SCHEMA_VERSION,
    connect,
    decode_esd,
    encode_esd,
    encode_fits,
    finite_or_none,
    to_json,
)
from .store_reader import Run, load_run

__all__ = [
    "RunStore",
    "RunLockedError",
    "Run",
    "load_run",
    "DB_NAME",
    "MODEL_LAYER",
    "SCHEMA_VERSION",
    "encode_esd",
    "decode_esd",
]

log = logging.getLogger("wwmonitor")


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
            self._conn = connect(self.path, timeout=busy_timeout)
            mode = self._conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise sqlite3.OperationalError(f"journal_mode=WAL not supported here (got {mode})")
            self._conn.execute("PRAGMA synchronous=NORMAL")
            self._conn.executescript(SCHEMA)  # creates what an older store lacks (the fits table of version 2)
            self._stamp_version()
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
    def _stamp_version(self) -> None:
        """Record :data:`SCHEMA_VERSION`; refuse a store written by a newer wwmonitor (``sqlite3.Error``)."""
        row = self._conn.execute("SELECT value FROM run_meta WHERE key='schema_version'").fetchone()
        old = 1 if row is None else int(json.loads(row[0]))
        if old > SCHEMA_VERSION:
            raise sqlite3.DatabaseError(
                f"written with schema version {old} by a newer wwmonitor; this one writes version {SCHEMA_VERSION}"
            )
        self._conn.execute(
            "INSERT OR REPLACE INTO run_meta(key, value) VALUES ('schema_version', ?)", (to_json(SCHEMA_VERSION),)
        )

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
                "INSERT OR REPLACE INTO run_meta(key, value) VALUES (?, ?)", [(k, to_json(v)) for k, v in items.items()]
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
            metrics.extend(
                (step, MODEL_LAYER, k, finite_or_none(v))
                for k, v in result.summary.items()
                if finite_or_none(v) is not None
            )
            for name, ev in result.esds.items():
                ev = np.asarray(ev, dtype=np.float32).ravel()
                esds.append((step, name, int(ev.size), ESD_CODEC, encode_esd(ev)))
            fits = [(step, name, encode_fits(f)) for name, f in result.fits.items() if f]
            alerts = [
                (
                    step,
                    a.layer or "",
                    a.rule,
                    None if a.epoch is None else int(a.epoch),
                    a.severity,
                    a.message,
                    finite_or_none(a.value),
                    int(bool(a.stop_training)),
                )
                for a in result.alerts
            ]
            c.executemany("INSERT OR REPLACE INTO metrics(step, layer, metric, value) VALUES (?,?,?,?)", metrics)
            c.executemany("INSERT OR REPLACE INTO layer_status VALUES (?,?,?,?,?)", status)
            c.executemany("INSERT OR REPLACE INTO phases VALUES (?,?,?,?)", phases)
            c.executemany("INSERT OR REPLACE INTO esds VALUES (?,?,?,?,?)", esds)
            c.executemany("INSERT OR REPLACE INTO alerts VALUES (?,?,?,?,?,?,?,?)", alerts)
            c.executemany("INSERT OR REPLACE INTO fits VALUES (?,?,?)", fits)
            c.execute(
                "INSERT INTO snapshots(step, epoch, time, n_layers, analysis_s) VALUES (?,?,?,?,?)",
                (step, epoch, float(result.time), len(result.layers), finite_or_none(result.meta.get("analysis_s"))),
            )

        try:
            self._tx(tx)
        except Exception:
            self.errors += 1
            raise
        self.written += 1

    def write_control(self, records: Sequence[ControlRecord]) -> None:
        """Store a controller's assignments (:mod:`wwmonitor.control`) in one transaction (table ``control``)."""
        rows = [
            (
                int(r.step),
                r.layer,
                r.controller,
                r.quantity,
                finite_or_none(r.alpha),
                float(r.factor),
                finite_or_none(r.value),
                finite_or_none(r.base),
                int(r.source_step),
            )
            for r in records
        ]

        def tx(c: sqlite3.Connection) -> None:
            c.executemany("INSERT OR REPLACE INTO control VALUES (?,?,?,?,?,?,?,?,?)", rows)

        self._tx(tx)

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
