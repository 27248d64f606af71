"""Eigenvector localization metrics (wwmonitor.localization)."""

from __future__ import annotations

import math

import numpy as np
import pytest

import wwmonitor
from wwmonitor.localization import (
    localization_metrics,
    localization_ratio,
    participation_ratio,
    vector_entropy,
)
from wwmonitor.synthetic import bbp_threshold, heavy_tailed, rank_collapse, spiked


def test_vector_formulas_on_extremes() -> None:
    M = 64
    e = np.zeros((M, 1))
    e[3] = -1.0
    flat = np.full((M, 1), 1 / math.sqrt(M))
    assert localization_ratio(e)[0] == pytest.approx(1.0)
    assert localization_ratio(flat)[0] == pytest.approx(M)
    assert participation_ratio(e)[0] == pytest.approx(1.0)
    assert participation_ratio(flat)[0] == pytest.approx(M**0.25)
    assert vector_entropy(e)[0] == pytest.approx(0.0)
    assert vector_entropy(flat)[0] == pytest.approx(1.0)
    # scale of v does not matter
    assert vector_entropy(3 * flat)[0] == pytest.approx(1.0)
    assert participation_ratio(3 * e)[0] == pytest.approx(1.0)


def test_random_unit_vectors_match_theory() -> None:
    rng = np.random.default_rng(0)
    M = 400
    V = rng.standard_normal((M, 300))
    V /= np.linalg.norm(V, axis=0)
    assert participation_ratio(V).mean() == pytest.approx((M / 3) ** 0.25, rel=0.02)
    assert vector_entropy(V).mean() == pytest.approx(1 - 0.7296 / math.log(M), abs=0.005)


def test_gaussian_matrix_has_no_tail_and_delocalized_bulk() -> None:
    rng = np.random.default_rng(1)
    out = localization_metrics(rng.standard_normal((400, 200)))
    assert out["loc_num_tail"] == 0 and out["loc_num_bulk"] == 200
    assert "loc_localization_ratio_tail" not in out  # empty group: no NaN keys
    assert out["loc_vector_entropy_bulk"] == pytest.approx(1 - 0.7296 / math.log(200), abs=0.01)


def test_localized_spike_is_detected() -> None:
    """A planted spike along a coordinate axis is localized; a random-direction spike is not."""
    rng = np.random.default_rng(2)
    N, M = 600, 300
    d = 6 * bbp_threshold(N / M)
    G = rng.standard_normal((N, M))
    u = rng.standard_normal(N)
    u /= np.linalg.norm(u)
    v_loc = np.zeros(M)
    v_loc[17] = 1.0
    W_loc = G + math.sqrt(N) * d * np.outer(u, v_loc)
    loc = localization_metrics(W_loc)
    deloc = localization_metrics(spiked(N, M, np.array([d]), rng))
    assert loc["loc_num_tail"] == deloc["loc_num_tail"] == 1
    assert loc["loc_localization_ratio_tail"] < 5 < 0.5 * loc["loc_localization_ratio_bulk"]
    assert loc["loc_vector_entropy_tail"] < 0.3 < deloc["loc_vector_entropy_tail"]
    assert deloc["loc_localization_ratio_tail"] > 0.5 * deloc["loc_localization_ratio_bulk"]


def test_heavy_tailed_tail_is_more_localized_than_bulk() -> None:
    """The seeds' observation: tail eigenvectors of heavy-tailed matrices are localized."""
    rng = np.random.default_rng(3)
    W = heavy_tailed(500, 250, rng, mu=1.8)
    out = localization_metrics(W)
    # default split: the spikes of the MP fit (eigenvalues above λ+ + TW margin) are the tail
    mp = wwmonitor.fit_mp(wwmonitor.esd(W), 2.0, M=250)
    assert out["loc_num_tail"] == mp.num_spikes >= 5
    assert out["loc_num_bulk"] == 250 - mp.num_spikes
    for k in ("localization_ratio", "participation_ratio", "vector_entropy"):
        assert out[f"loc_{k}_tail"] < out[f"loc_{k}_bulk"], k


def test_xmin_threshold_and_orientation() -> None:
    rng = np.random.default_rng(4)
    W = rng.standard_normal((300, 150))
    ev = np.linalg.eigvalsh(W.T @ W)
    xmin = float(np.sort(ev)[-10])  # top 10 on the σ² axis
    a = localization_metrics(W, xmin=xmin)
    b = localization_metrics(W.T, xmin=xmin)
    assert a["loc_num_tail"] == 10 and a["loc_num_bulk"] == 140
    for k in a:
        assert a[k] == pytest.approx(b[k], rel=1e-9)


def test_rank_collapse_null_space_is_excluded() -> None:
    rng = np.random.default_rng(5)
    W = rank_collapse(200, 100, rng, rank=30, dtype=np.float64)
    out = localization_metrics(W, xmin=1e300)
    assert out["loc_num_bulk"] == 30 and out["loc_num_tail"] == 0


def test_torch_tensor_input() -> None:
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(6)
    W = rng.standard_normal((120, 80)).astype(np.float32)
    a = localization_metrics(torch.from_numpy(W))
    b = localization_metrics(W)
    assert a.keys() == b.keys()
    for k in a:
        assert a[k] == pytest.approx(b[k], rel=1e-6)


def test_bad_input() -> None:
    with pytest.raises(ValueError, match="layer 'fc'.*2-D"):
        localization_metrics(np.ones(5), name="fc")
    with pytest.raises(ValueError, match="non-finite"):
        localization_metrics(np.array([[1.0, np.nan], [0.0, 1.0]]))
    with pytest.raises(ValueError, match="all-zero"):
        localization_metrics(np.zeros((10, 5)))
    with pytest.raises(ValueError, match="xmin"):
        localization_metrics(np.eye(5), xmin=float("nan"))


def test_analyze_matrix_option_adds_loc_columns() -> None:
    rng = np.random.default_rng(7)
    W = heavy_tailed(400, 200, rng, mu=2.0)
    m = wwmonitor.analyze_matrix(W, localization=True)
    d = m.to_dict()
    assert d["loc_num_tail"] == m.num_pl_spikes  # tail = eigenvalues >= power-law xmin
    assert d["loc_vector_entropy_tail"] < d["loc_vector_entropy_bulk"]
    assert "loc_num_tail" not in wwmonitor.analyze_matrix(W).to_dict()
