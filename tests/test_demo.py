"""The demo: model shapes, configuration errors, and a reduced real sweep that must show the trend."""

from __future__ import annotations

import json

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("lightning")
pytest.importorskip("sklearn")

from wwmonitor.cli import build_parser  # noqa: E402
from wwmonitor.demo import DemoConfig, build_model, format_spearman, load_digits_split, run_demo  # noqa: E402


def test_micro_alexnet_shapes():
    xtr, ytr, xva, yva = load_digits_split()
    assert xtr.shape[1:] == (1, 8, 8) and len(xtr) + len(xva) == 1797
    assert abs(float(xtr.mean())) < 1e-4 and abs(float(xtr.std()) - 1.0) < 1e-3  # standardised
    m = build_model()
    assert m.fc1.in_features == 1024  # 64 channels x 4 x 4 after 2x2 pooling of the padded 8x8 conv
    assert (m.fc1.out_features, m.fc2.out_features, m.fc3.out_features) == (384, 192, 10)
    assert m(xtr[:5]).shape == (5, 10)


def test_config_validation_and_cli():
    with pytest.raises(ValueError, match="epochs"):
        DemoConfig(epochs=0)
    with pytest.raises(ValueError, match="batch_sizes"):
        DemoConfig(batch_sizes=(2, 0))
    with pytest.raises(ValueError, match="duplicates"):
        DemoConfig(batch_sizes=(2, 2))
    with pytest.raises(ValueError, match="lr_scaling"):
        DemoConfig(lr_scaling="sqrt")
    cfg = DemoConfig(lr=0.05, lr_scaling="linear", lr_ref_batch=32)
    assert cfg.lr_for(64) == pytest.approx(0.1) and DemoConfig().lr_for(64) == 0.05
    args = build_parser().parse_args(["demo", "--epochs", "2", "--batch-sizes", "4,16", "--seeds", "1"])
    assert args.epochs == 2 and args.batch_sizes == (4, 16) and args.seeds == (1,)
    with pytest.raises(SystemExit):
        build_parser().parse_args(["demo", "--batch-sizes", "four"])


def _global_state() -> dict:
    """What a library call must not change behind its caller's back: the warning filters, the level of every
    logger that exists, and torch's thread count."""
    import logging
    import warnings

    loggers = {name: lg.level for name, lg in logging.root.manager.loggerDict.items() if isinstance(lg, logging.Logger)}
    return {
        "filters": list(warnings.filters),
        "showwarning": warnings.showwarning,
        "root": logging.root.level,
        "loggers": loggers,
        "threads": torch.get_num_threads(),
    }


@pytest.mark.slow
def test_demo_leaves_global_warning_filters_and_logger_levels_alone(tmp_path):
    """run_demo in this process (workers=1) quiets Lightning only while it runs."""
    import logging
    import warnings

    import lightning.pytorch  # noqa: F401  (sets its loggers' levels on import: that is Lightning's business)

    import wwmonitor.demo

    warnings.filterwarnings("default", message="a caller's own filter")
    logging.getLogger("lightning.pytorch").setLevel(logging.DEBUG)  # a caller who wants Lightning's chatter
    torch.set_num_threads(2)
    before = _global_state()
    cfg = DemoConfig(
        out=str(tmp_path / "demo"),
        epochs=1,
        batch_sizes=(256, 512),
        seeds=(0,),
        workers=1,
        progress=False,
        report=False,
    )
    res = wwmonitor.demo.run_demo(cfg, echo=lambda s: None)
    assert [r["batch_size"] for r in res.runs] == [256, 512]
    after = _global_state()
    assert after["filters"] == before["filters"]
    assert after["showwarning"] is before["showwarning"]
    assert after["root"] == before["root"]
    assert {k: v for k, v in after["loggers"].items() if k in before["loggers"]} == before["loggers"]
    assert logging.getLogger("lightning.pytorch").level == logging.DEBUG
    assert after["threads"] == 2


def test_epoch_ticker_reports_a_broken_progress_pipe_once():
    from wwmonitor.demo.training import _EpochTicker

    class Broken:
        def put(self, n):
            raise BrokenPipeError("progress pipe closed")

    ticker = _EpochTicker(Broken())
    with pytest.warns(RuntimeWarning, match="progress.*BrokenPipeError.*training continues") as rec:
        ticker.on_train_epoch_end(None, None)  # never raises: training goes on
        ticker.on_train_epoch_end(None, None)
    assert len([w for w in rec if issubclass(w.category, RuntimeWarning)]) == 1


def test_drain_sums_the_queue_and_surfaces_a_broken_queue():
    import queue

    from wwmonitor.demo.sweep import _drain

    class Bar:
        n = 0

        def update(self, k):
            self.n += k

    q = queue.Queue()
    for _ in range(5):
        q.put(1)
    bar = Bar()
    _drain(q, bar)
    assert bar.n == 5 and q.empty()

    class BrokenQueue:
        def get_nowait(self):
            raise EOFError("manager gone")

        def empty(self):
            return False

    with pytest.raises(EOFError, match="manager gone"):
        _drain(BrokenQueue(), Bar())


