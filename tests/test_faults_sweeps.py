"""Sweep faults (issue 18): wrong arguments to the Optuna helpers, a finished trial, an Optuna storage that cannot
be read by ``wwmonitor compare``, and ``TuneReportSink.pump()`` outside a Ray Tune trial."""

from __future__ import annotations

import logging
import sqlite3
import threading
from pathlib import Path

import pytest

optuna = pytest.importorskip("optuna")
torch = pytest.importorskip("torch")

import wwmonitor  # noqa: E402
from wwmonitor.cli import main  # noqa: E402
from wwmonitor.integrations import optuna as wwoptuna  # noqa: E402

optuna.logging.set_verbosity(optuna.logging.WARNING)


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.ReLU(), torch.nn.Linear(64, 16))


@pytest.mark.parametrize("bad", [None, "trial", 3])
def test_trial_monitor_refuses_what_is_not_a_trial(tmp_path, bad):
    got = "None" if bad is None else type(bad).__name__
    with pytest.raises(TypeError, match=rf"trial_monitor: trial must be an optuna Trial .*got {got}$"):
        wwoptuna.trial_monitor(bad, _model(), run_dir=tmp_path)


def test_spectral_pruning_refuses_a_study_and_a_non_monitor(tmp_path):
    study = optuna.create_study()
    with pytest.raises(TypeError, match=r"SpectralPruning: trial must be an optuna Trial.*got Study \(a Study"):
        wwoptuna.SpectralPruning(study, None)
    trial = study.ask()
    with pytest.raises(TypeError, match=r"SpectralPruning: monitor must be a wwmonitor.Monitor.*got None$"):
        wwoptuna.SpectralPruning(trial, None)


def _threads() -> set[str]:
    return {t.name for t in threading.enumerate()}


def test_finished_trial_is_refused_before_a_monitor_exists(tmp_path):
    study = optuna.create_study(study_name="s")
    trial = study.ask()
    study.tell(trial, 1.0)
    before = _threads()
    with pytest.raises(ValueError, match=r"trial 0 has already finished \(state COMPLETE\)"):
        wwoptuna.trial_monitor(trial, _model(), run_dir=tmp_path)
    assert _threads() == before
    assert not any(tmp_path.iterdir())  # no run folder was created
    frozen = study.trials[0]  # a FrozenTrial of a finished trial too
    with pytest.raises(ValueError, match="already finished"):
        wwoptuna.trial_monitor(frozen, _model(), run_dir=tmp_path)


class _TrialThatCannotBeMarked:
    """A trial look-alike whose storage refuses the user attribute (as a trial finished meanwhile would)."""

    number = 5
    params: dict = {}
    study = None

    def report(self, value: float, step: int) -> None: ...

    def should_prune(self) -> bool:
        return False

    def set_user_attr(self, key: str, value: object) -> None:
        raise RuntimeError("storage refused the attribute")


def test_monitor_is_closed_when_marking_the_trial_fails(tmp_path):
    before = _threads()
    with pytest.raises(RuntimeError, match="storage refused"):
        wwoptuna.trial_monitor(_TrialThatCannotBeMarked(), _model(), run_dir=tmp_path, run_name="r")
    assert _threads() == before  # no monitor thread left running
    with wwmonitor.Monitor(_model(), tmp_path, run_name="r") as mon:  # the run lock was released
        assert mon.snapshot(step=10, epoch=0)


def _study_db(folder: Path) -> Path:
    folder.mkdir()
    db = folder / "study.db"
    storage = optuna.storages.RDBStorage(f"sqlite:///{db}")
    study = optuna.create_study(study_name="s", storage=storage)
    for i in range(3):
        t = study.ask()
        t.suggest_float("x", 0, 1)
        t.set_user_attr("wwmonitor_run_dir", str(folder / f"run{i}"))
        study.tell(t, 1.0)
    storage.engine.dispose()
    return db


def _one_line_exit_2(capsys, target: Path, *needles: str) -> str:
    assert main(["compare", str(target.parent), "-o", str(target.parent.parent / "out")]) == 2
    err = [ln for ln in capsys.readouterr().err.strip().splitlines() if "left out" not in ln]
    assert len(err) == 1 and "Traceback" not in err[0], err
    assert str(target) in err[0]
    for n in needles:
        assert n in err[0]
    return err[0]


def test_compare_on_a_corrupt_optuna_storage(tmp_path, capsys):
    db = _study_db(tmp_path / "study")
    with sqlite3.connect(db) as conn:  # the page of a table read when the storage opens
        (root,) = conn.execute("SELECT rootpage FROM sqlite_master WHERE name = 'alembic_version'").fetchone()
    conn.close()
    raw = bytearray(db.read_bytes())
    page = int.from_bytes(raw[16:18], "big")
    raw[(root - 1) * page : root * page] = b"\xa5" * page  # SQLite numbers pages from 1
    db.write_bytes(bytes(raw))
    _one_line_exit_2(capsys, db, "cannot be read as an Optuna storage", "malformed")


def test_compare_on_an_optuna_schema_this_optuna_does_not_know(tmp_path, capsys):
    db = _study_db(tmp_path / "study")
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE alembic_version SET version_num = 'v99.0.0.a'")
    conn.close()
    _one_line_exit_2(capsys, db, "cannot be read as an Optuna storage", "another Optuna version")


def test_compare_on_an_unreadable_sqlite_header(tmp_path, capsys):
    db = _study_db(tmp_path / "study")
    raw = bytearray(db.read_bytes())
    raw[100:4096] = b"\xa5" * (4096 - 100)  # the schema page: SQLite's own header survives
    db.write_bytes(bytes(raw))
    _one_line_exit_2(capsys, db, "an SQLite file whose tables cannot be read")


def test_compare_still_lists_trials_left_out_when_none_is_found(tmp_path, capsys):
    _study_db(tmp_path / "study")  # the trials' run folders do not exist
    assert main(["compare", str(tmp_path / "study"), "-o", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.count("left out: study 's' trial") == 3


def test_tune_report_sink_pump_outside_a_trial_reports_nothing(tmp_path, caplog):
    pytest.importorskip("ray")
    from wwmonitor.integrations import ray_tune as wwtune

    sink = wwtune.TuneReportSink()
    with wwmonitor.Monitor(_model(), tmp_path, run_name="r", sinks=[sink]) as mon:
        assert mon.snapshot(step=10, epoch=0)
        with caplog.at_level(logging.WARNING, logger="wwmonitor"):
            assert sink.pump(mon) == 0
            assert sink.pump(mon) == 0
    assert sink.reported == 0 and sink.pending == 1  # kept, not lost
    assert sink.pumps_outside_trial == 2
    warned = [r for r in caplog.records if "outside a Ray Tune trial" in r.getMessage()]
    assert len(warned) == 1  # once, not per call
