"""TensorBoard / W&B tag layout: one section per metric, images apart, the model summary first,
``/`` in layer names kept inside one section, custom-scalars layout, HParams, W&B config and summary."""

from __future__ import annotations

import functools
import glob
import json
import os
import re
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

import wwmonitor
from wwmonitor.records import SnapshotResult
from wwmonitor.sinks._render import (
    DEFAULT_SCALARS,
    hparam_values,
    image_tag,
    layer_tag,
    metric_section_regex,
    model_tag,
    plain_config,
    sanitize_tag,
)
from wwmonitor.sinks.tensorboard import EventWriter, TensorBoardSink
from wwmonitor.summary import model_summary

from _wwcb_helpers import tb_accumulator

LAYERS = ("block1/dense", "enc.fc1", "/head/")  # a Keras-style nested name, a torch name, stray slashes
HPARAMS = {"lr": 0.05, "batch_size": 32, "opt": {"name": "sgd", "nesterov": False}, "seed": None}


def _results(n: int = 3) -> list[SnapshotResult]:
    """Results as the dispatcher hands them to sinks (ESD figures drawn by the renderer stage)."""
    from wwmonitor.monitor.render import Renderer

    renderer = Renderer(1)
    rng = np.random.default_rng(1)
    out = []
    for e in range(n):
        mats = {
            LAYERS[0]: rng.standard_t(2.5, (300, 120)),
            LAYERS[1]: rng.standard_normal((200, 100)),
            LAYERS[2]: rng.standard_t(3.0, (240, 100)),
        }
        layers = [wwmonitor.analyze_matrix(W.astype(np.float32), k, keep_esd=True) for k, W in mats.items()]
        esds = {lm.name: lm.esd for lm in layers}
        out.append(
            SnapshotResult(
                step=10 * e, epoch=e, time=time.time(), layers=layers, esds=esds, summary=model_summary(layers)
            )
        )
        renderer.render(out[-1])
    return out


@pytest.fixture(scope="module")
def results():
    return _results()


def _section(tag: str) -> str:
    return tag.split("/", 1)[0]


def _tb_compare(a: str, b: str) -> int:
    """TensorBoard's tag order (``compareTagNames`` of its web app, the Time Series dashboard sorts tags
    with it and shows groups in the order of their first tag): digits compare as numbers, and ``/`` and
    digits sort before every other character."""
    i = j = 0
    while True:
        if i == len(a):
            return 0 if j == len(b) else -1
        if j == len(b):
            return 1
        if a[i].isdigit() and b[j].isdigit():
            i2, j2 = i, j
            while i2 < len(a) and a[i2].isdigit():
                i2 += 1
            while j2 < len(b) and b[j2].isdigit():
                j2 += 1
            x, y = int(a[i:i2]), int(b[j:j2])
            if x != y:
                return -1 if x < y else 1
            i, j = i2, j2
            continue
        brk_a, brk_b = a[i] == "/" or a[i].isdigit(), b[j] == "/" or b[j].isdigit()
        if brk_a != brk_b:
            return -1 if brk_a else 1
        if not brk_a and a[i] != b[j]:
            return -1 if a[i] < b[j] else 1
        i, j = i + 1, j + 1


def _tb_sections(tags) -> list[str]:
    out: list[str] = []
    for t in sorted(tags, key=functools.cmp_to_key(_tb_compare)):
        if _section(t) not in out:
            out.append(_section(t))
    return out


# ---------------------------------------------------------------- helpers of _render


def test_sanitize_tag_keeps_a_layer_in_one_segment():
    assert sanitize_tag("block1/dense") == "block1.dense"
    assert sanitize_tag("/head/") == "head"
    assert sanitize_tag("enc.fc1") == "enc.fc1"
    assert sanitize_tag("dense 1:0") == "dense_1_0"
    for name in LAYERS:
        assert layer_tag("ww", "alpha", name).count("/") == 1
        assert image_tag("ww", name).count("/") == 1
    assert layer_tag("ww", "alpha", "block1/dense") == "ww.alpha/block1.dense"
    assert image_tag("ww", "block1/dense") == "ww.esd/block1.dense"
    assert model_tag("ww", "mean_alpha") == "ww/mean_alpha"


def test_section_regex_matches_exactly_one_metric():
    rx = re.compile(metric_section_regex("ww", "alpha"))
    assert rx.pattern == r"ww\.alpha/.*"
    assert rx.match("ww.alpha/block1.dense") and rx.match("ww.alpha/enc.fc1")
    assert not rx.match("ww.alpha_weighted/enc.fc1") and not rx.match("wwxalpha/enc.fc1")
    assert not rx.match("ww/mean_alpha")