@pytest.mark.slow
def test_reduced_demo_shows_the_batch_size_trend(tmp_path):
    """3 batch sizes x 1 seed x 3 epochs with the Lightning callback: smaller batch -> lower stable rank and
    MP soft rank and more spikes in FC1 (the full demo's finding, in miniature)."""
    cfg = DemoConfig(
        out=str(tmp_path / "demo"), epochs=3, batch_sizes=(8, 64, 512), seeds=(0,), workers=2, progress=False
    )
    res = run_demo(cfg, echo=lambda s: None)
    rho = res.spearman["0"]["net.fc1"]
    assert rho["stable_rank"] == 1.0 and rho["mp_softrank"] == 1.0
    assert rho["num_spikes"] < 0
    text = format_spearman(res.spearman)
    assert "net.fc1" in text and "+1.00" in text
    # run stores, TensorBoard logs, report, summary
    assert len(res.runs) == 3
    summary = json.loads((tmp_path / "demo" / "summary.json").read_text())
    assert summary["spearman"]["0"]["net.fc1"]["stable_rank"] == 1.0
    assert res.report == tmp_path.resolve() / "demo" / "report" / "index.html" and res.report.is_file()
    html = res.report.read_text()
    assert "temperature" in html and "lr / batch size" in html  # the background is in the report
    # and the findings are this run's: each measured trend with its rho, as computed from the run
    assert "What this sweep measured" in html
    assert {m: t["verdict"] for m, t in res.trends.items()} == {m: t["verdict"] for m, t in summary["trends"].items()}
    assert res.trends["stable_rank"]["n"] == 3
    for t in res.trends.values():
        if t["verdict"] != "not measurable":
            assert f"{t['rho']:+.2f} over {t['n']} batch sizes" in html
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    ea = EventAccumulator(str(tmp_path / "demo" / "tensorboard" / "bs0008_seed0"), size_guidance={"scalars": 0})
    ea.Reload()
    tags = ea.Tags()["scalars"]
    # alpha for the two FC layers the demo reports on; conv (64x1 slices) and FC3 (10 eigenvalues) have none
    assert sorted(t for t in tags if t.startswith("ww.alpha/")) == ["ww.alpha/net.fc1", "ww.alpha/net.fc2"]
    assert "val_acc" in tags
    import wwmonitor

    run = wwmonitor.load_run(tmp_path / "demo" / "runs" / "bs0008_seed0")
    assert run.config["batch_size"] == 8 and len(run.steps) == 3


# ---------------------------------------------------------------- examples

EXAMPLES = __import__("pathlib").Path(__file__).resolve().parents[1] / "examples"


def _run_example(name: str, args: list[str], cwd) -> str:
    import os
    import subprocess
    import sys

    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    r = subprocess.run(
        [sys.executable, str(EXAMPLES / name)] + args, cwd=cwd, capture_output=True, text=True, timeout=600, env=env
    )
    assert r.returncode == 0, f"{name} failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    return r.stdout


@pytest.mark.slow
def test_example_pytorch_monitor(tmp_path):
    out = _run_example("pytorch_monitor.py", ["--epochs", "2", "--out", "ex"], tmp_path)
    assert "report:" in out and (tmp_path / "ex" / "runs" / "pytorch-mlp" / "report" / "index.html").is_file()


@pytest.mark.slow
def test_example_lightning_callback(tmp_path):
    out = _run_example("lightning_callback.py", ["--epochs", "2", "--out", "ex"], tmp_path)
    assert "tensorboard --logdir" in out
    import wwmonitor

    assert len(wwmonitor.load_run(tmp_path / "ex" / "runs" / "lightning-mlp").steps) == 2


@pytest.mark.slow
def test_example_batch_size_sweep(tmp_path):
    out = _run_example("batch_size_sweep.py", ["--batch-sizes", "8,64,512", "--epochs", "2", "--out", "sw"], tmp_path)
    assert "Spearman vs batch size" in out
    assert (tmp_path / "sw" / "compare-constant" / "index.html").is_file()


