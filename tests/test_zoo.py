"""Model zoo: every weight of transformers and Keras models is analysed or listed as skipped, with a reason.

Tiny random-init models built from configs (tests/model_zoo.py; no downloads).  For each model:

* ``describe()`` has one row per >= 2-D weight -- exactly the state dict's (Keras: ``model.weights``) --
  each analysed (with its matrices) or skipped with a reason;
* the module walk and the state-dict path give the same matrices (names, shapes, equal arrays);
* names are stable: the same model built twice, a ``state_dict`` round trip, a saved checkpoint
  (Keras: ``.keras`` saved and loaded) give the same names.

Keras fixes its backend at first import, so the Keras models are checked in a subprocess (torch backend).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import torch.nn as nn

pytest.importorskip("transformers")  # requirements-dev.txt pins it; under CI=true a missing one fails

import wwmonitor  # noqa: E402
from wwmonitor.describe import COLUMNS, coverage_summary  # noqa: E402
from wwmonitor.layers import extract_matrices  # noqa: E402

from model_zoo import HF_MODELS, hf_model  # noqa: E402

HERE = Path(__file__).parent

#: per model: (matrices analysed, {skipped >= 2-D weight: start of its reason})
EXPECTED = {
    "gpt2": (14, {"lm_head.weight": "same tensor as transformer.wte.weight"}),
    "bert": (16, {}),
    "llama": (16, {}),
    "t5": (
        35,
        {
            "encoder.embed_tokens.weight": "same tensor as shared.weight",
            "decoder.embed_tokens.weight": "same tensor as shared.weight",
            "lm_head.weight": "same tensor as shared.weight",
        },
    ),
    "vit": (15, {"embeddings.cls_token": "not a matrix: shape (1, 1, 32) is a single vector"}),
    "whisper": (37, {"proj_out.weight": "same tensor as model.decoder.embed_tokens.weight"}),
    "convnext": (8, {}),
    "resnet": (8, {}),
    "phi3": (16, {}),
    "mixtral": (28, {}),
}


@pytest.fixture(scope="module")
def models():
    return {name: hf_model(name) for name in HF_MODELS}


def _big_keys(sd):
    return [k for k, v in sd.items() if v.ndim >= 2]


@pytest.mark.parametrize("name", HF_MODELS)
def test_every_weight_is_analysed_or_skipped_with_a_reason(models, name):
    m = models[name]
    df = wwmonitor.describe(m)
    assert list(df.columns) == COLUMNS
    sd = m.state_dict()
    assert list(df["param"]) == _big_keys(sd)  # every >= 2-D state-dict entry, once, in order
    assert set(df["status"]) <= {"analysed", "skipped"}
    for row in df.itertuples():
        assert row.shape == tuple(sd[row.param].shape)
        if row.status == "analysed":
            assert row.matrix and not row.reason, row
        else:
            assert not row.matrix and row.reason, row
    n, skipped = EXPECTED[name]
    got = {r.param: r.reason for r in df.itertuples() if r.status == "skipped"}
    assert set(got) == set(skipped)
    for param, start in skipped.items():
        assert got[param].startswith(start), (param, got[param])
    # the monitor's view: extract_matrices + its skipped list cover the same ground
    listed: list = []
    specs = extract_matrices(m, skipped=listed)
    assert len(specs) == n == df.attrs["num_matrices"]
    assert [s.name for s in specs] == [x for cell in df["matrix"] if cell for x in cell.split(", ")]
    assert {p for p, _ in listed} | {r.param for r in df.itertuples() if r.status == "analysed"} >= set(df["param"])
    assert len(listed) == len(got) + df.attrs["num_vectors"]
    assert all(reason for _, reason in listed)
    line = coverage_summary(specs, listed)
    assert line.startswith(f"wwmonitor: monitoring {n} matrices in ") and "\n" not in line


@pytest.mark.parametrize("name", HF_MODELS)
def test_module_walk_and_state_dict_give_the_same_matrices(models, name, tmp_path):
    m = models[name]
    specs = extract_matrices(m)
    sd_specs = extract_matrices(m.state_dict())
    assert [(s.name, s.shape) for s in specs] == [(s.name, s.shape) for s in sd_specs]
    for a, b in zip(specs, sd_specs):
        assert torch.equal(a.tensor, b.tensor), a.name
        assert a.scale == b.scale and a.param == b.param, a.name
    # a checkpoint on disk (torch.save keeps tied tensors shared) describes like the module
    path = tmp_path / "model.pt"
    torch.save(m.state_dict(), path)
    on_disk = wwmonitor.describe(path)
    live = wwmonitor.describe(m)
    assert list(on_disk["param"]) == list(live["param"])
    assert list(on_disk["matrix"]) == list(live["matrix"])
    assert list(on_disk["status"]) == list(live["status"])


@pytest.mark.parametrize("name", HF_MODELS)
def test_names_are_stable(models, name):
    m = models[name]
    names = [s.name for s in extract_matrices(m)]
    again = hf_model(name, seed=1)  # the same architecture built again, other weights
    assert [s.name for s in extract_matrices(again)] == names
    again.load_state_dict(m.state_dict())  # state_dict round trip
    specs = extract_matrices(again)
    assert [s.name for s in specs] == names
    for a, b in zip(specs, extract_matrices(m)):
        assert torch.equal(a.tensor, b.tensor)


def test_fused_and_transposed_layers_are_split_as_the_model_uses_them(models):
    gpt2 = models["gpt2"]
    specs = {s.name: s for s in extract_matrices(gpt2)}
    attn = gpt2.transformer.h[0].attn
    E = 32
    w = attn.c_attn.weight.detach()  # Conv1D: stored in x out, q | k | v along the outputs
    for i, part in enumerate("qkv"):
        s = specs[f"transformer.h.0.attn.c_attn.{part}"]
        assert s.type == "Conv1D" and s.shape == (E, E)
        assert torch.equal(s.tensor, w[:, i * E : (i + 1) * E].T)
    assert torch.equal(specs["transformer.h.0.mlp.c_fc"].tensor, gpt2.transformer.h[0].mlp.c_fc.weight.T)
    assert specs["transformer.h.0.mlp.c_fc"].shape == (128, 32)  # out x in, like nn.Linear
    # Phi-3: qkv_proj with grouped-query attention (4 query heads, 2 kv heads of 8), gate_up_proj halves
    phi = {s.name: s for s in extract_matrices(models["phi3"])}
    assert [phi[f"model.layers.0.self_attn.qkv_proj.{p}"].shape for p in "qkv"] == [(32, 32), (16, 32), (16, 32)]
    assert (
        phi["model.layers.0.mlp.gate_up_proj.gate"].shape == phi["model.layers.0.mlp.gate_up_proj.up"].shape == (64, 32)
    )
    # Mixtral: one matrix per expert, and the router
    mix = {s.name: s for s in extract_matrices(models["mixtral"])}
    bank = models["mixtral"].model.layers[0].mlp.experts.gate_up_proj
    assert [n for n in mix if n.startswith("model.layers.0.mlp.experts.gate_up_proj[")] == [
        f"model.layers.0.mlp.experts.gate_up_proj[{e}]" for e in range(4)
    ]
    assert torch.equal(mix["model.layers.0.mlp.experts.gate_up_proj[3]"].tensor, bank[3])
    assert mix["model.layers.0.mlp.gate"].shape == (4, 32)
    # Whisper's positional embeddings (an nn.Embedding subclass) and ViT's (1, N, d) table
    wh = {s.name: s for s in extract_matrices(models["whisper"])}
    assert {"model.encoder.embed_positions", "model.decoder.embed_positions"} <= set(wh)
    vit = {s.name: s for s in extract_matrices(models["vit"])}
    assert vit["embeddings.position_embeddings"].shape == (17, 32)
    assert vit["embeddings.position_embeddings"].type == "Embedding"


# ------------------------------------------------------------------ plain torch: structure, not names ----
def test_subclasses_are_recognised_and_raw_parameters_are_listed():
    class MyLinear(nn.Linear):
        pass

    class MyEmbedding(nn.Embedding):
        pass

    class MyConv(nn.Conv2d):
        pass

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = MyEmbedding(50, 16)
            self.fc = MyLinear(16, 24)
            self.conv = MyConv(3, 8, 3)
            self.pos = nn.Parameter(torch.randn(1, 10, 16))
            self.cls = nn.Parameter(torch.randn(1, 1, 16))
            self.table = nn.Parameter(torch.randn(10, 16))
            self.lstm = nn.LSTM(16, 12, proj_size=6)
            self.register_buffer("mask", torch.ones(4, 4))
            self.register_buffer("scratch", torch.ones(4, 4), persistent=False)
            self.tied = nn.Linear(16, 50, bias=False)
            self.tied.weight = self.emb.weight

    net = Net()
    df = wwmonitor.describe(net)
    rows = {r.param: r for r in df.itertuples()}
    assert list(df["param"]) == _big_keys(net.state_dict())
    assert rows["emb.weight"].matrix == "emb" and rows["fc.weight"].matrix == "fc"
    assert rows["conv.weight"].matrix == "conv" and rows["conv.weight"].type == "MyConv"
    assert rows["pos"].matrix == "pos"
    assert rows["cls"].reason.startswith("not a matrix: shape (1, 1, 16)")
    assert rows["table"].reason == "2-D parameter of a Net module, which wwmonitor does not analyse"
    assert rows["lstm.weight_hr_l0"].matrix == "lstm.weight_hr_l0"
    assert rows["mask"].reason == "2-D buffer of a Net module (not a trained parameter)"
    assert rows["tied.weight"].reason.startswith("same tensor as emb.weight")
    types = {s.name: s.type for s in extract_matrices(net)}
    assert types["emb"] == "Embedding" and types["fc"] == "Linear" and types["conv"] == "Conv2d"
    assert types["lstm.weight_ih_l0.i"] == "LSTM"


def test_tied_parameter_first_seen_raw_is_analysed_once():
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.raw = nn.Parameter(torch.randn(6, 5))
            self.fc = nn.Linear(5, 6)
            self.fc.weight = self.raw
            self.norm = nn.LayerNorm(6)
            self.norm2 = nn.LayerNorm(6)
            self.norm2.weight = self.norm.weight

    listed: list = []
    assert [s.name for s in extract_matrices(M(), skipped=listed)] == ["fc"]
    assert ("fc.weight", "same tensor as raw (tied weights; analysed once, listed under that name)") in listed
    assert ("norm2.weight", "same tensor as norm.weight (tied weights)") in listed
    rows = {r.param: r for r in wwmonitor.describe(M()).itertuples()}
    assert rows["raw"].matrix == "fc" and rows["fc.weight"].status == "skipped"


def test_parametrized_weight_is_analysed_through_its_originals():
    conv = nn.utils.parametrizations.weight_norm(nn.Conv1d(8, 16, 3))
    df = wwmonitor.describe(conv)
    assert set(df["param"]) == set(_big_keys(conv.state_dict()))
    assert set(df["status"]) == {"analysed"} and set(df["matrix"]) == {"model"}
    (spec,) = extract_matrices(conv)
    assert torch.equal(spec.tensor, conv.weight.detach().permute(2, 0, 1))


def test_depthwise_conv_is_analysed_as_its_kernel_taps():
    dw = nn.Conv2d(16, 16, 3, groups=16)
    (spec,) = extract_matrices(dw)
    assert spec.shape == (9, 16, 1) and spec.type == "Conv2d"  # as the state dict: kh*kw slices of C x 1
    (sd_spec,) = extract_matrices(dw.state_dict())
    assert torch.equal(spec.tensor, sd_spec.tensor)


def test_conv_slices_name_every_slice_in_describe():
    df = wwmonitor.describe(nn.Conv2d(3, 8, 2), conv="slices")
    assert df.loc[0, "matrix"] == "model[0], model[1], model[2], model[3]"


def test_coverage_summary_line():
    specs = extract_matrices(nn.Sequential(nn.Embedding(40, 8), nn.Linear(8, 8), nn.Linear(8, 4)))
    skipped = [
        ("1.bias", "not a matrix (1-D)"),
        ("2.bias", "not a matrix (1-D)"),
        ("x", "2-D parameter of a Foo module"),
    ]
    line = coverage_summary(specs, skipped)
    assert line == (
        "wwmonitor: monitoring 3 matrices in 2 layer types (Linear 2, Embedding 1); skipped 3: "
        "x (2-D parameter of a Foo module), 1.bias (not a matrix (1-D)), 2.bias (not a matrix (1-D))"
    )
    assert (
        coverage_summary(specs[:1], [], show=1)
        == "wwmonitor: monitoring 1 matrix in 1 layer type (Embedding 1); skipped none"
    )
    many = coverage_summary(specs, [(f"b{i}", "not a matrix (1-D)") for i in range(9)], show=2)
    assert many.endswith("skipped 9: b0 (not a matrix (1-D)), b1 (not a matrix (1-D)), ... (+7 more)")


# -------------------------------------------------------------------------------------------- CLI ----
def test_cli_describe_path_module_and_errors(tmp_path, monkeypatch, capsys):
    from wwmonitor.cli import main

    (tmp_path / "zoo_factory.py").write_text(
        textwrap.dedent("""
        import torch
        def build():
            from model_zoo import hf_model
            return hf_model("gpt2")
        def boom():
            raise RuntimeError("no weights today")
        plain = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.LayerNorm(8))
    """)
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))  # the CLI puts the current folder on it
    monkeypatch.delitem(sys.modules, "zoo_factory", raising=False)

    def cli(*args):
        rc = main(["describe", *args])
        out, err = capsys.readouterr()
        return rc, out, err

    rc, out, err = cli("zoo_factory:build()")
    assert rc == 0, err
    assert "transformer.h.0.attn.c_attn.q, transformer.h.0.attn.c_attn.k, transformer.h.0.attn.c_attn.v" in out
    assert "same tensor as transformer.wte.weight" in out
    assert "11 weights of >= 2 dims: 10 analysed (14 matrices), 1 skipped" in out
    rc, out, err = cli("zoo_factory:plain", "--json", "-")
    assert rc == 0, err
    payload = json.loads(out)
    assert payload["weights"] == [
        {"param": "0.weight", "matrix": "0", "shape": [8, 4], "type": "Linear", "status": "analysed", "reason": ""}
    ]
    assert payload["num_vectors"] == 3
    torch.save(
        {"enc.weight": torch.randn(6, 5), "enc.bias": torch.zeros(6), "ids": torch.ones(2, 3, dtype=torch.long)},
        tmp_path / "ckpt.pt",
    )
    rc, out, err = cli("ckpt.pt", "--csv", "out.csv")
    assert rc == 0, err
    csv = (tmp_path / "out.csv").read_text().splitlines()
    assert csv[0] == ",".join(COLUMNS)
    assert csv[1:] == [
        "enc.weight,enc,6x5,Linear,analysed,",
        "ids,,2x3,,skipped,not floating point (dtype torch.int64)",
    ]
    for args, msg in (
        (["zoo_factory:boom()"], "zoo_factory:boom() raised RuntimeError: no weights today"),
        (["zoo_factory:missing"], "module 'zoo_factory' has no attribute 'missing'"),
        (["no_such_module:x"], "cannot import module 'no_such_module'"),
        (["zoo_factory:plain()"], "zoo_factory:plain() raised TypeError"),
        (["missing.safetensors"], "no such file or folder"),
        (["ckpt.pt", "--json", "nodir/x.json"], "--json nodir/x.json: cannot create it"),
    ):
        rc, out, err = cli(*args)
        assert rc == 2, (args, out, err)
        assert err.startswith("wwmonitor describe: ") and msg in err, err
        assert len(err.strip().splitlines()) == 1


# ------------------------------------------------------------------------------------------ Keras ----
KERAS_SCRIPT = textwrap.dedent(
    """
    import json, os, sys
    sys.modules["tensorflow"] = None  # Keras imports TensorFlow, when installed, to save files: not needed, and slow
    sys.path.insert(0, {tests!r})
    import keras, numpy as np
    import wwmonitor
    from wwmonitor.layers import extract_matrices
    from wwmonitor.describe import coverage_summary
    from model_zoo import KERAS_MODELS, keras_model

    out = {{}}
    for name in KERAS_MODELS:
        m = keras_model(name)
        df = wwmonitor.describe(m)
        big, seen = [], set()
        for v in m.weights:
            if len(v.shape) >= 2 and id(v) not in seen:
                seen.add(id(v))
                big.append(v)
        skipped = []
        specs = extract_matrices(m, skipped=skipped)
        again = keras_model(name)  # built again: Keras numbers its generated names on
        path = os.path.join({tmp!r}, name + ".keras")
        m.save(path)
        loaded = keras.saving.load_model(path)
        lspecs = extract_matrices(loaded)
        out[name] = {{
            "rows": [[r.param, r.matrix, list(r.shape), r.type, r.status, r.reason] for r in df.itertuples()],
            "weights": [[v.path, list(v.shape)] for v in big],
            "specs": [[s.name, s.type, list(s.shape), s.scale] for s in specs],
            "again": [s.name for s in extract_matrices(again)],
            "again_params": list(wwmonitor.describe(again)["param"]),
            "loaded": [s.name for s in lspecs],
            "loaded_equal": all(np.array_equal(a.tensor, b.tensor) for a, b in zip(specs, lspecs)),
            # describe(path) loads the file itself (once, for the small model)
            "loaded_params": list(wwmonitor.describe(path if name == "custom" else loaded)["param"]),
            "skipped": skipped,
            "summary": coverage_summary(specs, skipped),
        }}
    print("RESULT " + json.dumps(out))
    """
)


@pytest.fixture(scope="module")
def keras_zoo(tmp_path_factory):
    pytest.importorskip("keras")  # not imported here: that would fix the backend of this process
    tmp = tmp_path_factory.mktemp("keras_zoo")
    env = {**os.environ, "KERAS_BACKEND": "torch", "OMP_NUM_THREADS": "1", "TF_CPP_MIN_LOG_LEVEL": "3"}
    proc = subprocess.run(
        [sys.executable, "-c", KERAS_SCRIPT.format(tests=str(HERE), tmp=str(tmp))],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")][-1]
    return json.loads(line[len("RESULT ") :])


KERAS_EXPECTED = {  # (matrices analysed, skipped >= 2-D weights)
    "mobilenet_v2": (53, 0),
    "resnet50": (54, 0),
    "custom": (20, 3),  # the 2-D biases of multi-head attention's query, key and value
}


@pytest.mark.slow
@pytest.mark.parametrize("name", list(KERAS_EXPECTED))
def test_keras_every_weight_analysed_or_skipped_and_names_stable(keras_zoo, name):
    r = keras_zoo[name]
    rows, weights = r["rows"], r["weights"]
    params = [row[0] for row in rows]
    assert len(params) == len(set(params)) == len(weights)  # one row per >= 2-D weight
    assert sorted(row[2] for row in rows) == sorted(w[1] for w in weights)
    if name != "custom":  # explicit layer names, functional model: the weight paths are the names
        assert set(params) == {w[0] for w in weights}
    for _param, matrix, _, _, status, reason in rows:
        assert (status == "analysed" and matrix and not reason) or (status == "skipped" and reason and not matrix)
    n, n_skipped = KERAS_EXPECTED[name]
    assert len(r["specs"]) == n and sum(row[4] == "skipped" for row in rows) == n_skipped
    assert [x for row in rows if row[1] for x in row[1].split(", ")] == [s[0] for s in r["specs"]]
    assert all(reason for _, reason in r["skipped"])
    assert r["summary"].startswith(f"wwmonitor: monitoring {n} matrices")
    # stable: built again in the same process (Keras numbers its names on), and saved + loaded
    names = [s[0] for s in r["specs"]]
    assert r["again"] == names and r["loaded"] == names and r["loaded_equal"]
    assert r["again_params"] == params and r["loaded_params"] == params


@pytest.mark.slow
def test_keras_layers_by_structure(keras_zoo):
    specs = {s[0]: s for s in keras_zoo["custom"]["specs"]}
    assert specs["conv2d"][1:] == ["Conv2D", [9, 3, 4], 0.5]
    assert specs["depthwise_conv2d"][1:] == ["DepthwiseConv2D", [9, 4, 1], 0.5]  # kh*kw taps of C x 1
    assert specs["separable_conv2d.depthwise"][1:3] == ["SeparableConv2D", [9, 8, 1]]  # depth_multiplier 2
    assert specs["separable_conv2d.pointwise"][1:3] == ["SeparableConv2D", [1, 8, 6]]
    assert specs["zoo_dense"][1:3] == ["Dense", [24, 8]]  # a Dense subclass
    assert {"sequential/dense", "sequential/named", "dense"} <= set(specs)  # nested, renumbered, model prefix gone
    assert specs["multi_head_attention/query"][1:3] == ["EinsumDense", [4, 8]]  # (d, heads, head_dim) -> d x heads*hd
    assert specs["multi_head_attention/attention_output"][1:3] == ["EinsumDense", [8, 4]]
    assert [n for n in specs if n.startswith("lstm.kernel.")] == [
        "lstm.kernel.i",
        "lstm.kernel.f",
        "lstm.kernel.c",
        "lstm.kernel.o",
    ]
    mnv2 = {s[1] for s in keras_zoo["mobilenet_v2"]["specs"]}
    assert mnv2 == {"Conv2D", "DepthwiseConv2D", "Dense"}
    skipped = {row[0]: row[5] for row in keras_zoo["custom"]["rows"] if row[4] == "skipped"}
    assert skipped == {
        f"multi_head_attention/{p}/bias": "a bias (2-D), not a weight matrix" for p in ("query", "key", "value")
    }
    biases = [p for p, reason in keras_zoo["resnet50"]["skipped"] if reason == "not a matrix (1-D)"]
    assert "conv1_conv/bias" in biases and "conv1_bn/moving_mean" in biases
