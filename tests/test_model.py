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
from wwmonitor.checkpoint import load_weights
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


WW_COLUMNS = [
    "alpha",
    "xmin",
    "xmax",
    "D",
    "alpha_weighted",
    "log_alpha_norm",
    "log_norm",
    "log_spectral_norm",
    "lambda_max",
    "stable_rank",
    "entropy",
    "matrix_rank",
    "rank_loss",
    "num_pl_spikes",
    "num_evals",
]


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
            ours[col].astype(float).to_numpy(),
            ref[col].astype(float).to_numpy(),
            rtol=1e-6,
            atol=1e-9,
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
    for src in [
        model.state_dict(),
        tmp_path / "m.pt",
        tmp_path / "model.safetensors",
        tmp_path / "m.npz",
        tmp_path / "hf",
    ]:
        df = analyze_model(src).to_pandas()
        np.testing.assert_allclose(
            df["alpha"].astype(float), direct["alpha"].astype(float), rtol=1e-9, err_msg=str(src)
        )
        assert list(df["phase"]) == list(direct["phase"])


def test_lightning_checkpoint_state_dict(tmp_path):
    model = build("small_mlp")
    torch.save(
        {"epoch": 3, "state_dict": {f"model.{k}": v for k, v in model.state_dict().items()}}, tmp_path / "x.ckpt"
    )
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
    ref0 = wwmonitor.analyze_matrix(model[0].weight.detach().numpy(), "0", layer_type="Linear")
    rep = analyze_model(model)
    by = {lm.name: lm for lm in rep.layers}
    assert by["0"].status == "ok" and by["0"].alpha == ref0.alpha and by["0"].log_norm == ref0.log_norm
    assert by["2"].status == "non_finite" and "'2'" in by["2"].message and by["2"].alpha is None
    assert by["4"].status == "zero_matrix" and by["4"].phase == "rank-collapse"
    assert by["4"].matrix_rank == 0 and by["4"].rank_loss == by["4"].M
    # no NaN leaks into the table: a metric is a finite number or None, nothing else
    df = rep.to_pandas()
    for col in ("alpha", "log_norm", "stable_rank", "lambda_max"):
        vals = df.set_index("name")[col]
        assert vals["0"] == pytest.approx(getattr(ref0, col), rel=1e-12)
        assert vals[["2", "4"]].isna().all()  # None for the broken layers, never NaN/-1 from a fit
    s = rep.summary()
    assert s["mean_alpha"] == ref0.alpha  # the two broken layers are excluded, not averaged in


def test_small_matrices_flagged_not_fitted():
    lm = wwmonitor.analyze_matrix(np.random.default_rng(0).standard_normal((100, 30)), "tiny")
    assert lm.status == "too_few_evals" and lm.alpha is None and "min_evals=50" in lm.message
    # norms are still computed
    W = np.random.default_rng(0).standard_normal((100, 30))
    sv2 = np.linalg.svd(W, compute_uv=False) ** 2
    assert lm.stable_rank == pytest.approx(sv2.sum() / sv2.max(), rel=1e-10)
    assert lm.log_norm == pytest.approx(np.log10(sv2.sum()), rel=1e-12)


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
    assert [s.name for s in specs[:4]] == [
        "model.weight_ih_l0.i",
        "model.weight_ih_l0.f",
        "model.weight_ih_l0.g",
        "model.weight_ih_l0.o",
    ]
    assert all(s.shape in ((80, 60), (80, 80)) for s in specs)
    t = build("small_transformer")
    names = [s.name for s in extract_matrices(t)]
    assert "layers.0.self_attn.q" in names and "layers.1.linear2" in names
    conv = nn.Sequential(nn.Conv2d(8, 16, 3), nn.ConvTranspose2d(16, 4, 2), nn.Conv1d(3, 5, 4), nn.Conv3d(2, 3, 2))
    specs = extract_matrices(conv)
    assert [(s.type, s.shape) for s in specs] == [
        ("Conv2d", (9, 16, 8)),
        ("ConvTranspose2d", (4, 16, 4)),
        ("Conv1d", (4, 5, 3)),
        ("Conv3d", (8, 3, 2)),
    ]
    assert len(extract_matrices(conv, conv="slices")) == 9 + 4 + 4 + 8
    assert [s.name for s in extract_matrices(t, layers=["layers.0.*"], exclude=["MultiheadAttention"])] == [
        "layers.0.self_attn.out_proj",
        "layers.0.linear1",
        "layers.0.linear2",
    ]
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
                  "ref": float(np.linalg.svd(np.asarray(keras.ops.convert_to_numpy(k), dtype=np.float64),
                                             compute_uv=False).max() ** 2),
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