@pytest.mark.slow
def test_example_lsa_powerlaw_rank(tmp_path):
    """The example's K values, recomputed here: K = #{λ >= xmin} of weightwatcher 0.7.7's power-law fit of the
    same TF-IDF spectrum, and the elbow as the point of the explained-variance curve farthest below its chord."""
    out = _run_example("lsa_powerlaw_rank.py", ["--max-docs", "600", "--out", "lsa"], tmp_path)
    import re
    import subprocess
    import sys

    import numpy as np
    from sklearn.feature_extraction.text import TfidfVectorizer

    from ww_reference import ww_fit

    # the corpus as a fresh process sees it, like the example's: which docstrings a module's namespace holds
    # depends on what that process imported before (lazy exports), so it is not rebuilt in this process
    code = (
        f"import json, sys, warnings; sys.path.insert(0, {str(EXAMPLES)!r}); warnings.simplefilter('ignore'); "
        "from lsa_powerlaw_rank import docstring_corpus; print(json.dumps(docstring_corpus(600)))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    docs = json.loads(proc.stdout.strip().splitlines()[-1])
    # the example's vectoriser settings
    A = (
        TfidfVectorizer(
            min_df=3, max_df=0.5, stop_words="english", token_pattern=r"(?u)\b[a-zA-Z]{3,}\b", sublinear_tf=True
        )
        .fit_transform(docs)
        .toarray()
    )
    assert f"corpus: {A.shape[0]} docstrings, vocabulary {A.shape[1]} terms" in out  # the same corpus
    ev = np.linalg.eigvalsh(A @ A.T)  # the non-zero eigenvalues of AᵀA
    k_ref = ww_fit(ev)["num_pl_spikes"]
    y = np.sort(ev[ev > 0])[::-1]
    y = y / y.sum()
    xn = np.arange(y.size) / (y.size - 1)
    yn = (y - y.min()) / (y.max() - y.min())
    k_elbow_ref = int(np.argmax(1.0 - xn - yn)) + 1

    k_pl = int(re.search(r"power-law rank: K = (\d+)", out).group(1))
    k_elbow = int(re.search(r"elbow: K = (\d+)", out).group(1))
    assert k_pl == k_ref
    assert k_elbow == k_elbow_ref
    assert k_elbow < k_pl  # the elbow keeps fewer components than the power-law tail
    assert (tmp_path / "lsa" / "lsa_rank.png").is_file()


def _sweep_table(alpha_by_bs, layers=("net.fc1", "net.fc2"), seeds=(0, 1)):
    """A final-metrics table as the sweep makes it: one row per (run, layer)."""
    import pandas as pd

    rows = []
    for bs, a in alpha_by_bs.items():
        for s in seeds:
            for i, layer in enumerate(layers):
                rows.append(
                    {
                        "batch_size": bs,
                        "seed": s,
                        "layer": layer,
                        "alpha": a + 0.01 * i,
                        "stable_rank": 10.0,
                        "mp_softrank": 0.1 * bs,
                        "num_spikes": 100 - bs,
                    }
                )
        rows.append({"batch_size": bs, "seed": 0, "layer": "net.fc3", "alpha": 99.0 - bs})  # not a reported layer
    return pd.DataFrame(rows)


def test_demo_prose_states_what_the_run_measured():
    """The report's findings are computed from the run: the trend present, absent or reversed, with its rho."""
    from wwmonitor.demo import DemoConfig, demo_notes_html, format_trends, measure_trends

    present = measure_trends(_sweep_table({2: 2.5, 8: 3.0, 32: 3.7, 128: 4.6}))
    assert present["alpha"]["verdict"] == "present" and present["alpha"]["rho"] == pytest.approx(1.0)
    assert present["alpha"]["n"] == 4 and present["alpha"]["first"] == pytest.approx(2.505)
    assert present["mp_softrank"]["verdict"] == "present" and present["num_spikes"]["verdict"] == "present"
    assert present["stable_rank"]["verdict"] == "not measurable"  # constant
    flat = measure_trends(_sweep_table({2: 3.0, 8: 3.2, 32: 2.9, 128: 3.1}))
    assert flat["alpha"]["verdict"] == "absent"
    reversed_ = measure_trends(_sweep_table({2: 5.0, 8: 4.0, 32: 3.0, 128: 2.0}))
    assert reversed_["alpha"]["verdict"] == "reversed" and reversed_["alpha"]["rho"] == pytest.approx(-1.0)
    two = measure_trends(_sweep_table({2: 2.0, 8: 3.0}))
    assert two["alpha"]["verdict"] == "not measurable"

    cfg = DemoConfig(out="unused", batch_sizes=(2, 8, 32, 128), seeds=(0, 1), epochs=2)
    runs = [{"batch_size": b, "steps": 1, "train_acc": 0.9, "val_acc": 0.8} for b in (2, 8, 32, 128)]
    html_present = demo_notes_html(cfg, runs, {}, present)
    assert "This run reproduces the finding of Martin &amp; Mahoney" in html_present
    assert "+1.00 over 4 batch sizes" in html_present
    html_flat = demo_notes_html(cfg, runs, {}, flat)
    assert "This run does not show the finding" in html_flat and "no trend in this run" in html_flat
    assert "reproduces" not in html_flat
    assert "reversed in this run" in demo_notes_html(cfg, runs, {}, reversed_)
    assert "alpha: no trend in this run" in format_trends(flat)