def test_config_values():
    assert hparam_values(HPARAMS) == {
        "lr": 0.05,
        "batch_size": 32,
        "opt/name": "sgd",
        "opt/nesterov": False,
        "seed": "None",
    }
    assert hparam_values({"x": np.float32(0.5), "n": np.int64(3), "bad": float("nan"), "l": [1, 2]}) == {
        "x": 0.5,
        "n": 3,
        "bad": "nan",
        "l": "[1, 2]",
    }
    assert hparam_values(None) == {}
    cfg = plain_config({"a": {"b": np.int64(2)}, "l": (1, "x"), "o": object, "n": None})
    assert cfg["a"] == {"b": 2} and cfg["l"] == [1, "x"] and cfg["n"] is None and isinstance(cfg["o"], str)
    json.dumps(cfg)


# ---------------------------------------------------------------- TensorBoard


def _write_tb(tmp_path, results, **kw):
    sink = TensorBoardSink(EventWriter(tmp_path), close_writer=True, **kw)
    for r in results:
        sink.write(r)
    sink.close()
    return tb_accumulator(str(tmp_path))


def test_tensorboard_one_section_per_metric_images_apart_model_first(tmp_path, results):
    ea = _write_tb(tmp_path, results)
    tags = ea.Tags()
    scalars, images = tags["scalars"], tags["images"]
    metric_sections = {f"ww.{m}" for m in DEFAULT_SCALARS}
    sections = {_section(t) for t in scalars}
    assert sections <= metric_sections | {"ww"}
    # every section of a metric holds that metric of every layer with a value, one card per layer
    by_section: dict[str, set[str]] = {}
    for t in scalars:
        by_section.setdefault(_section(t), set()).add(t.split("/", 1)[1])
    layer_parts = {sanitize_tag(n) for n in LAYERS}
    assert by_section["ww.alpha"] == layer_parts == {"block1.dense", "enc.fc1", "head"}
    assert by_section["ww.stable_rank"] == layer_parts
    assert all(t.count("/") == 1 for t in scalars)  # 'block1/dense' did not open a section 'block1'
    assert not any(t.startswith(("ww/alpha/", "block1", "head")) for t in scalars)
    # the model summary: section 'ww'
    assert by_section["ww"] >= {"mean_alpha", "mean_stable_rank", "num_layers", "num_ok"}
    assert [e.value for e in ea.Scalars("ww/mean_alpha")] == pytest.approx([r.summary["mean_alpha"] for r in results])
    assert [e.step for e in ea.Scalars("ww.alpha/block1.dense")] == [0, 10, 20]
    # images: their own section, nothing else in it
    assert set(images) == {f"ww.esd/{p}" for p in layer_parts}
    assert not sections & {_section(t) for t in images}
    # the model section sorts first in TensorBoard (natural tag order) and alphabetically (W&B sections)
    assert _tb_sections(scalars)[0] == "ww"
    assert _tb_sections(scalars + images)[0] == "ww"
    assert sorted(sections)[0] == "ww"
    # metric sections in TensorBoard's order: uppercase 'D' before lowercase, 'alpha' before 'alpha_weighted'
    order = _tb_sections(scalars)
    assert order.index("ww.alpha") < order.index("ww.alpha_weighted") < order.index("ww.stable_rank")
    # text stays where it was
    assert "ww/phases/text_summary" in tags["tensors"]


def test_tensorboard_custom_scalars_layout_once_per_writer(tmp_path, results):
    from tensorboard.plugins.custom_scalar import layout_pb2

    w = EventWriter(tmp_path)
    sink = TensorBoardSink(w)
    TensorBoardSink(w)  # a second sink on the same writer adds no second layout
    for r in results:
        sink.write(r)
    w.close()
    ea = tb_accumulator(str(tmp_path))
    events = ea.Tensors("custom_scalars__config__")
    assert len(events) == 1
    assert ea.SummaryMetadata("custom_scalars__config__").plugin_data.plugin_name == "custom_scalars"
    layout = layout_pb2.Layout.FromString(events[0].tensor_proto.string_val[0])
    cats = {c.title: c for c in layout.category}
    assert list(cats) == ["ww: all layers"]
    charts = {c.title: list(c.multiline.tag) for c in cats["ww: all layers"].chart}
    assert list(charts) == [f"ww.{m}" for m in DEFAULT_SCALARS]
    scalars = ea.Tags()["scalars"]
    for m, (rx,) in zip(DEFAULT_SCALARS, charts.values()):  # each chart: exactly the metric's layer tags
        assert {t for t in scalars if re.match(rx, t)} == {t for t in scalars if _section(t) == f"ww.{m}"}
    assert not TensorBoardSink(EventWriter(tmp_path / "b"), layout=False, close_writer=True).hparams


