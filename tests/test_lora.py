"""peft LoRA: the effective weight ``W0 + scaling·B·A`` of each adapted layer, the update, the base.

A tiny GPT-2 (``Conv1D`` targets, ``fan_in_fan_out``) and a tiny BERT (``Linear``
targets), built from configs (no downloads), get peft LoRA adapters with
non-zero ``B`` (``init_lora_weights=False``) so that the effective weights
differ from the base weights from the start.  The reference for the
effective weight is peft itself: ``merge_and_unload()`` of a deep copy, and
the adapted layer's forward pass.
"""

from __future__ import annotations

import copy
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
peft = pytest.importorskip("peft")

from transformers import BertConfig, BertModel, GPT2Config, GPT2LMHeadModel  # noqa: E402
from transformers.utils import logging as hf_logging  # noqa: E402

import wwmonitor  # noqa: E402
from wwmonitor.analyze import AnalysisOptions, analyze_matrix  # noqa: E402
from wwmonitor.describe import describe  # noqa: E402
from wwmonitor.layers import extract_matrices, weight_inventory  # noqa: E402

pytestmark = [
    pytest.mark.usefixtures("one_blas_thread"),
    pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing.*:FutureWarning"),  # peft -> transformers
    pytest.mark.filterwarnings("ignore:.*fan_in_fan_out.*:UserWarning"),
]
torch.set_num_threads(1)
hf_logging.set_verbosity_error()

ROOT = Path(__file__).resolve().parents[1]
PREFIX = "base_model.model."
R = 4
VOCAB, SEQ = 96, 16
FAST = AnalysisOptions(mp_fit=False, phases=False)
METRICS = ("alpha", "stable_rank", "log_norm", "log_spectral_norm", "matrix_rank", "num_evals", "entropy")


def gpt2_peft(seed: int = 0, **kw) -> "torch.nn.Module":
    torch.manual_seed(seed)
    base = GPT2LMHeadModel(
        GPT2Config(n_layer=1, n_embd=64, n_head=2, vocab_size=VOCAB, n_positions=SEQ, bos_token_id=0, eos_token_id=0)
    )
    cfg = peft.LoraConfig(
        r=R,
        lora_alpha=8,
        lora_dropout=0.25,
        target_modules=["c_attn", "c_proj", "c_fc"],
        fan_in_fan_out=True,
        init_lora_weights=False,
        **kw,
    )
    return peft.get_peft_model(base, cfg)


def bert_peft(seed: int = 0, **kw) -> "torch.nn.Module":
    torch.manual_seed(seed)
    base = BertModel(
        BertConfig(
            vocab_size=VOCAB,
            hidden_size=64,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=128,
            max_position_embeddings=SEQ,
        )
    )
    cfg = peft.LoraConfig(
        r=R, lora_alpha=16, lora_dropout=0.25, target_modules=["query", "value", "dense"], init_lora_weights=False, **kw
    )
    return peft.get_peft_model(base, cfg)


MODELS = {
    "gpt2": (gpt2_peft, "Conv1D", "transformer.h.0.attn.c_attn"),
    "bert": (bert_peft, "Linear", "encoder.layer.0.attention.self.query"),
}


def lora_layers(pm) -> dict[str, "torch.nn.Module"]:
    return {n: m for n, m in pm.named_modules() if isinstance(m, peft.tuners.lora.LoraLayer)}


def merged_specs(pm) -> dict:
    return {s.name: s for s in extract_matrices(copy.deepcopy(pm).merge_and_unload())}


def train(pm, steps: int, seed: int = 1) -> None:
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW([p for p in pm.parameters() if p.requires_grad], lr=1e-2)
    pm.train()
    for _ in range(steps):
        ids = torch.randint(0, VOCAB, (4, SEQ), generator=g)
        out = pm(input_ids=ids)
        y = out.logits if getattr(out, "logits", None) is not None else out.last_hidden_state
        loss = y.pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()


def as_np(t) -> np.ndarray:
    return t.detach().double().numpy()


def owner(layers: dict, name: str):
    """``(LoRA layer, rows)`` of effective matrix ``name`` (rows of its out x in weight), or ``(None, None)``."""
    if name in layers:
        return layers[name], slice(None)
    head, _, part = name.rpartition(".")
    if head in layers and part in ("q", "k", "v"):  # GPT-2's fused c_attn, split in thirds
        n = layers[head].out_features // 3
        i = "qkv".index(part)
        return layers[head], slice(i * n, (i + 1) * n)
    return None, None


def out_in(layer, w):
    """A weight or delta of ``layer`` as stored (Conv1D: in x out) -> out x in."""
    return w.detach().T if isinstance(layer.base_layer, __import__("transformers").pytorch_utils.Conv1D) else w.detach()


