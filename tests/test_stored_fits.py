"""The run store keeps the analyzer's fits (schema 2); reports draw them and never re-fit; old stores still open."""

from __future__ import annotations

import json
import sqlite3
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from wwmonitor.analyze import analyze_matrix
from wwmonitor.powerlaw import fit_powerlaw
from wwmonitor.records import ControlRecord, SnapshotResult
from wwmonitor.store import SCHEMA_VERSION, RunStore, load_run
from wwmonitor.store_format import encode_fits

LAYERS = {"heavy": (160, 80), "gauss": (120, 60)}


def _analysed(step: int) -> tuple[list, dict, dict]:
    rng = np.random.default_rng(step)
    lms = []
    for name, shape in LAYERS.items():
        W = rng.standard_t(2.5, shape) if name == "heavy" else rng.standard_normal(shape)
        lms.append(analyze_matrix(W, name, layer_type="Linear", keep_esd=True))
    return lms, {lm.name: lm.esd for lm in lms}, {lm.name: lm.fits for lm in lms}


def _write_run(folder: Path, steps=(0, 10)) -> dict:
    """A run store with the analyzer's results; returns {(layer, step): fits as analysed}."""
    st = RunStore(folder)
    st.set_meta({"name": folder.name, "run_id": folder.name, "config": {}})
    st.set_layers([(n, "Linear", s) for n, s in LAYERS.items()])
    fits = {}
    for step in steps:
        lms, esds, f = _analysed(step)
        st.write(SnapshotResult(step=step, epoch=None, time=time.time(), layers=lms, esds=esds, fits=f))
        fits.update({(n, step): v for n, v in f.items()})
    st.close()
    return fits


def _as_stored(fits: dict) -> dict:
    """``fits`` as plain JSON values (tuples -> lists), NaN-safe to compare by ``==`` through their text."""
    return json.loads(encode_fits(fits))


def _forbid_fitting(monkeypatch) -> None:
    """Every fit_powerlaw / fit_mp reachable from wwmonitor raises."""

    def boom(*a, **k):
        raise AssertionError("a fit function was called while building a report")

    for name, mod in list(sys.modules.items()):
        if name.startswith("wwmonitor") and mod is not None:
            for fn in ("fit_powerlaw", "fit_mp"):
                if hasattr(mod, fn):
                    monkeypatch.setattr(mod, fn, boom)


def test_store_keeps_the_analyzers_fits_bit_for_bit(tmp_path):
    fits = _write_run(tmp_path / "r")
    run = load_run(tmp_path / "r")
    assert run.schema_version == SCHEMA_VERSION == 3
    for (layer, step), f in fits.items():
        got = run.fits(layer, step)
        assert json.dumps(got, sort_keys=True) == json.dumps(_as_stored(f), sort_keys=True)
        for k in ("alpha", "xmin", "xmax", "D", "sigma"):
            assert got["powerlaw"][k] == f["powerlaw"][k]  # floats read back exactly
        for k in ("sigma2", "lambda_plus", "tw_margin", "ks"):
            assert got["mp"][k] == f["mp"][k] or (np.isnan(got["mp"][k]) and np.isnan(f["mp"][k]))
    assert run.fits("heavy", 999) is None


def test_sampled_ks_landscape_is_the_scan_at_those_candidates():
    rng = np.random.default_rng(3)
    W = rng.standard_t(2.5, (400, 200))
    lm = analyze_matrix(W, "w", keep_esd=True)
    pl = lm.fits["powerlaw"]
    xs, Ds = (np.asarray(v) for v in pl["ks_landscape"])
    assert 10 < xs.size <= 65 and np.all(np.diff(xs) > 0)
    assert xs[np.argmin(Ds)] == pl["xmin"] and Ds.min() == pytest.approx(pl["D"], rel=1e-12)
    full = fit_powerlaw(np.linalg.svd(W, compute_uv=False) ** 2, keep_landscape=True)
    fx, fD = full.ks_landscape
    per_lambda = W.shape[0]
    idx = np.searchsorted(fx / per_lambda, xs * (1 - 1e-12))
    np.testing.assert_allclose(Ds, fD[idx], rtol=1e-9)