# ------------------------------------------------ every entry analysed or listed as skipped ----
def test_mapping_entries_that_are_not_matrices_are_listed_as_skipped():
    rng = np.random.default_rng(30)
    W = rng.standard_normal((120, 80))
    sd = {
        "enc.weight": W,
        "enc.bias": np.ones(120),
        "step": np.array(3),
        "note.weight": "hello",
        "names": ["a", "b"],
        "missing.weight": None,
        "nested": {"x": W},
        "position_ids": np.arange(120).reshape(1, 120),
        "cls_token.weight": rng.standard_normal((1, 1, 1, 1, 2, 3)),
    }
    rep = analyze_model(sd)
    assert [lm.name for lm in rep.layers] == ["enc"]
    assert rep.skipped == [
        ("enc.bias", "not a matrix (1-D)"),
        ("step", "not a matrix (0-D)"),
        ("note.weight", "value is not an array (str)"),
        ("names", "value is not an array (list)"),
        ("missing.weight", "value is not an array (NoneType)"),
        ("nested", "nested mapping (dict): its entries are not searched"),
        ("position_ids", "not floating point (dtype int64)"),
        ("cls_token.weight", "6-D array: no layer rule for this name and shape (1, 1, 1, 1, 2, 3)"),
    ]
    assert rep.summary()["num_skipped"] == 8
    assert len(rep.layers) + len(rep.skipped) == len(sd)