# ------------------------------------------------------------------ the effective weight
@pytest.mark.parametrize("kind", sorted(MODELS))
def test_effective_weight_equals_merged_copy(kind):
    make, typ, fused = MODELS[kind]
    pm = make()
    specs = {s.name: s for s in extract_matrices(pm)}
    merged = merged_specs(pm)
    assert {n[len(PREFIX) :] for n in specs} == set(merged)  # the same matrices, under the LoRA layers' names
    layers = lora_layers(pm)
    adapted = 0
    for name, s in specs.items():
        m = merged[name[len(PREFIX) :]]
        assert (s.type, s.shape) == (m.type, m.shape), name
        np.testing.assert_allclose(as_np(s.tensor), as_np(m.tensor), rtol=0, atol=1e-6, err_msg=name)
        layer, rows = owner(layers, name)
        if layer is not None:
            adapted += 1
            assert s.type == typ and s.param.endswith(".base_layer.weight"), name
            w0 = out_in(layer, layer.base_layer.weight)[rows]
            assert float((s.tensor - w0).abs().max()) > 1e-3, name  # the update is there
            torch.testing.assert_close(s.tensor, w0 + out_in(layer, layer.get_delta_weight("default"))[rows])
    assert adapted >= 4
    if kind == "gpt2":  # the fused Conv1D c_attn is split into q, k, v as without LoRA
        assert {f"{PREFIX}{fused}.{p}" for p in "qkv"} <= set(specs)
        assert specs[f"{PREFIX}{fused}.q"].type == "Conv1D"


@pytest.mark.parametrize("kind", sorted(MODELS))
def test_effective_weight_metrics_equal_analysis_of_merged_weights(kind):
    make, _, _ = MODELS[kind]
    pm = make()
    rep = wwmonitor.analyze_model(pm, options=FAST, workers=1)
    merged = merged_specs(pm)
    assert len(rep.layers) == len(merged)
    with_alpha = 0
    for lm in rep.layers:
        m = merged[lm.name[len(PREFIX) :]]
        ref = analyze_matrix(m.tensor, m.name, layer_type=m.type, scale=m.scale, options=FAST)
        assert lm.status == ref.status, lm.name
        for k in METRICS:
            a, b = getattr(lm, k), getattr(ref, k)
            assert (a is None) == (b is None), (lm.name, k)
            if a is not None:
                assert a == pytest.approx(b, rel=1e-6, abs=1e-9), (lm.name, k)
        with_alpha += lm.alpha is not None
    assert with_alpha >= 4  # 64-wide matrices: enough eigenvalues for a power-law fit


@pytest.mark.parametrize("kind", sorted(MODELS))
def test_forward_pass_computes_with_the_effective_weight(kind):
    """Two active adapters: the adapted layer's output is x·W_effᵀ + b (dropout off in eval mode)."""
    make, typ, fused = MODELS[kind]
    pm = make()
    pm.add_adapter(
        "second",
        peft.LoraConfig(
            r=2,
            lora_alpha=4,
            target_modules=["c_attn"] if kind == "gpt2" else ["query"],
            fan_in_fan_out=kind == "gpt2",
            init_lora_weights=False,
        ),
    )
    pm.base_model.set_adapter(["default", "second"])
    pm.eval()
    layer = lora_layers(pm)[PREFIX + fused]
    assert sorted(layer.active_adapters) == ["default", "second"]
    x = torch.randn(3, 64)
    names = [f"{PREFIX}{fused}.{p}" for p in "qkv"] if kind == "gpt2" else [PREFIX + fused]
    specs = {s.name: s for s in extract_matrices(pm)}
    W = torch.cat([specs[n].tensor for n in names])  # out x in
    with torch.no_grad():
        y = layer(x)
    torch.testing.assert_close(y, x @ W.T + layer.base_layer.bias, rtol=1e-5, atol=1e-6)


def test_active_merged_and_disabled_adapters():
    pm = bert_peft()
    name = PREFIX + MODELS["bert"][2]
    layer = lora_layers(pm)[name]
    w0 = layer.base_layer.weight.detach().clone()
    d_default = layer.get_delta_weight("default").detach()
    pm.add_adapter(
        "second", peft.LoraConfig(r=2, lora_alpha=4, target_modules=["query", "value"], init_lora_weights=False)
    )

    def eff(lora: str = "effective"):
        return {s.name: s.tensor.clone() for s in extract_matrices(pm, lora=lora)}

    torch.testing.assert_close(eff()[name], w0 + d_default)  # only the active adapter counts
    pm.set_adapter("second")
    torch.testing.assert_close(eff()[name], w0 + layer.get_delta_weight("second").detach())
    df = describe(pm).set_index("param")
    row = df.loc[f"{name}.lora_A.default.weight"]
    assert row.status == "skipped" and "not active" in row.reason and row.matrix == ""
    row = df.loc[f"{name}.lora_B.second.weight"]
    assert row.status == "analysed" and row.matrix == name
    assert row.reason == f"analysed as part of {name} (effective weight)"

    pm.set_adapter("default")
    pm.base_model.merge_adapter()  # W0 now holds the update: not added twice
    assert layer.merged
    got = eff("all")
    torch.testing.assert_close(got[name], layer.base_layer.weight.detach())
    torch.testing.assert_close(got[name], w0 + d_default)
    torch.testing.assert_close(got[f"{name}.base"], w0, rtol=1e-6, atol=1e-6)  # W0 without the merged adapter
    pm.base_model.unmerge_adapter()
    with pm.disable_adapter():  # disabled: the base weight
        torch.testing.assert_close(eff()[name], w0)
        assert "disabled" in describe(pm).set_index("param").loc[f"{name}.lora_A.default.weight"].reason
    torch.testing.assert_close(eff()[name], w0 + d_default)


