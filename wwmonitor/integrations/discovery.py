"""Find the run stores of a sweep, with each trial's hyper-parameters: what ``wwmonitor compare SWEEP_DIR`` reads.

Understood layouts (``source`` is a folder unless said otherwise):

* **a Ray Tune experiment**: the folder Tune writes (``<storage_path>/<name>``,
  with ``experiment_state-*.json`` / ``tuner.pkl`` and one folder per trial
  holding ``params.json``), or the ``storage_path`` above one or more
  experiments, or a ``ray.tune.ResultGrid`` (from Python).  Each trial's run
  stores are the ``run.sqlite`` files anywhere under its folder (where
  :func:`wwmonitor.integrations.ray_tune.trial_run_dir` puts them); its
  hyper-parameters are its ``params.json`` (nested dicts flattened with ``/``).
* **an Optuna study**: a folder holding the study's SQLite storage (a ``*.db``,
  ``*.sqlite`` or ``*.sqlite3`` file with Optuna's tables).  Each trial's run
  store is the folder in its user attribute ``wwmonitor_run_dir`` (set by
  :func:`wwmonitor.integrations.optuna.trial_monitor`); when that path no
  longer exists (the folder was moved) a folder of the same name under the
  storage's folder is used.  Hyper-parameters: ``trial.params``.  Reading a
  study needs ``optuna``.

The hyper-parameters are merged *under* each run's own ``config`` (the run's
value wins when both have a key), so ``compare`` detects the swept key as for
any runs.  Trials without a run store, and run stores without an analysed
snapshot (a trial stopped before its first snapshot), are left out and named
in ``notes``.
"""

from __future__ import annotations

import dataclasses
import json
import sqlite3
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Optional, Union

if TYPE_CHECKING:  # pragma: no cover
    from ..store import Run

__all__ = ["RUN_DIR_ATTR", "discover_runs", "flatten_params", "is_ray_experiment", "optuna_storages"]

#: the Optuna trial user attribute naming the trial's run folder
RUN_DIR_ATTR = "wwmonitor_run_dir"
#: file name endings of SQLite files examined as Optuna storages
_OPTUNA_SUFFIXES = (".db", ".sqlite", ".sqlite3")


def flatten_params(params: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"opt": {"lr": 0.1}}`` -> ``{"opt/lr": 0.1}`` (Ray Tune's own flattening)."""
    out: dict[str, Any] = {}
    for k, v in params.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(flatten_params(v, key + "/"))
        else:
            out[key] = v
    return out


def is_ray_experiment(path: Union[str, Path]) -> bool:
    """Whether ``path`` is a Ray Tune experiment folder (``experiment_state-*.json`` or ``tuner.pkl``)."""
    p = Path(path)
    return p.is_dir() and ((p / "tuner.pkl").is_file() or any(p.glob("experiment_state-*.json")))


def optuna_storages(path: Union[str, Path]) -> list[Path]:
    """The SQLite files directly in ``path`` that hold an Optuna storage (tables ``studies`` and ``trials``)."""
    p = Path(path)
    if not p.is_dir():
        return []
    out = []
    for f in sorted(p.iterdir()):
        if f.is_file() and f.suffix.lower() in _OPTUNA_SUFFIXES and _has_tables(f, {"studies", "trials"}):
            out.append(f)
    return out


def _has_tables(db: Path, tables: set[str]) -> bool:
    try:
        with open(db, "rb") as fh:
            if fh.read(16) != b"SQLite format 3\x00":
                return False
        conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5.0)
        try:
            names = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        finally:
            conn.close()
    except OSError:
        return False
    except sqlite3.Error as e:  # an SQLite file whose schema cannot be read: say so rather than pass it over
        raise ValueError(f"{db}: an SQLite file whose tables cannot be read ({type(e).__name__}: {e})") from e
    return tables <= names


def discover_runs(source: Any, *, notes: Optional[list[str]] = None) -> list["Run"]:
    """The runs of a sweep with their trial's hyper-parameters merged into ``run.config``.

    ``source``: a Ray Tune experiment folder, a folder above experiments, a ``ResultGrid``, or a folder
    holding an Optuna study's SQLite storage (see the module doc).  Returns ``[]`` when ``source`` is none
    of these.  ``notes`` (a list) receives one line per trial that was left out and why.
    """
    notes = notes if notes is not None else []
    if not isinstance(source, (str, Path)) and hasattr(source, "experiment_path"):
        return _from_result_grid(source, notes)
    p = Path(source)
    runs: list[Run] = []
    for db in optuna_storages(p):
        runs += _from_optuna(db, notes)
    experiments = (
        [p]
        if is_ray_experiment(p)
        else ([q for q in sorted(p.iterdir()) if is_ray_experiment(q)] if p.is_dir() else [])
    )
    for exp in experiments:
        runs += _from_ray_experiment(exp, notes)
    return runs


# --- Ray Tune ------------------------------------------------------------------------------------------------


def _ray_trials(exp: Path) -> list[Path]:
    return [d for d in sorted(exp.iterdir()) if d.is_dir() and (d / "params.json").is_file()]


