"""Sweeps on Ray Tune and Optuna: reported spectral metrics, the alert stopper, the pruner, discovery by
``wwmonitor compare``, the ranking against a validation metric, and ``wwmonitor demo --backend ray``.

One local Ray (2 CPUs) serves every Ray test (module fixture): the examples run as scripts that connect to it
through ``RAY_ADDRESS``, the demo's Ray backend uses it in this process.
"""

from __future__ import annotations

import json
import math
import os
import sqlite3
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import spearmanr

pytest.importorskip("torch")
pytest.importorskip("lightning")
pytest.importorskip("sklearn")
ray = pytest.importorskip("ray")
optuna = pytest.importorskip("optuna")

import wwmonitor  # noqa: E402
from wwmonitor.alerts import AlertRules  # noqa: E402
from wwmonitor.cli import main as cli_main  # noqa: E402
from wwmonitor.integrations import discover_runs, flat_metrics, record_eval_metrics, ww_metrics  # noqa: E402
from wwmonitor.integrations import ray_tune as wwtune  # noqa: E402
from wwmonitor.integrations.discovery import RUN_DIR_ATTR  # noqa: E402
from wwmonitor.phases import PHASES  # noqa: E402
from wwmonitor.report.compare import ranking_frame, ranking_picks, ranking_spearman  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_blas_thread")

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
ENV = {
    **os.environ,
    "WANDB_MODE": "offline",
    "WANDB_SILENT": "true",
    "HF_HUB_OFFLINE": "1",
    "MPLBACKEND": "Agg",
    "PYTHONWARNINGS": "ignore",
}


@pytest.fixture(scope="module")
def ray_address():
    """One local Ray for the module (start-up takes ~10 s); its GCS address for the example scripts."""
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()


def _monitor(tmp_path, **kw):
    rng = np.random.default_rng(0)
    mats = {"a": rng.standard_normal((300, 120)), "b": rng.standard_normal((200, 100))}
    return wwmonitor.Monitor(mats, tmp_path / "runs", run_name="m", esd_every_n_epochs=0, **kw), mats


# --- the building blocks (no Ray cluster) ---------------------------------------------------------------------


def test_flat_metrics_keys_stopper_and_deferred_sink(tmp_path):
    # a layer above alpha 0.5 fires alpha_high at once (warmup 0); stop_on makes it a stopping alert
    rules = AlertRules(
        rules=["alpha_high"], alpha_low=0.1, alpha_high=0.5, warmup=0, stop_on=["alpha_high"], log_alerts=False
    )
    reported: list[dict] = []
    sink = wwtune.TuneReportSink(extra={"val_acc": 0.5}, report_fn=reported.append)
    mon, _ = _monitor(tmp_path, alerts=rules, sinks=[sink])
    with mon:
        assert math.isnan(ww_metrics(mon, flush=False)["ww/mean_alpha"])  # nothing analysed yet: NaN, not missing
        mon.snapshot(step=10, epoch=0)
        m = ww_metrics(mon)
        assert sink.pump(mon) == 1 and sink.pending == 0
        res = mon.results[-1]
    assert m["ww/step"] == 10 and m["ww/epoch"] == 0
    assert m["ww/mean_alpha"] == pytest.approx(res.summary["mean_alpha"])
    assert m["ww/mean_stable_rank"] == pytest.approx(res.summary["mean_stable_rank"])
    assert m["ww/mean_alpha_weighted"] == pytest.approx(res.summary["mean_alpha_weighted"])
    assert sum(m[f"ww/phase_count/{p}"] for p in PHASES) == sum(lm.phase is not None for lm in res.layers)
    assert m["ww/alerts_stop"] == 1 and m["ww/alert/alpha_high"] == 2  # both layers
    assert reported and reported[0]["val_acc"] == 0.5 and reported[0]["ww/mean_alpha"] == m["ww/mean_alpha"]
    # the stopper: on the stop flag by default, on the given rules otherwise
    assert wwtune.WWAlertStopper()("t1", m) is True
    assert wwtune.WWAlertStopper(rules=["rank_collapse"])("t1", m) is False
    only = wwtune.WWAlertStopper(rules=["alpha_high"], stop_all=True)
    assert only("t2", m) is True and only.stopped == {"t2": ["alpha_high"]} and only.stop_all()
    quiet = flat_metrics(res, [])
    assert quiet["ww/alerts_stop"] == 0 and not any(k.startswith("ww/alert/") for k in quiet)
    assert wwtune.WWAlertStopper()("t3", quiet) is False