def _hparams_records(ea):
    from tensorboard.plugins.hparams import metadata as hp

    def content(tag):
        md = ea.SummaryMetadata(tag)
        assert md.plugin_data.plugin_name == hp.PLUGIN_NAME
        return md.plugin_data.content

    return (
        hp.parse_experiment_plugin_data(content(hp.EXPERIMENT_TAG)),
        hp.parse_session_start_info_plugin_data(content(hp.SESSION_START_INFO_TAG)),
        hp.parse_session_end_info_plugin_data(content(hp.SESSION_END_INFO_TAG)),
    )


def test_tensorboard_hparams_experiment_session_and_final_metrics(tmp_path, results):
    from tensorboard.plugins.hparams import api_pb2

    ea = _write_tb(tmp_path, results, hparams=HPARAMS)
    exp, start, end = _hparams_records(ea)
    types = {h.name: h.type for h in exp.hparam_infos}
    assert types == {
        "lr": api_pb2.DATA_TYPE_FLOAT64,
        "batch_size": api_pb2.DATA_TYPE_FLOAT64,
        "opt/name": api_pb2.DATA_TYPE_STRING,
        "opt/nesterov": api_pb2.DATA_TYPE_BOOL,
        "seed": api_pb2.DATA_TYPE_STRING,
    }
    metric_tags = [m.name.tag for m in exp.metric_infos]
    assert "ww/mean_alpha" in metric_tags and all(t.startswith("ww/mean_") for t in metric_tags)
    hp = start.hparams
    assert hp["lr"].number_value == 0.05 and hp["batch_size"].number_value == 32
    assert hp["opt/name"].string_value == "sgd" and hp["opt/nesterov"].bool_value is False
    assert end.status == api_pb2.STATUS_SUCCESS
    # the session's metric values are the last values of the metric tags: the final model summary
    final = results[-1].summary
    for tag in metric_tags:
        key = tag.split("/", 1)[1]
        if key in final:
            assert ea.Scalars(tag)[-1].value == pytest.approx(final[key])
            assert ea.Scalars(tag)[-1].step == results[-1].step


def test_tensorboard_no_hparams_without_config(tmp_path, results):
    ea = _write_tb(tmp_path, results[:1], hparams={})
    assert not [t for t in ea.Tags()["tensors"] if t.startswith("_hparams_/")]


def test_tensorboard_hparams_through_torch_summarywriter_come_first(tmp_path, results):
    """Lightning's writer: the sink's HParams records go through the SummaryWriter's file writer, at
    construction -- before Lightning's own ``log_hyperparams`` (which TensorBoard then ignores)."""
    pytest.importorskip("torch")
    from torch.utils.tensorboard import SummaryWriter
    from torch.utils.tensorboard.summary import hparams as torch_hparams

    writer = SummaryWriter(str(tmp_path))
    sink = TensorBoardSink(writer, hparams={"lr": 0.1}, close_writer=False)
    for summ in torch_hparams({"other": 1}, {"hp_metric": -1}):  # what TensorBoardLogger.log_hyperparams writes
        writer._get_file_writer().add_summary(summ)
    sink.write(results[0])
    sink.close()
    writer.close()
    ea = tb_accumulator(str(tmp_path))
    exp, start, end = _hparams_records(ea)
    assert [h.name for h in exp.hparam_infos] == ["lr"] and set(start.hparams) == {"lr"}
    assert "ww.alpha/block1.dense" in ea.Tags()["scalars"]
    assert len(ea.Tensors("custom_scalars__config__")) == 1


class _NoRawWriter:
    """A writer with the basic methods only: no add_summary, no file writer."""

    def __init__(self):
        self.scalars = {}

    def add_scalar(self, tag, value, step):
        self.scalars.setdefault(tag, []).append(step)

    def add_image(self, *a, **k):
        pass

    def add_text(self, *a, **k):
        pass

    def flush(self):
        pass


def test_writer_without_raw_summaries_still_gets_scalars(results):
    w = _NoRawWriter()
    sink = TensorBoardSink(w, hparams=HPARAMS)
    sink.write(results[0])
    sink.close()
    assert "ww.alpha/block1.dense" in w.scalars and "ww/mean_alpha" in w.scalars


# ---------------------------------------------------------------- W&B