def _from_ray_experiment(exp: Path, notes: list[str]) -> list["Run"]:
    runs: list[Run] = []
    for trial in _ray_trials(exp):
        try:
            params = json.loads((trial / "params.json").read_text())
        except (OSError, ValueError) as e:
            notes.append(f"{trial}: cannot read params.json ({e}); its hyper-parameters are not merged")
            params = {}
        runs += _trial_runs(trial, params if isinstance(params, dict) else {}, notes)
    return runs


def _from_result_grid(grid: Any, notes: list[str]) -> list["Run"]:
    runs: list[Run] = []
    for res in grid:
        path = getattr(res, "path", None)
        if path is None or "://" in str(path):
            notes.append(f"trial {path!r}: not on a local filesystem; its run stores cannot be read")
            continue
        runs += _trial_runs(Path(path), dict(getattr(res, "config", None) or {}), notes)
    return runs


def _trial_runs(trial: Path, params: Mapping[str, Any], notes: list[str]) -> list["Run"]:
    stores = sorted(trial.rglob("run.sqlite"))
    if not stores:
        notes.append(f"trial {trial.name}: no run store under {str(trial)!r}")
        return []
    out = []
    for db in stores:
        run = _load(db.parent, params, notes, f"trial {trial.name}")
        if run is not None:
            out.append(run)
    return out


def _load(folder: Path, params: Mapping[str, Any], notes: list[str], what: str) -> Optional["Run"]:
    """The run in ``folder`` with ``params`` merged under its config; ``None`` (and a note) when it has no
    analysed snapshot or cannot be read."""
    from ..store import load_run

    try:
        run = load_run(folder)
    except (FileNotFoundError, ValueError) as e:
        notes.append(f"{what}: {e}")
        return None
    if not run.steps:
        notes.append(f"{what}: the run store {str(folder)!r} has no analysed snapshot yet")
        return None
    return dataclasses.replace(run, config={**flatten_params(params), **run.config})


# --- Optuna --------------------------------------------------------------------------------------------------


def _from_optuna(db: Path, notes: list[str]) -> list["Run"]:
    """The monitored trials of every study in the Optuna storage ``db``; a storage that cannot be read (a
    corrupt page, a schema this Optuna does not know) is a one-line ``ValueError`` naming ``db``."""
    try:
        import optuna
    except ImportError as e:
        raise ValueError(
            f'{str(db)!r} is an Optuna storage; reading it needs optuna ({e}): pip install "wwmonitor[optuna]"'
        ) from e
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage: Any = None
    try:
        storage = optuna.storages.RDBStorage(f"sqlite:///{db.resolve()}", skip_table_creation=True)
        trials = _optuna_trials(optuna, storage)
    except (MemoryError, KeyboardInterrupt):
        raise
    except Exception as e:  # noqa: BLE001 - sqlalchemy / sqlite3 / Optuna errors: a damaged or foreign storage
        raise ValueError(
            f"{db}: cannot be read as an Optuna storage ({_root_reason(e)}); a damaged file, or one written by "
            f"another Optuna version (this is optuna {optuna.__version__}; `optuna storage upgrade` upgrades "
            "an older one)"
        ) from e
    finally:
        if storage is not None:
            storage.remove_session()
            engine = getattr(storage, "engine", None)
            if engine is not None:
                engine.dispose()
    runs: list[Run] = []
    for what, attr, params in trials:
        if not attr:
            notes.append(f"{what}: no {RUN_DIR_ATTR!r} user attribute (not monitored)")
            continue
        run = _load(_resolve_moved(Path(str(attr)), db.parent), params, notes, what)
        if run is not None:
            runs.append(run)
    return runs


def _optuna_trials(optuna: Any, storage: Any) -> list[tuple[str, Any, dict[str, Any]]]:
    """``(description, run folder attribute or None, params)`` of every trial of every study in ``storage``."""
    out = []
    for summary in optuna.get_all_study_summaries(storage, include_best_trial=False):
        study = optuna.load_study(study_name=summary.study_name, storage=storage)
        for t in study.get_trials(deepcopy=False):
            out.append((f"study {summary.study_name!r} trial {t.number}", t.user_attrs.get(RUN_DIR_ATTR), t.params))
    return out


def _root_reason(e: BaseException) -> str:
    """``Type: message`` of the innermost cause of ``e``, on one line (without SQLAlchemy's SQL and links)."""
    while e.__cause__ is not None:
        e = e.__cause__
    text = str(getattr(e, "orig", None) or e).split("\n")[0]
    return f"{type(getattr(e, 'orig', None) or e).__name__}: {' '.join(text.split())}"


def _resolve_moved(folder: Path, root: Path) -> Path:
    """``folder`` if it exists, else a folder of the same name under ``root`` (the sweep folder was moved)."""
    if (folder / "run.sqlite").is_file():
        return folder
    found = sorted(q.parent for q in root.rglob("run.sqlite") if q.parent.name == folder.name)
    return found[0] if found else folder