@pytest.mark.parametrize("kind", sorted(MODELS))
def test_describe_lists_lora_factors_as_part_of_their_layer(kind):
    make, _, fused = MODELS[kind]
    pm = make()
    df = describe(pm)
    lora_rows = df[df.param.str.contains(r"\.lora_[AB]\.")]
    assert len(lora_rows) == 2 * len(lora_layers(pm))
    for r in lora_rows.itertuples():
        layer = r.param.split(".lora_")[0]
        assert r.status == "analysed", r.param
        assert r.reason == f"analysed as part of {layer} (effective weight)"
        assert r.matrix.split(", ")[0].startswith(layer)
    assert not df.matrix.str.contains("lora_").any()  # no factor is analysed as a matrix of its own
    base = df.set_index("param").loc[f"{PREFIX}{fused}.base_layer.weight"]
    assert base.status == "analysed" and base.reason.startswith("analysed as part of")
    assert df.attrs["num_matrices"] == len(extract_matrices(pm))


# ------------------------------------------------------------------ the update B·A and the base W0
@pytest.mark.parametrize("kind", sorted(MODELS))
def test_update_matrix_has_r_nonzero_eigenvalues_and_no_alpha(kind):
    make, typ, _ = MODELS[kind]
    pm = make()
    specs = {s.name: s for s in extract_matrices(pm, lora="all")}
    layers = lora_layers(pm)
    updates = [n for n in specs if n.endswith(".lora_update")]
    assert len(updates) == sum(1 for n in specs if n + ".lora_update" in specs) >= len(layers)
    assert all(n[: -len(".lora_update")] + ".base" in specs for n in updates)
    for n in updates:
        eff = n[: -len(".lora_update")]
        layer, rows = owner(layers, eff)
        full = out_in(layer, layer.get_delta_weight("default"))[rows]  # out x in, like the effective matrix
        u = specs[n]
        assert u.type == typ and min(u.shape) == R and max(u.shape) == max(full.shape)
        sv_full = np.linalg.svd(as_np(full), compute_uv=False)
        sv = np.linalg.svd(as_np(u.tensor), compute_uv=False)
        np.testing.assert_allclose(sv, sv_full[:R], rtol=1e-4)  # the same non-zero singular values ...
        assert sv_full[R] < 1e-5 * sv_full[0]  # ... of a rank-R matrix
        lm = analyze_matrix(u.tensor, n, layer_type=u.type, options=FAST)
        assert lm.num_evals == R and lm.matrix_rank == R
        assert lm.status == "too_few_evals" and lm.alpha is None and lm.alpha_weighted is None
        assert "min_evals" in lm.message and "no power-law fit" in lm.message
        # the effective weight is base + update
        base = specs[eff + ".base"].tensor
        torch.testing.assert_close(specs[eff].tensor, base + full, rtol=1e-5, atol=1e-6)


def test_lora_option_is_checked():
    pm = gpt2_peft()
    with pytest.raises(ValueError, match="lora must be one of"):
        extract_matrices(pm, lora="update")
    with pytest.raises(ValueError, match="lora must be one of"):
        wwmonitor.Monitor(pm, store=False, lora="both")
    names = [s.name for s in weight_inventory(pm, lora="effective+update")[0]]
    assert any(n.endswith(".lora_update") for n in names) and not any(n.endswith(".base") for n in names)