def test_reports_draw_the_stored_fits_and_never_fit(tmp_path, monkeypatch):
    from wwmonitor.report import figures as F
    from wwmonitor.report.compare import write_comparison
    from wwmonitor.report.html import write_report

    fits = list(_write_run(tmp_path / "a").values()) + list(_write_run(tmp_path / "b", steps=(0, 20)).values())
    drawn = []
    for name in ("plot_esd_panel", "plot_esd", "plot_scree", "plot_ks_landscape"):
        orig = getattr(F, name)

        def spy(*a, _orig=orig, _name=name, **k):
            drawn.append((_name, k.get("fit"), k.get("mp")))
            return _orig(*a, **k)

        monkeypatch.setattr(F, name, spy)
    _forbid_fitting(monkeypatch)
    problems: list[str] = []
    write_report(tmp_path / "a", tmp_path / "rep", n_esd_steps=2, problems=problems)
    write_comparison([tmp_path / "a", tmp_path / "b"], tmp_path / "cmp", by_run=True, problems=problems)
    assert problems == []
    assert {n for n, _, _ in drawn} == {"plot_esd_panel", "plot_esd", "plot_scree", "plot_ks_landscape"}
    for name, pl, mp in drawn:  # every fit drawn is one the analyzer made, field for field
        assert pl is not None and pl.ks_landscape is not None, name
        match = [f for f in fits if f["powerlaw"]["alpha"] == pl.alpha]
        assert match, f"{name}: drawn alpha {pl.alpha} is not an analyzer fit"
        want = match[0]
        for k in ("xmin", "xmax", "D", "n_tail", "sigma", "num_pl_spikes"):
            assert getattr(pl, k) == want["powerlaw"][k], (name, k)
        np.testing.assert_array_equal(pl.ks_landscape[0], want["powerlaw"]["ks_landscape"][0])
        if mp is not None:
            for k in ("sigma2", "lambda_plus", "lambda_minus", "tw_margin", "bulk_fraction"):
                assert getattr(mp, k) == want["mp"][k], (name, k)


def _make_schema_1(folder: Path) -> None:
    """Turn a store into what wwmonitor wrote before fits were kept: no fits table, schema_version 1."""
    conn = sqlite3.connect(str(folder / "run.sqlite"))
    conn.execute("DROP TABLE fits")
    conn.execute("DROP TABLE control")
    conn.execute("UPDATE run_meta SET value='1' WHERE key='schema_version'")
    conn.commit()
    conn.close()


def test_an_old_store_without_fits_opens_reports_and_resumes(tmp_path, monkeypatch):
    from wwmonitor.report.html import write_report

    folder = tmp_path / "old"
    _write_run(folder)
    _make_schema_1(folder)
    run = load_run(folder)
    assert run.schema_version == 1 and run.steps == [0, 10] and run.fits("heavy", 10) is None
    assert run.esd("heavy", 10).dtype == np.float32
    _forbid_fitting(monkeypatch)
    problems: list[str] = []
    page = write_report(folder, tmp_path / "rep", problems=problems).read_text()
    assert problems == []  # not an error: said where a fit would be drawn
    assert "no power-law fit" in page and "run store schema version 1" in page and "does not re-fit" in page
    monkeypatch.undo()
    st = RunStore(folder)  # resuming migrates: the table is added, later snapshots keep their fits
    lms, esds, f = _analysed(20)
    st.write(SnapshotResult(step=20, epoch=None, time=time.time(), layers=lms, esds=esds, fits=f))
    st.close()
    run = load_run(folder)
    assert run.schema_version == 3 and run.fits("heavy", 10) is None
    assert run.fits("heavy", 20)["powerlaw"]["alpha"] == f["heavy"]["powerlaw"]["alpha"]


def test_a_schema_2_store_has_no_control_records_and_gets_the_table_when_resumed(tmp_path):
    folder = tmp_path / "v2"
    _write_run(folder, steps=(0,))
    conn = sqlite3.connect(str(folder / "run.sqlite"))
    conn.execute("DROP TABLE control")
    conn.execute("UPDATE run_meta SET value='2' WHERE key='schema_version'")
    conn.commit()
    conn.close()
    run = load_run(folder)
    assert run.schema_version == 2 and run.steps == [0] and run.control_records() == []
    rec = ControlRecord(
        step=3, layer="heavy", controller="TempBalance", quantity="lr", alpha=None, factor=1.0, value=0.1,
        base=0.1, source_step=0,
    )  # fmt: skip
    st = RunStore(folder)  # resuming migrates: the control table is added
    st.write_control([rec, ControlRecord(**{**rec.__dict__, "layer": "gauss", "alpha": 2.5, "factor": 1.5})])
    st.close()
    run = load_run(folder)
    assert run.schema_version == 3 and run.control_records()[1] == rec
    assert run.control_records()[0].alpha == 2.5 and run.control_records()[0].value == 0.1


def test_a_store_from_a_newer_wwmonitor_is_refused_with_a_clear_message(tmp_path):
    folder = tmp_path / "new"
    _write_run(folder, steps=(0,))
    conn = sqlite3.connect(str(folder / "run.sqlite"))
    conn.execute("UPDATE run_meta SET value='99' WHERE key='schema_version'")
    conn.commit()
    conn.close()
    with pytest.raises(ValueError, match="schema version 99 by a newer wwmonitor"):
        load_run(folder)
    with pytest.raises(ValueError, match="schema version 99 by a newer wwmonitor"):
        RunStore(folder)
