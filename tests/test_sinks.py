"""TensorBoard, CSV and W&B sinks on SnapshotResults built from real analyze_matrix outputs."""

from __future__ import annotations

import glob
import os
import subprocess
import sys
import textwrap
import time
import types

import numpy as np
import pandas as pd
import pytest

import wwmonitor
from wwmonitor.records import Alert, SnapshotResult
from wwmonitor.sinks.csv import CSVSink
from wwmonitor.sinks.tensorboard import EventWriter, TensorBoardSink

from _wwcb_helpers import tb_accumulator


def _summary(layers):
    alphas = [lm.alpha for lm in layers if lm.alpha is not None]
    return {"mean_alpha": float(np.mean(alphas))} if alphas else {}


def _results(n: int = 3, esd_every: int = 1) -> list[SnapshotResult]:
    """Results as the dispatcher hands them to sinks: ESD figures drawn by the renderer stage."""
    from wwmonitor.monitor.render import Renderer

    renderer = Renderer(esd_every)
    rng = np.random.default_rng(0)
    out = []
    for e in range(n):
        mats = {
            "enc.fc1": rng.standard_normal((200, 100)).astype(np.float32),
            "enc.fc2": rng.standard_t(2.5, (300, 120)).astype(np.float32),
            "tiny": rng.standard_normal((20, 10)).astype(np.float32),
        }
        layers = [wwmonitor.analyze_matrix(W, k, keep_esd=True) for k, W in mats.items()]
        esds = {lm.name: lm.esd for lm in layers}
        fits = {lm.name: lm.fits for lm in layers if lm.fits}
        alerts = (
            [Alert(step=10 * e, epoch=e, rule="alpha_low", severity="warning", message="m", layer="enc.fc2")]
            if e == 1
            else []
        )
        out.append(
            SnapshotResult(
                step=10 * e,
                epoch=e,
                time=time.time(),
                layers=layers,
                esds=esds,
                fits=fits,
                summary=_summary(layers),
                alerts=alerts,
            )
        )
        renderer.render(out[-1])
    return out


@pytest.mark.parametrize("writer", [pytest.param("torch", marks=pytest.mark.slow), "tensorboard-only"])
def test_tensorboard_sink_tags_steps_images_text(tmp_path, writer):
    if writer == "torch":
        pytest.importorskip("torch")
        sink = TensorBoardSink(str(tmp_path))
    else:
        sink = TensorBoardSink(EventWriter(tmp_path), close_writer=True)
    res = _results(esd_every=2)
    for r in res:
        sink.write(r)
    sink.close()
    ea = tb_accumulator(str(tmp_path))
    tags = ea.Tags()
    assert [e.step for e in ea.Scalars("ww.alpha/enc.fc1")] == [0, 10, 20]
    assert [e.value for e in ea.Scalars("ww.alpha/enc.fc2")] == pytest.approx([r.layers[1].alpha for r in res])
    assert "ww.alpha/tiny" not in tags["scalars"]  # too few eigenvalues: not logged, not 0 or -1
    assert [e.step for e in ea.Scalars("ww/mean_alpha")] == [0, 10, 20]
    imgs = ea.Images("ww.esd/enc.fc2")
    assert [i.step for i in imgs] == [0, 20]  # the renderer drew figures every 2 epochs
    assert imgs[0].encoded_image_string[:4] == b"\x89PNG" and imgs[0].width > 200
    phases = ea.Tensors("ww/phases/text_summary")
    assert len(phases) == 3 and b"enc.fc1" in phases[0].tensor_proto.string_val[0]
    alerts = ea.Tensors("ww/alerts/text_summary")
    assert [a.step for a in alerts] == [10] and b"alpha_low" in alerts[0].tensor_proto.string_val[0]