# ------------------------------------------------------------------ training: the snapshots follow
@pytest.mark.parametrize("kind", sorted(MODELS))
def test_snapshots_follow_the_effective_weights_during_training(tmp_path, kind):
    make, _, _ = MODELS[kind]
    pm = make(seed=3)
    base_before = {n: m.base_layer.weight.detach().clone() for n, m in lora_layers(pm).items()}
    expected = []
    with wwmonitor.Monitor(
        pm, tmp_path, run_name="lora", every_n_epochs=None, options=FAST, analysis_device="cpu", lora="effective+update"
    ) as mon:
        for step in range(3):
            if step:
                train(pm, 2, seed=step)
            merged = merged_specs(pm)
            expected.append(
                {n: analyze_matrix(s.tensor, n, layer_type=s.type, options=FAST) for n, s in merged.items()}
            )
            assert mon.snapshot(step=step)
        mon.flush()
        results = mon.results
    assert [r.step for r in results] == [0, 1, 2]
    for n, m in lora_layers(pm).items():  # only the adapters trained
        torch.testing.assert_close(m.base_layer.weight.detach(), base_before[n], rtol=0, atol=0)
    changed = 0
    for r, exp in zip(results, expected):
        by = {lm.name: lm for lm in r.layers}
        for name, ref in exp.items():
            lm = by[PREFIX + name]
            assert lm.log_norm == pytest.approx(ref.log_norm, rel=1e-6), (r.step, name)  # this step's weight
            assert lm.stable_rank == pytest.approx(ref.stable_rank, rel=1e-6), (r.step, name)
        for name, lm in by.items():
            if name.endswith(".lora_update"):
                assert lm.status == "too_few_evals" and lm.alpha is None and lm.matrix_rank == R
                assert r.esds[name].size == R  # the ESD: the R non-zero eigenvalues
    first, last = ({lm.name: lm for lm in r.layers} for r in (results[0], results[-1]))
    for name in first:
        if name.endswith(".lora_update") or owner(lora_layers(pm), name)[0] is not None:
            changed += first[name].log_norm != last[name].log_norm
        else:  # frozen, not adapted: unchanged
            assert first[name].log_norm == last[name].log_norm, name
    assert changed >= 4
    run = wwmonitor.load_run(mon.run_dir)
    st = run.layer_status
    upd = st[st.layer.str.endswith(".lora_update")]
    assert len(upd) and (upd.status == "too_few_evals").all()


# ------------------------------------------------------------------ deltas from the pre-LoRA model
def test_delta_from_the_plain_model_is_the_lora_update(tmp_path):
    """base_model = the model before get_peft_model (names without the peft prefix): the delta of an
    adapted matrix is its LoRA update, of a frozen one exactly zero."""
    pm = gpt2_peft(seed=5)
    plain = {k: v.detach().clone() for k, v in copy.deepcopy(pm).unload().state_dict().items()}
    with wwmonitor.Monitor(
        pm, tmp_path, run_name="d", every_n_epochs=None, options=FAST, analysis_device="cpu", base_model=plain
    ) as mon:
        assert mon.snapshot(step=1)
        mon.flush()
        res = mon.results[0]
    layers = lora_layers(pm)
    for lm in res.layers:
        short = lm.name[len(PREFIX) :]
        layer, rows = owner(layers, lm.name)
        if layer is not None:
            d = out_in(layer, layer.get_delta_weight("default"))[rows]
            w0 = out_in(layer, layer.base_layer.weight)[rows]
            want = float(torch.linalg.norm(d) / torch.linalg.norm(w0))
            assert lm.delta_rel_norm == pytest.approx(want, rel=1e-5), short
            dm = analyze_matrix(d, short, layer_type=lm.type, options=FAST)  # the delta is the LoRA update
            assert lm.delta_status == dm.status
            assert lm.delta_stable_rank == pytest.approx(dm.stable_rank, rel=1e-4)
            assert lm.delta_log_spectral_norm == pytest.approx(dm.log_spectral_norm, rel=1e-4)
        else:
            assert lm.delta_rel_norm == 0.0 and lm.delta_status == "zero_matrix" and lm.delta_alpha is None, short


# ------------------------------------------------------------------ the example
@pytest.mark.slow
def test_example_lora_finetune(tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    r = subprocess.run(
        [
            sys.executable,
            str(ROOT / "examples" / "lora_finetune.py"),
            "--out",
            "ex",
            "--epochs",
            "2",
            "--steps-per-epoch",
            "3",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )
    assert r.returncode == 0, f"{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    assert "lora_update" in r.stdout and "run store:" in r.stdout
    run = wwmonitor.load_run(tmp_path / "ex" / "runs" / "lora-gpt2")
    assert run.steps == [0, 3, 6]
    m = run.metrics
    rel = m[(m.metric == "delta_rel_norm") & m.layer.str.endswith("h.0.attn.c_attn.q")]
    assert list(rel.step) == [0, 3, 6] and rel.value.iloc[0] == 0.0 and (rel.value.iloc[1:] > 0).all()
    st = run.layer_status
    upd = st[st.layer.str.endswith(".lora_update")]
    assert (upd[upd.step == 0].status == "zero_matrix").all()  # peft starts with B = 0
    assert len(upd[upd.step > 0]) and (upd[upd.step > 0].status == "too_few_evals").all()
