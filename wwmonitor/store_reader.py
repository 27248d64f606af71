"""Reading a run store: :func:`load_run` and the :class:`Run` it returns.

Reads the tables that :class:`wwmonitor.store.RunStore` writes (format:
:mod:`wwmonitor.store_format`), also from another process while training
runs, and stores of every older schema version (see there).
"""

from __future__ import annotations

import json
import sqlite3
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, Union

import numpy as np

from .metrics import Fits
from .records import MODEL_LAYER, ControlRecord
from .store_format import DB_NAME, ESD_CODEC, SCHEMA_VERSION, decode_esd, decode_fits

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

__all__ = ["Run", "load_run"]


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

    ``schema_version`` is the store's format version
    (:mod:`wwmonitor.store_format`); :meth:`fits` gives the stored fitted
    models (``None`` for snapshots written before version 2); :meth:`control_records` what the
    controllers of :mod:`wwmonitor.control` set (version 3).
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
    schema_version: int = SCHEMA_VERSION
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

    def _row(self, sql: str, args: tuple[Any, ...]) -> Any:
        """One row of ``sql`` from a fresh read-only connection (``ValueError`` naming the file on failure)."""
        conn = _open_ro(self._db)
        try:
            return conn.execute(sql, args).fetchone()
        except sqlite3.Error as e:
            raise _unreadable(self._db, e) from e
        finally:
            conn.close()

    def _missing(self, what: str, layer: str, step: Optional[int]) -> KeyError:
        known = self.layer_names
        if layer not in known:
            return KeyError(f"layer {layer!r} is not in run {self.name!r}; layers: {known}")
        return KeyError(
            f"no {what} stored for layer {layer!r} at step {step} in run {self.name!r} (steps: {self.steps})"
        )

    def esd(self, layer: str, step: Optional[int] = None) -> np.ndarray:
        """λ-axis ESD (eigenvalues of ``X = WᵀW/N``, float32, ascending) of
        ``layer`` at ``step`` (default: the latest step that has it).

        Raises ``KeyError`` when the run has no such ESD, and ``ValueError``
        naming the file, layer and step when the store cannot be read or
        the stored ESD is corrupt.
        """
        sql = "SELECT n, codec, data, step FROM esds WHERE layer=?"
        if step is None:
            row = self._row(sql + " ORDER BY step DESC LIMIT 1", (layer,))
        else:
            row = self._row(sql + " AND step=?", (layer, int(step)))
        if row is None:
            raise self._missing("ESD", layer, step)
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

    def fits(self, layer: str, step: int) -> Optional[Fits]:
        """The analyzer's fitted models of ``layer`` at ``step`` on the λ axis (:data:`wwmonitor.metrics.Fits`),
        exactly as computed; ``None`` when that snapshot has none stored (a store of schema version 1, or a
        layer whose fits did not run).  Raises ``ValueError`` naming the file when the record is corrupt."""
        if self.schema_version < 2 and not self._has_fits_table():
            return None
        row = self._row("SELECT data FROM fits WHERE layer=? AND step=?", (layer, int(step)))
        if row is None:
            return None
        try:
            return decode_fits(row[0])
        except ValueError as e:
            raise ValueError(
                f"the stored fits of layer {layer!r} at step {step} in {str(self._db)!r} are corrupt ({e})"
            ) from e

    def _has_fits_table(self) -> bool:
        return self._row("SELECT 1 FROM sqlite_master WHERE type='table' AND name='fits'", ()) is not None

    def control_records(self) -> list[ControlRecord]:
        """Every assignment a controller (:mod:`wwmonitor.control`) recorded, ordered by step, controller,
        quantity, layer; empty for a store without the ``control`` table (schema version < 3)."""
        if self._row("SELECT 1 FROM sqlite_master WHERE type='table' AND name='control'", ()) is None:
            return []
        conn = _open_ro(self._db)
        try:
            rows = conn.execute(
                "SELECT step, layer, controller, quantity, alpha, factor, value, base, source_step FROM control "
                "ORDER BY step, controller, quantity, layer"
            ).fetchall()
        except sqlite3.Error as e:
            raise _unreadable(self._db, e) from e
        finally:
            conn.close()
        return [
            ControlRecord(
                step=int(r[0]),
                layer=r[1],
                controller=r[2],
                quantity=r[3],
                alpha=r[4],
                factor=float(r[5]),
                value=float("nan") if r[6] is None else float(r[6]),
                base=float("nan") if r[7] is None else float(r[7]),
                source_step=int(r[8]),
            )
            for r in rows
        ]

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

        version = _schema_version(db, kv)
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
        schema_version=version,
        _db=db,
    )


def _schema_version(db: Path, kv: dict[str, Any]) -> int:
    """The store's format version (1 when not recorded); ``ValueError`` for a newer one than this wwmonitor reads."""
    try:
        version = int(kv.get("schema_version", 1))
    except (TypeError, ValueError) as e:
        raise ValueError(f"cannot read the run store {str(db)!r}: invalid schema_version ({e})") from e
    if version > SCHEMA_VERSION:
        raise ValueError(
            f"cannot read the run store {str(db)!r}: it was written with schema version {version} by a newer "
            f"wwmonitor; this one reads versions 1 to {SCHEMA_VERSION} (upgrade wwmonitor)"
        )
    return version