def test_report_merges_and_records_eval_metrics_in_the_store(tmp_path):
    mon, _ = _monitor(tmp_path)
    calls: list[dict] = []
    with mon:
        mon.snapshot(step=5, epoch=0)
        out = wwtune.report({"val_acc": 0.75, "loss": 1.0}, mon, report_fn=calls.append)
    assert calls == [out] and out["val_acc"] == 0.75 and "ww/mean_alpha" in out
    record_eval_metrics(mon, {"val_loss": 0.3})  # the monitor is closed now: the store is opened again
    record_eval_metrics(mon.run_dir, {"val_acc": 0.8})  # a later value replaces, other names are kept
    con = sqlite3.connect(mon.run_dir / "run.sqlite")
    stored = json.loads(con.execute("SELECT value FROM run_meta WHERE key='eval_metrics'").fetchone()[0])
    con.close()
    assert stored == {"val_acc": 0.8, "val_loss": 0.3}
    with pytest.raises(TypeError, match="number"):
        record_eval_metrics(mon.run_dir, {"val_acc": "high"})
    with pytest.raises(FileNotFoundError):
        record_eval_metrics(tmp_path / "nowhere", {"val_acc": 1.0})


def test_lightning_tune_callback_reports_once_per_epoch(tmp_path):
    """TuneReportCallback: one report per epoch with the trainer's metrics and the spectra of that epoch."""
    import lightning.pytorch as L
    import torch
    from torch.nn import functional as F
    from torch.utils.data import DataLoader, TensorDataset

    class Tiny(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.fc1, self.fc2 = torch.nn.Linear(64, 96), torch.nn.Linear(96, 10)

        def forward(self, x):
            return self.fc2(torch.relu(self.fc1(x)))

        def training_step(self, b, i):
            return F.cross_entropy(self(b[0]), b[1])

        def validation_step(self, b, i):
            self.log("val_acc", (self(b[0]).argmax(1) == b[1]).float().mean())

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(256, 64, generator=g), torch.randint(0, 10, (256,), generator=g)
    calls: list[dict] = []
    cb = wwtune.TuneReportCallback(
        run_dir=str(tmp_path / "runs"),
        run_name="trial",
        report_fn=calls.append,
        config={"batch_size": 32},
        loggers=False,
        esd_every_n_epochs=0,
        alerts=None,
    )
    trainer = L.Trainer(
        max_epochs=2,
        logger=False,
        callbacks=[cb],
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        num_sanity_val_steps=0,
    )
    trainer.fit(Tiny(), DataLoader(TensorDataset(x, y), batch_size=32), DataLoader(TensorDataset(x, y), batch_size=256))
    assert [c["ww/epoch"] for c in calls] == [0, 1]
    assert all("val_acc" in c and math.isfinite(c["ww/mean_alpha"]) for c in calls)
    run = wwmonitor.load_run(cb.monitor.run_dir)
    assert run.summary["mean_alpha"].iloc[-1] == pytest.approx(calls[-1]["ww/mean_alpha"])
    con = sqlite3.connect(run.path / "run.sqlite")
    stored = json.loads(con.execute("SELECT value FROM run_meta WHERE key='eval_metrics'").fetchone()[0])
    con.close()
    assert stored["val_acc"] == pytest.approx(calls[-1]["val_acc"])


def test_ranking_section_per_seed_equals_scipy(tmp_path, capsys):
    """Six runs (two seeds) with a recorded val_acc: the ranking per seed and over all runs, equal to scipy on the
    stored values; a validation metric that no run recorded is one error line."""
    rng = np.random.default_rng(1)
    dirs = []
    for i in range(6):
        # heavier-tailed (scaled rows) for some runs: distinct mean alphas
        mats = {
            "a": rng.standard_normal((300, 120)) * rng.pareto(1.5 + i, size=(300, 1)),
            "b": rng.standard_normal((200, 100)),
        }
        with wwmonitor.Monitor(
            mats,
            tmp_path / "runs",
            run_name=f"r{i}",
            esd_every_n_epochs=0,
            config={"width": 8 * (i // 2 + 1), "seed": i % 2},
        ) as mon:
            mon.snapshot(step=1, epoch=0)
        record_eval_metrics(mon, {"val_acc": 0.5 + 0.07 * ((i * 5) % 6), "train_acc": 1.0})
        dirs.append(mon.run_dir)
    out = tmp_path / "cmp"
    assert cli_main(["compare", *map(str, dirs), "-o", str(out)]) == 0
    html = (out / "index.html").read_text()
    assert 'id="ranking"' in html and "best by val_acc" in html and "seed = 0" in html
    runs = [wwmonitor.load_run(d) for d in dirs]
    stored = np.array(
        [
            [
                json.loads(
                    sqlite3.connect(r.path / "run.sqlite")
                    .execute("SELECT value FROM run_meta WHERE key='eval_metrics'")
                    .fetchone()[0]
                )["val_acc"],
                r.summary["mean_alpha"].iloc[-1],
            ]
            for r in runs
        ]
    )
    rows = {
        (g, m): float(rho)
        for g, m, n, rho in (line.split(",") for line in (out / "ranking.csv").read_text().splitlines()[1:])
    }
    seeds = np.array([r.config["seed"] for r in runs])
    for label, sel in (("seed = 0", seeds == 0), ("seed = 1", seeds == 1), ("all runs", seeds >= 0)):
        expected = spearmanr(stored[sel, 1], stored[sel, 0]).statistic
        assert rows[(label, "mean_alpha")] == pytest.approx(expected, abs=1e-12)
    # without groups: one "all runs" group; no validation metric: nothing to rank
    flat = ranking_spearman(ranking_frame(runs))
    assert set(flat["group"]) == {"all runs"}
    assert flat.set_index("metric").loc["mean_alpha", "rho"] == pytest.approx(rows[("all runs", "mean_alpha")])
    assert len(ranking_frame(runs, val_metric=None)) == 0
    capsys.readouterr()
    assert cli_main(["compare", *map(str, dirs), "--val-metric", "val_f1", "-o", str(tmp_path / "c")]) == 2
    assert "no run recorded the validation metric 'val_f1' (recorded: train_acc, val_acc)" in capsys.readouterr().err
    assert not (tmp_path / "c").exists()  # refused before anything was written


# --- helpers for the end-to-end tests ---------------------------------------------------------------------------


def _run(args: list[str], env: dict, timeout: float) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env, timeout=timeout, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def _stored(run) -> tuple[float, float]:
    """(val_acc, final mean_alpha) read straight from the run's SQLite file."""
    con = sqlite3.connect(run.path / "run.sqlite")
    try:
        val = json.loads(con.execute("SELECT value FROM run_meta WHERE key='eval_metrics'").fetchone()[0])["val_acc"]
        alpha = con.execute(
            "SELECT value FROM metrics WHERE layer='__model__' AND metric='mean_alpha' ORDER BY step DESC LIMIT 1"
        ).fetchone()[0]
    finally:
        con.close()
    return float(val), float(alpha)


def _check_compare(sweep_dir: Path, out: Path) -> list:
    """``wwmonitor compare SWEEP_DIR`` writes the sweep report on the batch size with the ranking section, whose
    Spearman values are scipy's on the values stored in the runs."""
    assert cli_main(["compare", str(sweep_dir), "-o", str(out)]) == 0
    html = (out / "index.html").read_text()
    assert "swept batch_size" in html and 'id="ranking"' in html and "Ranking runs without test data" in html
    runs = discover_runs(sweep_dir)
    assert len(runs) >= 4 and all(isinstance(r.config["batch_size"], int) for r in runs)
    vals = np.array([_stored(r) for r in runs])
    expected = spearmanr(vals[:, 1], vals[:, 0]).statistic
    rows = [line.split(",") for line in (out / "ranking.csv").read_text().splitlines()[1:]]
    got = {(g, m): float(rho) for g, m, n, rho in rows}
    assert got[("all runs", "mean_alpha")] == pytest.approx(expected, abs=1e-12)
    assert f"{expected:+.2f}" in html
    # the Python API agrees, and the picks name the best run by validation
    frame = ranking_frame(runs)
    assert frame.attrs["val_metric"] == "val_acc" and len(frame) == len(runs)
    assert ranking_spearman(frame).set_index("metric").loc["mean_alpha", "rho"] == pytest.approx(expected)
    picks = ranking_picks(frame).set_index("metric")
    assert picks.loc["validation", "val"] == pytest.approx(vals[:, 0].max())
    assert picks.loc["mean_alpha", "value"] == pytest.approx(vals[:, 1].min())
    return runs


# --- Ray Tune ----------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_ray_tune_example_asha_and_stopper_then_compare(ray_address, tmp_path):
    out = tmp_path / "ray"
    epochs = 3
    proc = _run(
        [str(EXAMPLES / "ray_tune_sweep.py"), str(out), "--epochs", str(epochs)],
        {**ENV, "RAY_ADDRESS": ray_address},
        timeout=400,
    )
    assert "wwmonitor compare" in proc.stdout
    exp = out / "ww_batch_size_sweep"
    trials = sorted(d for d in exp.iterdir() if (d / "params.json").is_file())
    assert len(trials) == 4
    ended_early = 0
    for t in trials:
        rows = [json.loads(line) for line in (t / "result.json").read_text().splitlines() if line.strip()]
        assert rows and all(any("alpha" in k for k in r) for r in rows)
        assert all(
            k in rows[-1]
            for k in (
                "ww/mean_alpha",
                "ww/mean_alpha_weighted",
                "ww/mean_stable_rank",
                "ww/phase_count/heavy-tailed",
                "ww/alerts_stop",
                "val_acc",
            )
        )
        # WWAlertStopper: a trial whose report carries ww/alerts_stop = 1 gets no further iteration
        stops = [i for i, r in enumerate(rows) if r["ww/alerts_stop"] == 1]
        assert not stops or stops[0] == len(rows) - 1
        ended_early += rows[-1]["training_iteration"] < epochs
        assert list(t.glob("wwmonitor/*/run.sqlite"))  # the run store lives in the trial's folder
    assert ended_early >= 1  # ASHA (on ww/mean_alpha) or the stopper (on ww/alerts_stop) stopped a trial
    runs = _check_compare(out, tmp_path / "ray-report")
    assert discover_runs(exp) and {r.name for r in discover_runs(exp)} == {r.name for r in runs}

    class Grid(list):  # what discover_runs reads of a ray.tune.ResultGrid: experiment_path, each result's path/config
        experiment_path = str(exp)

    grid = Grid(types.SimpleNamespace(path=str(t), config=json.loads((t / "params.json").read_text())) for t in trials)
    assert sorted(r.config["batch_size"] for r in discover_runs(grid)) == [16, 32, 64, 128]


@pytest.mark.slow
def test_demo_ray_backend(ray_address, tmp_path):
    from wwmonitor.demo import DemoConfig, run_demo

    with pytest.raises(ValueError, match="backend"):
        DemoConfig(backend="dask")
    with pytest.raises(ValueError, match="address"):
        DemoConfig(address="auto")
    from wwmonitor.cli import build_parser

    args = build_parser().parse_args(["demo", "--backend", "ray", "--address", "auto"])
    assert (args.backend, args.address) == ("ray", "auto")
    assert build_parser().parse_args(["demo"]).backend == "local"
    lines: list[str] = []
    res = run_demo(
        DemoConfig(
            out=str(tmp_path / "demo"),
            epochs=1,
            batch_sizes=(128, 256),
            seeds=(0,),
            backend="ray",
            progress=False,
            report=False,
        ),
        echo=lines.append,
    )
    assert ray.is_initialized()  # the fixture's Ray was used, not shut down
    assert [r["batch_size"] for r in res.runs] == [128, 256]
    for r in res.runs:
        run = wwmonitor.load_run(r["run_dir"])
        assert run.steps and _stored(run)[0] == pytest.approx(r["val_acc"])
    summary = json.loads((tmp_path / "demo" / "summary.json").read_text())
    assert {(d["group"], d["metric"]) for d in summary["val_ranking"]} >= {("seed = 0", "mean_alpha")}
    assert any("with val_acc" in line for line in lines)


# --- Optuna ------------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_optuna_example_pruner_then_compare(tmp_path):
    out = tmp_path / "optuna"
    _run([str(EXAMPLES / "optuna_sweep.py"), str(out), "--epochs", "3"], ENV, timeout=400)
    study = optuna.load_study(study_name="ww-batch-size", storage=f"sqlite:///{out / 'study.db'}")
    trials = study.get_trials(deepcopy=False)
    assert len(trials) == 4
    states = {t.state for t in trials}
    assert optuna.trial.TrialState.PRUNED in states and optuna.trial.TrialState.COMPLETE in states
    for t in trials:
        run = wwmonitor.load_run(t.user_attrs[RUN_DIR_ATTR])
        assert run.config["batch_size"] == t.params["batch_size"]
        # the intermediate values are -mean_alpha (the study maximizes val_acc) of the snapshot of each epoch
        by_epoch = dict(zip(run.summary["epoch"], run.summary["mean_alpha"]))
        assert t.intermediate_values and all(v == pytest.approx(-by_epoch[e]) for e, v in t.intermediate_values.items())
    _check_compare(out, tmp_path / "optuna-report")