def test_torch_module_parameters_not_analysed_are_listed_as_skipped():
    class WithRawParam(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(80, 60)
            self.norm = nn.LayerNorm(60)
            self.proj = nn.Parameter(torch.randn(60, 60))

    rep = analyze_model(WithRawParam(), min_evals=10)
    assert [lm.name for lm in rep.layers] == ["fc"]
    assert rep.skipped == [
        ("proj", "2-D parameter of a WithRawParam module, which wwmonitor does not analyse"),
        ("fc.bias", "not a matrix (1-D)"),
        ("norm.weight", "not a matrix (1-D)"),
        ("norm.bias", "not a matrix (1-D)"),
    ]
    # the transformer's state_dict and the module itself: every 1-D entry is listed, the matrices analysed
    t = build("small_transformer")
    sd = t.state_dict()
    ones = [k for k, v in sd.items() if v.ndim == 1]
    assert len(ones) == 16
    for src in (sd, t):
        rep = analyze_model(src)
        assert len(rep.layers) == 12 and rep.skipped == [(k, "not a matrix (1-D)") for k in ones]


def test_skipped_entries_follow_the_layer_filters():
    sd = {
        "a.weight": np.ones((60, 50)) + np.eye(60, 50),
        "a.bias": np.ones(60),
        "b.weight": np.eye(60),
        "b.bias": np.ones(60),
    }
    rep = analyze_model(sd, layers=["a"], min_evals=10)
    assert [lm.name for lm in rep.layers] == ["a"] and rep.skipped == [("a.bias", "not a matrix (1-D)")]
    rep = analyze_model(sd, exclude=["b"], min_evals=10)
    assert rep.skipped == [("a.bias", "not a matrix (1-D)")]


def test_nothing_analysable_error_lists_what_was_skipped():
    with pytest.raises(
        ValueError,
        match=r"no analysable weight matrices.*skipped 2: "
        r"a \(value is not an array \(str\)\), b \(not a matrix \(1-D\)\)",
    ):
        analyze_model({"a": "x", "b": np.ones(3)})


# ----------------------------------------------------------------- complex / sparse layers ----
def test_complex_layer_is_rejected_naming_it_and_the_rest_is_analysed():
    rng = np.random.default_rng(31)
    W = rng.standard_normal((120, 80))
    with pytest.raises(TypeError, match=r"layer 'z': complex-valued matrix \(dtype complex128\)"):
        wwmonitor.analyze_matrix(W + 1j * W, "z")
    lin = nn.Linear(80, 120)
    rep = analyze_model(
        {"a.weight": W, "z.weight": W + 1j * W, "t.weight": torch.complex(lin.weight.detach(), lin.weight.detach())}
    )
    by = {lm.name: lm for lm in rep.layers}
    assert by["a"].status == "ok" and by["a"].alpha == wwmonitor.analyze_matrix(W, "a").alpha
    for name, dt in (("z", "complex128"), ("t", "torch.complex64")):
        assert by[name].status == "error" and by[name].alpha is None
        assert (
            by[name].message == f"layer {name!r}: complex-valued matrix (dtype {dt}) is not supported: "
            "wwmonitor analyses real weights only (it will not drop the imaginary part)"
        )


def test_sparse_layer_in_a_mapping_gets_a_status():
    import scipy.sparse as sp

    W = np.random.default_rng(32).standard_normal((120, 80))
    rep = analyze_model({"a.weight": W, "s.weight": sp.csr_matrix(W), "o.weight": W.astype(object)})
    by = {lm.name: lm for lm in rep.layers}
    assert by["a"].status == "ok"
    assert by["s"].status == "error" and "layer 's': sparse matrix (scipy.sparse csr_matrix)" in by["s"].message
    assert rep.skipped == [("o.weight", "not floating point (dtype object)")]


# ---------------------------------------------------------------------- extreme scales ----
_SCALE_FREE = (
    "num_evals",
    "D",
    "alpha",
    "num_pl_spikes",
    "stable_rank",
    "entropy",
    "matrix_rank",
    "rank_loss",
    "mp_softrank",
    "num_spikes",
    "mp_ks",
    "phase",
    "Q",
    "N",
    "M",
)


def _assert_same(lm, ref, names):
    for f in names:
        a, b = getattr(lm, f), getattr(ref, f)
        if isinstance(b, float):
            assert a == pytest.approx(b, rel=1e-12), f
        else:
            assert a == b, f


@pytest.mark.parametrize("log2_scale", [-1030, -530, -1000])
def test_denormal_scale_weights_are_not_called_zero(log2_scale):
    """W ~ 1e-310 (or 1e-160: W² underflows) used to be "all weights are zero" / rank-collapse.
    Now: scale-free metrics from W / max|W|, log norms in log space, unrepresentable values None
    with status "underflow"; the result equals that of the same matrix at an ordinary small scale."""
    W = np.ldexp(np.random.default_rng(33).standard_normal((200, 100)), log2_scale)
    W0 = np.ldexp(W, -log2_scale - 20)  # exactly the same matrix at scale 2^-20 (~1e-6)
    ref = wwmonitor.analyze_matrix(W0, "tiny")
    lm = wwmonitor.analyze_matrix(W, "tiny")
    assert ref.status == "fit_failed"  # weightwatcher's 1e-5 eigenvalue floor, also at 2^-20
    assert lm.status == "underflow" and lm.phase != "rank-collapse" and lm.matrix_rank == 100
    _assert_same(lm, ref, _SCALE_FREE)
    shift = 2 * (log2_scale + 20) * np.log10(2.0)
    assert lm.log_norm == pytest.approx(ref.log_norm + shift, rel=1e-13)
    assert lm.log_spectral_norm == pytest.approx(ref.log_spectral_norm + shift, rel=1e-13)
    assert lm.lambda_max is None and lm.mp_sigma2 is None and lm.lambda_plus is None
    assert "layer 'tiny'" in lm.message and "underflow" in lm.message and "lambda_max" in lm.message
    assert "1e-05" in lm.message  # and why there is no alpha


def test_small_scale_values_are_put_back_where_representable():
    W = np.ldexp(np.random.default_rng(34).standard_normal((200, 100)), -450)
    W0 = np.ldexp(W, 430)
    ref, lm = wwmonitor.analyze_matrix(W0, "s"), wwmonitor.analyze_matrix(W, "s")
    assert ref.status == lm.status == "fit_failed" and "underflow" not in lm.message
    for f in ("lambda_max", "mp_sigma2", "lambda_plus", "lambda_minus", "tw_margin"):
        assert getattr(lm, f) == pytest.approx(np.ldexp(getattr(ref, f), -860), rel=1e-12), f


def test_huge_scale_weights_are_analysed_with_log_norms():
    """The sum of squares overflows float64: analysed on W / max|W|; alpha is scale-free."""
    W0 = np.random.default_rng(35).standard_normal((200, 100))
    ref = wwmonitor.analyze_matrix(W0, "big")
    lm = wwmonitor.analyze_matrix(np.ldexp(W0, 900), "big")
    assert lm.status == "overflow" and lm.alpha == pytest.approx(ref.alpha, rel=1e-12)
    _assert_same(lm, ref, _SCALE_FREE)
    shift = 1800 * np.log10(2.0)
    assert lm.log_norm == pytest.approx(ref.log_norm + shift, rel=1e-13)
    assert lm.alpha_weighted == pytest.approx(ref.alpha_weighted + ref.alpha * shift, rel=1e-12)
    assert lm.log_alpha_norm == pytest.approx(ref.log_alpha_norm + ref.alpha * shift, rel=1e-12)
    assert lm.lambda_max is None and lm.xmin is None and "overflow" in lm.message


def test_denormal_layer_in_a_model_is_reported_and_the_rest_analysed():
    rng = np.random.default_rng(36)
    rep = analyze_model(
        {
            "a.weight": rng.standard_normal((120, 80)),
            "d.weight": 1e-310 * rng.standard_normal((120, 80)),
            "z.weight": np.zeros((120, 80)),
        }
    )
    by = {lm.name: lm for lm in rep.layers}
    assert by["a"].status == "ok"
    assert by["d"].status == "underflow" and by["d"].matrix_rank == 80
    assert by["z"].status == "zero_matrix" and by["z"].phase == "rank-collapse"


# --------------------------------------------------------------- corrupt weight files ----
def _write_bad_files(tmp_path: Path) -> list[tuple[Path, str]]:
    from safetensors.numpy import save_file

    rng = np.random.default_rng(37)
    save_file({"a.weight": rng.standard_normal((100, 60))}, str(tmp_path / "ok.safetensors"))
    good = (tmp_path / "ok.safetensors").read_bytes()
    np.savez(tmp_path / "ok.npz", a=rng.standard_normal((100, 60)), b=rng.standard_normal((80, 70)))
    gz = (tmp_path / "ok.npz").read_bytes()
    files = {
        "trunc.safetensors": (good[: len(good) // 2], "not a valid .safetensors file"),
        "garbage.safetensors": (b"this is not a safetensors file", "not a valid .safetensors file"),
        "empty.safetensors": (b"", "not a valid .safetensors file"),
        "trunc.npz": (gz[: len(gz) // 2], "not a valid .npz archive"),
        "garbage.npz": (b"hello, not a zip archive at all" * 3, "not a valid .npz archive"),
        "empty.npz": (b"", "not a valid .npz archive"),
        "crc.npz": (gz[:3000] + b"\0" * 10 + gz[3010:], "corrupt .npz archive"),
    }
    out = []
    for name, (data, msg) in files.items():
        (tmp_path / name).write_bytes(data)
        out.append((tmp_path / name, msg))
    np.savez(tmp_path / "objects.npz", a=rng.standard_normal((100, 60)), meta=np.array(["x", None], dtype=object))
    out.append((tmp_path / "objects.npz", "array 'meta' is an object array"))
    np.save(tmp_path / "single.npy", np.ones((3, 3)))
    (tmp_path / "single.npy").rename(tmp_path / "single.npz")
    out.append((tmp_path / "single.npz", "holds a single .npy array, not an .npz archive"))
    return out


def test_corrupt_weight_files_raise_value_error_naming_file(tmp_path):
    for path, msg in _write_bad_files(tmp_path):
        for fn in (load_weights, analyze_model):
            with pytest.raises(ValueError, match=msg) as ei:
                fn(path)
            assert str(path) in str(ei.value), (path, str(ei.value))
            assert "\n" not in str(ei.value)


def test_corrupt_shard_in_a_model_folder_is_named(tmp_path):
    from safetensors.numpy import save_file

    (tmp_path / "hf").mkdir()
    save_file({"a.weight": np.ones((60, 50))}, str(tmp_path / "hf" / "model-00001.safetensors"))
    (tmp_path / "hf" / "model-00002.safetensors").write_bytes(b"garbage")
    with pytest.raises(ValueError, match=r"model-00002\.safetensors: not a valid \.safetensors file"):
        load_weights(tmp_path / "hf")


def test_default_workers_bad_local_world_size_is_logged(monkeypatch, caplog):
    import logging

    from wwmonitor.model import _default_workers

    monkeypatch.setenv("LOCAL_WORLD_SIZE", "two")
    with caplog.at_level(logging.WARNING, logger="wwmonitor"):
        assert _default_workers(4, 2) == 4
    assert any("LOCAL_WORLD_SIZE" in r.getMessage() and "'two'" in r.getMessage() for r in caplog.records)