def test_tensorboard_sink_rejects_bad_writer():
    with pytest.raises(TypeError, match="writer"):
        TensorBoardSink(object())
    with pytest.raises(ValueError, match="metrics"):
        TensorBoardSink.__init__(object.__new__(TensorBoardSink), EventWriter.__new__(EventWriter), metrics=["alpah"])


def test_csv_sink_long_format_and_append(tmp_path):
    res = _results()
    sink = CSVSink(tmp_path)
    sink.write(res[0])
    sink.close()
    sink = CSVSink(tmp_path / "wwmonitor_metrics.csv")  # reopened: appends, no second header
    for r in res[1:]:
        sink.write(r)
    sink.close()
    df = pd.read_csv(tmp_path / "wwmonitor_metrics.csv")
    assert list(df.columns) == ["step", "epoch", "layer", "metric", "value"]
    assert sorted(df.step.unique()) == [0, 10, 20]
    assert not df.duplicated(["step", "layer", "metric"]).any()
    a = df[(df.layer == "enc.fc2") & (df.metric == "alpha")].value.tolist()
    assert a == pytest.approx([r.layers[1].alpha for r in res])
    assert "__model__" in set(df.layer)
    assert df[(df.layer == "tiny") & (df.metric == "alpha")].empty


@pytest.mark.slow
def test_wandb_sink_offline_run_file(tmp_path):
    """Direct and deferred delivery into an offline run; read the run file back."""
    pytest.importorskip("wandb")
    code = textwrap.dedent(
        f"""
        import sys, json, glob, os
        sys.path.insert(0, {os.path.dirname(__file__)!r})
        import wandb
        from test_sinks import _results
        from wwmonitor.sinks.wandb import WandbSink
        run = wandb.init(project="t", dir={str(tmp_path)!r}, mode="offline")
        direct = WandbSink(run, step_metric="ww/step")
        res = _results()
        direct.write(res[0])
        deferred = WandbSink(run, step_metric="ww/step", deliver="deferred")
        for r in res[1:]:
            deferred.write(r)
        assert deferred.pending == 2 and direct.rows_logged == 1
        assert deferred.pump() == 2 and deferred.pending == 0
        from wwmonitor.records import ControlRecord
        direct.write_control([ControlRecord(step=25, layer="enc.fc1", controller="TempBalance", quantity="lr",
                                            alpha=2.5, factor=1.5, value=0.15, base=0.1, source_step=20)])
        wandb.finish()
        print(json.dumps({{"alerts": deferred.alerts_sent}}))
        """
    )
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true", "WANDB_DIR": str(tmp_path)}
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    from _wwcb_helpers import wandb_history

    run_dir = glob.glob(str(tmp_path / "wandb" / "offline-run-*"))[0]
    rows, alerts = wandb_history(run_dir)
    ww_rows = [r for r in rows if "ww/step" in r and "ww_control/lr/enc.fc1" not in r]
    assert [int(r["ww/step"]) for r in ww_rows] == [0, 10, 20]
    ctl = [r for r in rows if "ww_control/lr/enc.fc1" in r]  # a controller's assignment, at its step
    assert [(int(r["ww/step"]), float(r["ww_control/lr_factor/enc.fc1"])) for r in ctl] == [(25, 1.5)]
    assert all("ww.alpha/enc.fc1" in r and "ww/layers/path" in r for r in ww_rows)
    assert len(glob.glob(os.path.join(run_dir, "files", "media", "images", "ww.esd", "*.png"))) == 9
    assert len(glob.glob(os.path.join(run_dir, "files", "media", "table", "ww", "*.table.json"))) == 3
    assert [(a.title, a.level) for a in alerts] == [("wwmonitor alpha_low enc.fc2", "WARN")]


