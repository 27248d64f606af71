"""analyze_model: layer extraction, file formats, bad input, weightwatcher agreement."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn as nn

import wwmonitor
from wwmonitor.layers import extract_matrices
from wwmonitor.model import analyze_model

sys.path.insert(0, str(Path(__file__).parent))
from model_zoo import build  # noqa: E402

HERE = Path(__file__).parent

_WW_SCRIPT = r"""
import json, sys, warnings
sys.path.insert(0, {here!r})
from model_zoo import build
import weightwatcher as ww
import logging; logging.disable(logging.CRITICAL)
out = {{}}
for name in {names!r}:
    df = ww.WeightWatcher(model=build(name)).analyze(min_evals=50)
    out[name] = json.loads(df.to_json(orient="records"))
print("@@JSON@@" + json.dumps(out))
"""


def ww_analyze(names: list[str]) -> dict[str, pd.DataFrame]:
    """Run weightwatcher 0.7.7 in a subprocess (importing it silences all warnings process-wide)."""
    code = _WW_SCRIPT.format(here=str(HERE), names=names)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    payload = proc.stdout.split("@@JSON@@", 1)[1]
    return {k: pd.DataFrame(v) for k, v in json.loads(payload).items()}


WW_COLUMNS = ["alpha", "xmin", "xmax", "D", "alpha_weighted", "log_alpha_norm", "log_norm",
              "log_spectral_norm", "lambda_max", "stable_rank", "entropy", "matrix_rank",
              "rank_loss", "num_pl_spikes", "num_evals"]


@pytest.fixture(scope="module")
def ww_results():
    return ww_analyze(["small_mlp", "cnn", "small_transformer"])


@pytest.mark.parametrize("name", ["small_mlp", "cnn", "small_transformer"])
def test_matches_weightwatcher_columns(ww_results, name):
    ref = ww_results[name]
    ours = analyze_model(build(name), min_evals=50).to_pandas()
    ours = ours[ours["status"] == "ok"].reset_index(drop=True)
    # weightwatcher skips nn.MultiheadAttention.in_proj_weight; we split it into q/k/v
    ours = ours[ours["type"] != "MultiheadAttention"].reset_index(drop=True)
    ref = ref[ref["alpha"] > 0].reset_index(drop=True)
    assert len(ours) == len(ref), (list(ours["name"]), list(ref["name"]))
    for col in WW_COLUMNS:
        np.testing.assert_allclose(
            ours[col].astype(float).to_numpy(), ref[col].astype(float).to_numpy(), rtol=1e-6, atol=1e-9,
            err_msg=f"{name}: column {col}",
        )


def test_formats_agree(tmp_path):
    model = build("small_mlp")
    direct = analyze_model(model).to_pandas()
    torch.save(model.state_dict(), tmp_path / "m.pt")
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp_path / "model.safetensors"))
    np.savez(tmp_path / "m.npz", **{k: v.numpy() for k, v in model.state_dict().items()})
    (tmp_path / "hf").mkdir()
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp_path / "hf" / "model.safetensors"))
    for src in [model.state_dict(), tmp_path / "m.pt", tmp_path / "model.safetensors", tmp_path / "m.npz", tmp_path / "hf"]:
        df = analyze_model(src).to_pandas()
        np.testing.assert_allclose(df["alpha"].astype(float), direct["alpha"].astype(float), rtol=1e-9, err_msg=str(src))
        assert list(df["phase"]) == list(direct["phase"])


def test_lightning_checkpoint_state_dict(tmp_path):
    model = build("small_mlp")
    torch.save({"epoch": 3, "state_dict": {f"model.{k}": v for k, v in model.state_dict().items()}}, tmp_path / "x.ckpt")
    rep = analyze_model(tmp_path / "x.ckpt")
    assert [lm.name for lm in rep.layers] == ["model.0", "model.2", "model.4"]


def test_unsafe_pickle_is_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    torch.save({"x": Evil()}, tmp_path / "evil.pt")
    with pytest.raises(ValueError, match="weights_only"):
        analyze_model(tmp_path / "evil.pt")


def test_unknown_format_and_missing_file(tmp_path):
    (tmp_path / "m.onnx").write_bytes(b"x")
    with pytest.raises(ValueError, match="unknown weight file format '.onnx'"):
        analyze_model(tmp_path / "m.onnx")
    with pytest.raises(FileNotFoundError):
        analyze_model(tmp_path / "nope.safetensors")


def test_empty_model_is_an_error():
    with pytest.raises(ValueError, match="no analysable weight matrices"):
        analyze_model(nn.Sequential(nn.ReLU(), nn.LayerNorm(4)))


def test_bad_layers_report_status_and_rest_is_analysed():
    model = build("small_mlp")
    with torch.no_grad():
        model[2].weight[0, 0] = float("nan")
        model[4].weight.zero_()
    rep = analyze_model(model)
    by = {lm.name: lm for lm in rep.layers}
    assert by["0"].status == "ok" and by["0"].alpha is not None
    assert by["2"].status == "non_finite" and "'2'" in by["2"].message and by["2"].alpha is None
    assert by["4"].status == "zero_matrix" and by["4"].phase == "rank-collapse"
    # no NaN leaks into the table or the summary
    df = rep.to_pandas()
    assert not df[["alpha", "log_norm"]].isna().all().all()
    s = rep.summary()
    assert s["mean_alpha"] == pytest.approx(by["0"].alpha)


def test_small_matrices_flagged_not_fitted():
    lm = wwmonitor.analyze_matrix(np.random.default_rng(0).standard_normal((100, 30)), "tiny")
    assert lm.status == "too_few_evals" and lm.alpha is None and "min_evals=50" in lm.message
    assert lm.stable_rank is not None  # norms are still computed


def test_one_d_input_is_a_clear_error():
    with pytest.raises(ValueError, match="layer 'bias'"):
        wwmonitor.analyze_matrix(np.ones(10), "bias")


def test_warnings_follow_weightwatcher_convention():
    rng = np.random.default_rng(0)
    heavy = rng.standard_t(1.5, size=(600, 300))
    lm = wwmonitor.analyze_matrix(heavy, "heavy")
    assert lm.alpha < 2 and lm.warning == "over-trained"
    rand = rng.standard_normal((600, 300))
    lm = wwmonitor.analyze_matrix(rand, "rand")
    assert lm.alpha > 6 and lm.warning == "under-trained"


def test_layer_kinds_and_filters():
    lstm = nn.LSTM(60, 80)
    specs = extract_matrices(lstm)
    assert [s.name for s in specs[:4]] == ["model.weight_ih_l0.i", "model.weight_ih_l0.f", "model.weight_ih_l0.g", "model.weight_ih_l0.o"]
    assert all(s.shape in ((80, 60), (80, 80)) for s in specs)
    t = build("small_transformer")
    names = [s.name for s in extract_matrices(t)]
    assert "layers.0.self_attn.q" in names and "layers.1.linear2" in names
    conv = nn.Sequential(nn.Conv2d(8, 16, 3), nn.ConvTranspose2d(16, 4, 2), nn.Conv1d(3, 5, 4), nn.Conv3d(2, 3, 2))
    specs = extract_matrices(conv)
    assert [(s.type, s.shape) for s in specs] == [
        ("Conv2d", (9, 16, 8)), ("ConvTranspose2d", (4, 16, 4)), ("Conv1d", (4, 5, 3)), ("Conv3d", (8, 3, 2))]
    assert len(extract_matrices(conv, conv="slices")) == 9 + 4 + 4 + 8
    assert [s.name for s in extract_matrices(t, layers=["layers.0.*"], exclude=["MultiheadAttention"])] == [
        "layers.0.self_attn.out_proj", "layers.0.linear1", "layers.0.linear2"]
    with pytest.raises(ValueError, match="no matrix matches"):
        extract_matrices(t, layers=["layers.9"])


def test_conv_slices_pool_equals_concatenated_slices():
    conv = nn.Conv2d(32, 64, 3)
    pooled = analyze_model(conv, min_evals=10).layers[0]
    sl = analyze_model(conv, conv="slices", min_evals=10).layers
    assert len(sl) == 9 and pooled.num_evals == 9 * 32
    assert pooled.lambda_max == pytest.approx(max(s.lambda_max for s in sl))


KERAS_SCRIPT = r"""
import os, json
os.environ["KERAS_BACKEND"] = "torch"
import keras, numpy as np
from wwmonitor.layers import extract_matrices
from wwmonitor import analyze_model
inp = keras.Input((16, 16, 3))
x = keras.layers.Conv2D(32, 3)(inp)
x = keras.layers.Flatten()(x)
x = keras.layers.Dense(96)(x)
out = keras.layers.Dense(10)(x)
m = keras.Model(inp, out)
seq = keras.Sequential([keras.Input((20,)), keras.layers.Dense(64), keras.layers.Dense(32)])
specs = extract_matrices(m)
rep = analyze_model(seq, min_evals=10)
k = seq.layers[0].kernel
print(json.dumps({"specs": [(s.name, s.type, list(s.shape), s.scale) for s in specs],
                  "alpha0": rep.layers[0].alpha, "M": rep.layers[0].M,
                  "ref": float(np.linalg.svd(np.asarray(keras.ops.convert_to_numpy(k), dtype=np.float64), compute_uv=False).max() ** 2),
                  "lmax": rep.layers[0].lambda_max}))
"""


def test_keras_model_on_torch_backend_is_walked_as_keras():
    proc = subprocess.run([sys.executable, "-c", KERAS_SCRIPT], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    types = [s[1] for s in out["specs"]]
    assert types == ["Conv2D", "Dense", "Dense"]
    assert out["specs"][0][2] == [9, 3, 32] and out["specs"][0][3] == 0.5
    assert out["M"] == 20 and out["lmax"] == pytest.approx(out["ref"], rel=1e-9)