@pytest.mark.slow
def test_wandb_sections_config_and_summary_offline(tmp_path):
    """Direct and deferred delivery into offline runs; read the run files back."""
    pytest.importorskip("wandb")
    code = textwrap.dedent(
        f"""
        import sys, json
        sys.path.insert(0, {os.path.dirname(__file__)!r})
        import wandb
        from test_layout import _results, HPARAMS
        from wwmonitor.sinks.wandb import WandbSink
        res = _results()
        out = {{}}
        for mode in ("direct", "deferred"):
            run = wandb.init(project="t", dir={str(tmp_path)!r}, mode="offline", name=mode,
                             config={{"existing": 1}})
            sink = WandbSink(run, step_metric="ww/step", deliver=mode, hparams=HPARAMS)
            for r in res:
                sink.write(r)
            sink.close()
            pending = sink.pending
            sink.pump()
            out[mode] = {{"pending_after_close": pending, "id": run.id}}
            wandb.finish()
        out["final"] = {{k: v for k, v in res[-1].summary.items()}}
        print(json.dumps(out))
        """
    )
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true", "WANDB_DIR": str(tmp_path)}
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["direct"]["pending_after_close"] == 0 and out["deferred"]["pending_after_close"] == 4
    from _wwcb_helpers import read_wandb_records, wandb_history

    for mode in ("direct", "deferred"):
        run_dir = glob.glob(str(tmp_path / "wandb" / f"offline-run-*-{out[mode]['id']}"))[0]
        rows, _ = wandb_history(run_dir)
        rows = [r for r in rows if "ww/step" in r]
        assert [int(r["ww/step"]) for r in rows] == [0, 10, 20]
        keys = set().union(*rows)
        sections = {_section(k) for k in keys if k.startswith("ww")}
        assert sections <= {"ww", "ww.esd"} | {f"ww.{m}" for m in DEFAULT_SCALARS}
        assert {"ww.alpha/block1.dense", "ww.alpha/enc.fc1", "ww.alpha/head", "ww/mean_alpha"} <= keys
        assert not any(k.startswith(("ww/alpha", "block1", "ww/model/")) for k in keys)
        assert sorted(sections)[0] == "ww"
        imgs = glob.glob(os.path.join(run_dir, "files", "media", "images", "ww.esd", "*.png"))
        assert len(imgs) == 9 and any(os.path.basename(p).startswith("block1.dense_") for p in imgs)
        config, summary = {}, {}
        for rec in read_wandb_records(glob.glob(os.path.join(run_dir, "*.wandb"))[0]):
            kind = rec.WhichOneof("record_type")
            if kind in ("run", "config"):  # wandb.init(config=) travels in the run record
                upd = rec.run.config.update if kind == "run" else rec.config.update
                config.update({(u.key or "/".join(u.nested_key)): json.loads(u.value_json) for u in upd})
            elif kind == "summary":
                summary.update({(u.key or "/".join(u.nested_key)): u.value_json for u in rec.summary.update})
        assert config["lr"] == 0.05 and config["batch_size"] == 32 and config["existing"] == 1
        assert config["opt"] == {"name": "sgd", "nesterov": False} and config["seed"] is None
        for k, v in out["final"].items():
            assert float(summary[f"ww/{k}"]) == pytest.approx(v), (mode, k)


# ---------------------------------------------------------------- Lightning end to end


@pytest.mark.slow
def test_lightning_fit_writes_the_layout_and_its_config_as_hparams(tmp_path, monkeypatch):
    torch = pytest.importorskip("torch")
    pytest.importorskip("lightning")
    import lightning.pytorch as pl
    from lightning.pytorch.loggers import TensorBoardLogger

    from wwmonitor.callbacks.lightning import WeightWatcherCallback

    from _wwcb_helpers import make_module

    torch.set_num_threads(1)
    monkeypatch.chdir(tmp_path)
    module = make_module("lightning", n=256)
    cb = WeightWatcherCallback(
        run_dir=str(tmp_path / "runs"), config={"lr": 0.05, "batch_size": 32}, esd_every_n_epochs=1
    )
    logger = TensorBoardLogger(str(tmp_path), name="tb", version="v")  # default_hp_metric: Lightning logs hparams too
    trainer = pl.Trainer(
        max_epochs=2,
        accelerator="cpu",
        devices=1,
        logger=logger,
        callbacks=[cb],
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        log_every_n_steps=5,
    )
    trainer.fit(module)
    ea = tb_accumulator(str(tmp_path / "tb" / "v"))
    scalars = ea.Tags()["scalars"]
    assert {"ww/mean_alpha", "ww.alpha/fc1", "ww.stable_rank/out"} <= set(scalars)
    assert {"ww.esd/fc1", "ww.esd/fc2", "ww.esd/out"} <= set(ea.Tags()["images"])
    assert _tb_sections([t for t in scalars if t.startswith("ww")])[0] == "ww"
    exp, start, end = _hparams_records(ea)
    assert {h.name for h in exp.hparam_infos} == {"lr", "batch_size"}  # ours, not Lightning's empty set
    assert start.hparams["lr"].number_value == 0.05
    assert ea.Scalars("ww/mean_alpha")[-1].value == pytest.approx(cb.monitor.results[-1].summary["mean_alpha"])