def test_a_bad_image_loses_only_that_image_in_tensorboard(tmp_path):
    res = _results(n=1)[0]
    res.figures["enc.fc1"] = b"not a png"
    sink = TensorBoardSink(EventWriter(tmp_path), close_writer=True)
    with pytest.raises(RuntimeError, match=r"1 ESD image\(s\) not written \(enc.fc1\)"):
        sink.write(res)
    sink.close()
    ea = tb_accumulator(str(tmp_path))
    assert [e.step for e in ea.Scalars("ww.alpha/enc.fc2")] == [0]  # the scalars of the row were written
    assert "ww.esd/enc.fc2" in ea.Tags()["images"] and "ww.esd/enc.fc1" not in ea.Tags()["images"]
    assert len(ea.Tensors("ww/phases/text_summary")) == 1


def test_sinks_only_write_figures_they_are_given(tmp_path):
    res = _results(n=1)[0]
    res.figures.clear()  # the renderer drew nothing for this snapshot
    sink = TensorBoardSink(EventWriter(tmp_path), close_writer=True)
    sink.write(res)
    sink.close()
    assert tb_accumulator(str(tmp_path)).Tags()["images"] == []
    assert TensorBoardSink(EventWriter(tmp_path / "b"), images=False, close_writer=True).wants_figures is False


class _HangingRun:
    """A wandb-run stand-in whose ``log`` blocks until released; records the calling threads."""

    def __init__(self) -> None:
        import threading

        self.release = threading.Event()
        self.log_threads: list[str] = []
        self.config = types.SimpleNamespace(update=lambda *a, **k: None)
        self.summary: dict = {}

    def define_metric(self, *a, **k) -> None:
        pass

    def log(self, row: dict) -> None:
        import threading

        self.log_threads.append(threading.current_thread().name)
        self.release.wait(30)

    def alert(self, **k) -> None:
        pass


def test_wandb_deferred_pump_has_a_deadline_and_drops_a_hanging_sink(caplog):
    """Deferred mode: wandb is called off the calling (training) thread, and a pump waits at most sink_timeout."""
    import threading
    import time

    import wandb  # noqa: F401 - imported here, so the deadline below times the log call, not the import

    from wwmonitor.sinks.wandb import WandbSink

    run = _HangingRun()
    sink = WandbSink(run, deliver="deferred", images=False, table=False, alerts=False, sink_timeout=0.3)
    res = _results(3)
    sink.write(res[0])
    sink.write(res[1])
    t0 = time.perf_counter()
    with caplog.at_level("WARNING", logger="wwmonitor"):
        assert sink.pump() == 0
    waited = time.perf_counter() - t0
    assert 0.25 < waited < 5.0, waited  # returned at the deadline, not when wandb returned
    assert run.log_threads == ["wwmonitor-wandb-pump"] and threading.current_thread().name not in run.log_threads
    assert "sink_timeout=0.3" in sink.dropped and "W&B sink is dropped" in caplog.text
    assert sink.rows_dropped == 1 and sink.pending == 0  # the row behind the hanging one is discarded, counted
    sink.write(res[2])  # a dropped sink queues nothing more
    assert sink.pump() == 0 and sink.rows_dropped == 2 and sink.pending == 0
    run.release.set()
    assert run.log_threads == ["wwmonitor-wandb-pump"]  # no further call into the hung client


def test_wandb_deferred_pump_within_deadline_logs_and_reraises_errors():
    from wwmonitor.sinks.wandb import WandbSink

    run = _HangingRun()
    run.release.set()
    sink = WandbSink(run, deliver="deferred", images=False, table=False, alerts=False, sink_timeout=30)
    for r in _results(2):
        sink.write(r)
    assert sink.pump() == 2 and sink.rows_logged == 2 and not sink.dropped
    assert run.log_threads == ["wwmonitor-wandb-pump"] * 2

    def broken(row: dict) -> None:
        raise RuntimeError("wandb down")

    run.log = broken
    sink.write(_results(1)[0])
    with pytest.raises(RuntimeError, match="wandb down"):
        sink.pump()
    with pytest.raises(ValueError, match="sink_timeout"):
        WandbSink(run, deliver="deferred", sink_timeout=0)
