"""SETOL's ERG / det X = 1 metrics (detX_num, detX_val, ERG_gap) against weightwatcher 0.7.7.

weightwatcher always runs in a subprocess (importing it silences warnings process-wide):
``ww_reference.ww_analyze(model, detX=True)`` for whole models, and a small child that calls
``RMT_Util.rescale_eigenvalues`` / ``detX_constraint`` / ``un_rescale_eigenvalues`` exactly as
``WeightWatcher.apply_detX`` does, for eigenvalue arrays (edge cases and the float64 underflow regime).
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn

import wwmonitor
from wwmonitor.metrics import METRIC_NAMES, LayerMetrics, detx_constraint
from wwmonitor.model import analyze_model

sys.path.insert(0, str(Path(__file__).parent))
from model_zoo import build  # noqa: E402
from ww_reference import ww_analyze  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_blas_thread")

ERG_FIELDS = ("detX_num", "detX_val", "ERG_gap")


# ---------------------------------------------------------------- models vs analyze(detX=True)


def _trained_like(n_out: int, n_in: int, beta: float, noise: float, rng: np.random.Generator) -> np.ndarray:
    """``U diag(i^-beta) Vᵀ`` plus Gaussian noise: a power-law tail (alpha ≈ 1 + 1/(2 beta)) on a bulk."""
    k = min(n_out, n_in)
    U, _ = np.linalg.qr(rng.standard_normal((n_out, k)))
    V, _ = np.linalg.qr(rng.standard_normal((n_in, k)))
    return (U * np.arange(1, k + 1) ** (-beta)) @ V.T + noise * rng.standard_normal((n_out, n_in)) / np.sqrt(n_in)


def heavy_model() -> nn.Module:
    """Heavy-tailed random, trained-like, Pareto and low-rank Linear layers, and a large Conv2d (4608 pooled
    eigenvalues: weightwatcher's float64 product underflows there, see docs/metrics.md)."""
    rng = np.random.default_rng(11)
    mats = [
        rng.standard_t(2.5, (600, 300)) / np.sqrt(300),  # heavy-tailed random (Student-t entries)
        _trained_like(500, 400, 0.5, 0.05, rng),  # alpha near 2
        _trained_like(500, 400, 0.25, 0.05, rng),  # alpha near 3
        rng.pareto(1.5, (300, 500)) * np.sign(rng.standard_normal((300, 500))) / 100,
        rng.standard_normal((400, 40)) @ rng.standard_normal((40, 300)) / 40,  # low rank (+ float32 rounding)
    ]
    layers: list[nn.Module] = []
    for W in mats:
        lin = nn.Linear(W.shape[1], W.shape[0])
        with torch.no_grad():
            lin.weight.copy_(torch.from_numpy(W.astype(np.float32)))
        layers.append(lin)
    torch.manual_seed(3)
    layers.append(nn.Conv2d(512, 512, 3))
    return nn.Sequential(*layers).eval()


def _models() -> dict[str, nn.Module]:
    return {"mlp": build("small_mlp"), "cnn": build("cnn"), "heavy": heavy_model()}


@pytest.mark.parametrize("name", ["mlp", "cnn", "heavy"])
def test_equals_weightwatcher_analyze_detx(name):
    model = _models()[name]
    ref = ww_analyze(model, detX=True, min_evals=50)
    ours = analyze_model(model, min_evals=50).to_pandas().set_index("name")
    assert len(ref) >= 3
    for r in ref.itertuples(index=False):
        o = ours.loc[str(r.name)]
        assert o["status"] == "ok", (r.name, o["message"])
        assert int(o["detX_num"]) == int(r.detX_num), r.name
        assert int(o["num_pl_spikes"]) == int(r.num_pl_spikes), r.name
        assert int(o["ERG_gap"]) == int(r.ERG_gap), r.name
        np.testing.assert_allclose(float(o["detX_val"]), float(r.detX_val), rtol=1e-6, err_msg=str(r.name))
    print(
        f"\n{name}: "
        + "; ".join(
            f"{r.name}: n={r.num_evals} detX_num={r.detX_num} ERG_gap={r.ERG_gap}" for r in ref.itertuples(index=False)
        )
    )


# ---------------------------------------------------------------- eigenvalue arrays vs RMT_Util

_WW_DETX = r"""
import json, sys
import numpy as np
import logging; logging.disable(logging.CRITICAL)
from weightwatcher.RMT_Util import detX_constraint, rescale_eigenvalues, un_rescale_eigenvalues
data = np.load(sys.argv[1])
out = {}
for key in data.files:
    evals, wscale = rescale_eigenvalues(data[key])        # WeightWatcher.apply_detX, weightwatcher.py 3087
    num, idx = detX_constraint(evals, rescale=False)      # 3088
    val = un_rescale_eigenvalues(evals, wscale)[idx]      # 3123-3124: detX_val
    out[key] = [int(num), int(idx), float(val)]
print("@@JSON@@" + json.dumps(out))
"""


def _ww_detx(arrays: dict[str, np.ndarray]) -> dict[str, list]:
    with tempfile.TemporaryDirectory(prefix="ww_detx_") as d:
        path = Path(d) / "evals.npz"
        np.savez(path, **{k: np.asarray(v, dtype=np.float64) for k, v in arrays.items()})
        proc = subprocess.run([sys.executable, "-c", _WW_DETX, str(path)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.split("@@JSON@@", 1)[1])


def _gram_evals(rng: np.random.Generator, a: int, b: int) -> np.ndarray:
    W = rng.standard_normal((a, b))
    return np.clip(np.linalg.eigvalsh(W.T @ W), 0, None)


def _spectra() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(7)
    arrays = {
        "mp_300x200": _gram_evals(rng, 300, 200),
        "pooled_9x512": np.concatenate([_gram_evals(rng, 512, 512) for _ in range(9)]),  # underflow regime
        "lognormal_8192": rng.lognormal(0.0, 1.0, 8192),  # underflow regime
        "lognormal_wide": rng.lognormal(0.0, 6.0, 1000),
        "pareto_3000": rng.pareto(1.2, 3000),
        "student_t": np.clip(np.linalg.eigvalsh(np.cov(rng.standard_t(2.0, (400, 800)))), 0, None),
        "zeros": np.concatenate([np.zeros(50), rng.uniform(0.5, 1.5, 150)]),
        "near_flat": 1.0 + 1e-15 * rng.standard_normal(500),
        "tie_then_exhaust": np.array([0.5, 0.5, 1.0, 2.0]),  # products 2, 2, 1.0 (not < 1): loop runs out
        "tie_then_hit": np.array([0.5, 0.5, 0.5, 0.5, 1.0, 1.0, 2.0, 2.0]),
        "exhaust": np.array([0.5, 1.25, 1.25]),
        "two": np.array([1.0, 3.0]),
        "flat": np.full(10, 3.0),
        "single": np.array([2.0]),
    }
    return {k: np.sort(v) for k, v in arrays.items()}


def _exact_crossing(ev: np.ndarray) -> int:
    """The mathematical count: the largest idx with Σ_{j>=idx} ln r_j < 0 (no float64 products)."""
    r = ev * (ev.size / ev.sum())
    s = np.cumsum(np.log(r)[::-1])[::-1]
    return ev.size - (int(np.flatnonzero(s[1:] < 0)[-1]) + 1)


def test_equals_weightwatcher_detx_constraint_on_eigenvalue_arrays():
    arrays = _spectra()
    ref = _ww_detx(arrays)
    for key, ev in arrays.items():
        num, idx, val = ref[key]
        got_num, got_val = detx_constraint(ev)
        if num == 0:  # weightwatcher's placeholder (fewer than 2 eigenvalues, or a flat spectrum)
            assert key in ("flat", "single")
            assert (got_num, got_val) == (None, None), key
            continue
        assert got_num == num, key
        assert got_val == pytest.approx(val, rel=1e-12), key
    # the loop that runs out keeps weightwatcher's idx = 1 and detX_num = n
    assert ref["tie_then_exhaust"][:2] == [4, 1] and ref["exhaust"][:2] == [3, 1]
    assert ref["tie_then_hit"][:2] == [7, 1]
    # weightwatcher's float64 products underflow on large spectra: its count (which we return) is not
    # the exact trace-log crossing there
    for key in ("pooled_9x512", "lognormal_8192"):
        assert ref[key][0] < _exact_crossing(arrays[key]), key


# ---------------------------------------------------------------- our implementation, no weightwatcher


def _ww_loop(ev: np.ndarray) -> tuple:
    """A transcription of weightwatcher's apply_detX + RMT_Util.detX_constraint (placeholders as None)."""
    n = ev.size
    wscale = np.sqrt(n) / np.sqrt(np.sum(ev))
    r = (wscale * wscale) * ev
    if n < 2 or not r[0] < r[-1]:
        return None, None
    num, idx = n, 1
    with np.errstate(all="ignore"):
        for i in range(n - 1, 0, -1):
            if np.prod(r[i:]) < 1.0:
                num, idx = n - i, i
                break
    return num, float(r[idx] / (wscale * wscale))


def test_fast_scan_equals_the_loop_on_many_spectra():
    rng = np.random.default_rng(0)
    for t in range(600):
        n = int(rng.integers(2, 400))
        kind = t % 5
        if kind == 0:
            ev = _gram_evals(rng, n + int(rng.integers(0, 200)), n)
        elif kind == 1:
            ev = rng.pareto(rng.uniform(0.3, 4.0), n)
        elif kind == 2:
            ev = rng.lognormal(0.0, rng.uniform(0.1, 12.0), n)
        elif kind == 3:
            ev = np.concatenate([np.zeros(int(rng.integers(0, n))), rng.uniform(0.5, 1.5, n)])
        else:
            ev = np.concatenate([rng.uniform(0.2, 1.0, 1), 1.0 + 1e-3 * rng.standard_normal(n)])
        ev = np.sort(np.clip(ev, 0, None))
        assert detx_constraint(ev) == _ww_loop(ev), (t, n, kind)
    # large spectra: the products underflow, the scan must fall back on np.prod where it does
    for t in range(8):
        n = int(rng.integers(3000, 9000))
        ev = rng.lognormal(0.0, rng.uniform(0.3, 3.0), n) if t % 2 else rng.chisquare(rng.uniform(0.5, 5.0), n)
        ev = np.sort(ev)
        assert detx_constraint(ev) == _ww_loop(ev), (t, n)


def test_fields_are_optional_metrics_and_none_when_not_computable():
    lm = LayerMetrics("x")
    assert all(getattr(lm, f) is None for f in ERG_FIELDS)
    assert set(ERG_FIELDS) <= set(METRIC_NAMES)
    rng = np.random.default_rng(1)
    small = wwmonitor.analyze_matrix(rng.standard_normal((12, 8)), "small")  # too few eigenvalues: no fit
    assert small.status == "too_few_evals"
    assert isinstance(small.detX_num, int) and isinstance(small.detX_val, float) and small.ERG_gap is None
    flat = wwmonitor.analyze_matrix(np.eye(64), "eye")  # all eigenvalues exactly 1
    assert all(getattr(flat, f) is None for f in ERG_FIELDS)
    zero = wwmonitor.analyze_matrix(np.zeros((64, 64)), "zero")
    assert zero.status == "zero_matrix" and all(getattr(zero, f) is None for f in ERG_FIELDS)
    lm = wwmonitor.analyze_matrix(rng.standard_normal((300, 200)), "ok")
    assert lm.status == "ok" and lm.ERG_gap == lm.detX_num - lm.num_pl_spikes
    assert {"detX_num", "detX_val", "ERG_gap"} <= set(lm.numeric())


def test_extreme_scale_keeps_the_count_and_rescales_detx_val():
    W = np.random.default_rng(2).standard_normal((200, 100))
    ref = wwmonitor.analyze_matrix(W, "w")
    tiny = wwmonitor.analyze_matrix(W * 2.0**-450, "w")  # analysed as W / 2^e, scale put back
    assert tiny.detX_num == ref.detX_num  # scale-free
    assert tiny.detX_val == pytest.approx(ref.detX_val * 2.0**-900, rel=1e-9)  # σ² axis, true scale
    # weightwatcher's 1e-5 eigenvalue floor leaves such a matrix without a power-law fit, hence no gap
    assert tiny.status == "fit_failed" and tiny.ERG_gap is None and ref.ERG_gap is not None


def test_logged_by_default_and_stored(tmp_path):
    from wwmonitor.records import SnapshotResult
    from wwmonitor.sinks._render import DEFAULT_SCALARS, layer_scalars
    from wwmonitor.store import RunStore, load_run

    assert {"detX_num", "ERG_gap"} <= set(DEFAULT_SCALARS)
    lm = wwmonitor.analyze_matrix(np.random.default_rng(3).standard_normal((300, 200)), "fc")
    assert layer_scalars(lm, DEFAULT_SCALARS)["ERG_gap"] == lm.ERG_gap
    assert "ERG_gap" not in layer_scalars(LayerMetrics("x"), DEFAULT_SCALARS)  # None is never logged
    st = RunStore(tmp_path / "run")
    st.set_meta({"name": "r", "run_id": "r", "config": {}})
    st.set_layers([("fc", "Linear", lm.shape)])
    st.write(SnapshotResult(step=1, epoch=None, time=time.time(), layers=[lm], summary={}))
    st.close()
    row = load_run(tmp_path / "run").to_pandas().set_index("layer").loc["fc"]
    assert row["detX_num"] == lm.detX_num and row["ERG_gap"] == lm.ERG_gap and row["detX_val"] == lm.detX_val


# ---------------------------------------------------------------- the report's SETOL-ideal marker


def test_setol_ideal_rule():
    from wwmonitor.report.html import setol_ideal

    assert setol_ideal(2.0, 0, 20) is True
    assert setol_ideal(2.25, 1, 10) is True and setol_ideal(1.75, -1, 10) is True
    assert setol_ideal(2.3, 0, 20) is False  # alpha too far from 2
    assert setol_ideal(2.0, 2, 20) is False  # gap above max(1, 5% of 20 = 1)
    assert setol_ideal(2.0, 5, 100) is True and setol_ideal(2.0, 6, 100) is False  # 5% of the tail
    assert setol_ideal(None, 0, 20) is None and setol_ideal(2.0, float("nan"), 20) is None


def test_report_marks_ideal_layers_in_the_final_table(tmp_path):
    from wwmonitor.records import SnapshotResult
    from wwmonitor.report.html import IDEAL_LEGEND, write_report
    from wwmonitor.store import RunStore

    rng = np.random.default_rng(4)
    lms, esds = [], {}
    for name in ("ideal_fc", "plain_fc"):
        lm = wwmonitor.analyze_matrix(rng.standard_t(2.5, (300, 150)), name, layer_type="Linear", keep_esd=True)
        esds[name] = lm.esd
        lms.append(lm)
    # set the values the marker reads (the rule is tested above; here: that the table shows it)
    lms[0].alpha, lms[0].num_pl_spikes, lms[0].ERG_gap = 2.1, 40, -2
    lms[1].alpha, lms[1].num_pl_spikes, lms[1].ERG_gap = 2.1, 40, 30
    st = RunStore(tmp_path / "run")
    st.set_meta({"name": "r", "run_id": "r", "config": {}})
    st.set_layers([(lm.name, "Linear", lm.shape) for lm in lms])
    st.write(SnapshotResult(step=1, epoch=None, time=time.time(), layers=lms, esds=esds, summary={}))
    st.close()
    html = write_report(tmp_path / "run", tmp_path / "report", n_esd_steps=1).read_text(encoding="utf-8")
    final = html.split('id="final"', 1)[1].split("<h2", 1)[0]
    assert IDEAL_LEGEND in final
    table = final.split("</table>", 1)[0]  # the metrics table (the phase reasons follow)
    assert '<th class="">SETOL ideal</th>' in table and "ERG_gap</th>" in table
    rows = {r.split("</td>", 1)[0].rsplit(">", 1)[-1]: r for r in table.split("<tr>")[2:]}
    assert '<span class="good">ideal</span>' in rows["ideal_fc"]
    assert '<span class="good">ideal</span>' not in rows["plain_fc"] and "<td" in rows["plain_fc"]
