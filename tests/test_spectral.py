"""ESD accuracy: the float64 Gram + eigvalsh route against a float64 SVD."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import wwmonitor
from wwmonitor.spectral import esd_batched, squared_singular_values


@pytest.mark.parametrize("shape", [(300, 100), (100, 300), (256, 256), (512, 64)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_esd_matches_float64_svd(shape, dtype):
    rng = np.random.default_rng(0)
    W = rng.standard_normal(shape).astype(dtype)
    sv = np.linalg.svd(W.astype(np.float64), compute_uv=False)
    ref = np.sort(sv**2)
    ev = squared_singular_values(W)
    assert ev.shape == (min(shape),)
    assert np.all(np.diff(ev) >= 0)
    # absolute error relative to lambda_max, and relative error on the top of the spectrum
    assert np.max(np.abs(ev - ref)) <= 1e-10 * ref[-1]
    np.testing.assert_allclose(ev[-10:], ref[-10:], rtol=1e-12)
    lam = wwmonitor.esd(W)
    np.testing.assert_allclose(lam, ref / max(shape), rtol=1e-10, atol=1e-12 * ref[-1])


def test_rank_deficient_small_eigenvalues_are_resolved():
    """Rank-collapse detection needs the zero eigenvalues to come out ~0 (float32 Gram fails this)."""
    rng = np.random.default_rng(1)
    W = (rng.standard_normal((400, 20)) @ rng.standard_normal((20, 400))).astype(np.float32)
    ev = squared_singular_values(W)
    assert np.count_nonzero(ev > ev.max() * 1e-10) == 20


def test_batched_equals_loop():
    rng = np.random.default_rng(2)
    stack = rng.standard_normal((9, 64, 32))
    ev = esd_batched(stack)
    for k in range(9):
        np.testing.assert_allclose(ev[k], wwmonitor.esd(stack[k]), rtol=1e-10, atol=1e-14)


def test_torch_tensor_input_matches_numpy():
    W = torch.randn(128, 96)
    np.testing.assert_allclose(wwmonitor.esd(W), wwmonitor.esd(W.numpy()), rtol=1e-10, atol=1e-14)
    np.testing.assert_allclose(esd_batched(W.reshape(2, 64, 96)), esd_batched(W.numpy().reshape(2, 64, 96)), rtol=1e-10)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (the device path runs on the GPU machine)")
def test_cuda_path_matches_cpu():  # pragma: no cover - exercised on the GPU machine only
    W = torch.randn(512, 256)
    np.testing.assert_allclose(wwmonitor.esd(W.cuda()), wwmonitor.esd(W), rtol=1e-8, atol=1e-12)


@pytest.mark.parametrize(
    "bad, msg",
    [(np.ones(5), "2-D"), (np.ones((0, 3)), "empty"), (np.array([[1.0, np.nan], [0, 1]]), "non-finite")],
)
def test_bad_input_names_the_matrix(bad, msg):
    with pytest.raises(ValueError, match=msg) as ei:
        wwmonitor.esd(bad, name="layer7")
    assert "layer7" in str(ei.value)
