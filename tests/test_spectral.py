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


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape, r", [((200, 200), 5), ((300, 120), 40), ((64, 256), 1), ((150, 150), 149)])
def test_rank_deficient_matrix_rank_equals_svd(shape, r, dtype):
    """matrix_rank/rank_loss use NumPy's SVD tolerance σ_max·max(N,M)·eps; the Gram
    route alone cannot resolve that (its error is ~sqrt(M·eps)·σ_max), so such
    ESDs are recomputed by SVD and must give exactly numpy.linalg.matrix_rank."""
    from wwmonitor.metrics import matrix_rank

    rng = np.random.default_rng(r)
    W = (rng.standard_normal((shape[0], r)) @ rng.standard_normal((r, shape[1]))).astype(dtype)
    ev = squared_singular_values(W)
    ref = np.sort(np.linalg.svd(W.astype(np.float64), compute_uv=False) ** 2)
    assert np.max(np.abs(ev - ref)) <= 1e-10 * ref[-1]
    assert matrix_rank(ev, shape) == np.linalg.matrix_rank(W.astype(np.float64))
    stack = np.stack([W, rng.standard_normal(shape).astype(dtype)])
    evb = esd_batched(stack, normalize=False)
    np.testing.assert_array_equal(evb[0], ev)
    assert matrix_rank(evb[1], shape) == min(shape)


def test_full_rank_random_matrices_skip_the_svd():
    """The SVD recheck must not fire for ordinary (random, square or not) weights."""
    from wwmonitor.spectral import _gram64, _needs_svd

    rng = np.random.default_rng(8)
    for shape in [(1024, 1024), (512, 512), (784, 1024), (2048, 512)]:
        ev = np.linalg.eigvalsh(_gram64(rng.standard_normal(shape).astype(np.float32)))
        assert not _needs_svd(ev[0], ev[-1], min(shape)), shape


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


@pytest.mark.gpu
@pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a CUDA device (the device path runs on the GPU machine)"
)
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


# ------------------------------------------------ non-finite via the Gram diagonal ----
@pytest.mark.parametrize("bad", [np.inf, -np.inf, np.nan])
def test_single_nonfinite_entry_is_caught_by_gram_diagonal(bad):
    rng = np.random.default_rng(3)
    for shape in [(120, 80), (80, 120)]:  # both orientations of the Gram
        W = rng.standard_normal(shape).astype(np.float32)
        W[17, 61] = bad
        with pytest.raises(ValueError, match="non-finite") as ei:
            squared_singular_values(W, name="blocks.3.fc")
        assert "blocks.3.fc" in str(ei.value)


def test_overflowing_sum_of_squares_is_reported_as_overflow():
    W = np.full((60, 60), 1e200)
    with pytest.raises(ValueError, match="overflow") as ei:
        squared_singular_values(W, name="huge")
    assert "huge" in str(ei.value)


def test_batched_nonfinite_slice_is_caught():
    stack = np.random.default_rng(4).standard_normal((9, 64, 32))
    stack[5, 3, 7] = np.nan
    with pytest.raises(ValueError, match="non-finite") as ei:
        esd_batched(stack, name="conv2")
    assert "conv2" in str(ei.value)


def test_float32_input_is_widened_exactly():
    """float32 products are exact in float64: same ESD as from the float64 copy."""
    W = np.random.default_rng(5).standard_normal((200, 150)).astype(np.float32)
    np.testing.assert_array_equal(squared_singular_values(W), squared_singular_values(W.astype(np.float64)))


# ------------------------------------------------------- analyze_model thread pool ----
def _pool_model() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(6)
    mats = {
        f"layer{i}.weight": rng.standard_normal(s).astype(np.float32)
        for i, s in enumerate([(300, 200), (64, 64), (500, 100), (120, 300), (80, 90), (200, 200)])
    }
    mats["lowrank.weight"] = rng.standard_normal((200, 5)) @ rng.standard_normal((5, 200))  # float64, rank 5
    bad = rng.standard_normal((100, 100)).astype(np.float32)
    bad[0, 0] = np.nan
    mats["broken.weight"] = bad
    return mats


def _rows(rep) -> list[dict]:
    out = []
    for lm in rep.layers:
        d = lm.to_dict()
        out.append({k: v for k, v in d.items() if not isinstance(v, np.ndarray)})
    return out


def test_workers_do_not_change_results_or_order():
    from threadpoolctl import threadpool_limits

    mats = _pool_model()
    seen: list[str] = []
    with threadpool_limits(limits=1, user_api="blas"):  # same BLAS threading in both runs
        seq = wwmonitor.analyze_model(mats, progress=False, workers=1)
        par = wwmonitor.analyze_model(mats, progress=False, workers=3, on_layer=lambda lm: seen.append(lm.name))
    assert [lm.name for lm in par.layers] == [lm.name for lm in seq.layers] == seen
    assert len(seen) == len(mats)
    assert _rows(par) == _rows(seq)
    assert par["lowrank"].rank_loss == 195
    assert par["broken"].status == "non_finite"
    assert all(lm.status == "ok" for lm in par.layers if lm.name != "broken")


def test_pool_limits_blas_threads_during_the_call_and_restores_them():
    from threadpoolctl import threadpool_info

    from wwmonitor.spectral import usable_cpus

    def blas_threads() -> list[int]:
        return [i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"]

    before = blas_threads()
    during: list[list[int]] = []
    wwmonitor.analyze_model(_pool_model(), progress=False, workers=2, on_layer=lambda lm: during.append(blas_threads()))
    cap = max(1, usable_cpus() // 2)
    assert len(during) == len(_pool_model()) and all(t and max(t) <= cap for t in during)
    assert blas_threads() == before


def test_blas_thread_limit_never_raises_the_count():
    from threadpoolctl import threadpool_info, threadpool_limits

    from wwmonitor.spectral import blas_thread_limit

    with threadpool_limits(limits=1, user_api="blas"):
        with blas_thread_limit(8):
            assert all(i["num_threads"] == 1 for i in threadpool_info() if i["user_api"] == "blas")


def test_workers_must_be_positive():
    with pytest.raises(ValueError, match="workers"):
        wwmonitor.analyze_model({"w": np.ones((60, 60))}, workers=0)


@pytest.mark.parametrize("shape", [(1024, 300), (300, 1024), (400, 400)])
def test_low_memory_route_matches_and_saves_memory(shape, monkeypatch):
    import tracemalloc

    import wwmonitor.spectral as spectral

    monkeypatch.setattr(spectral, "LOW_MEMORY_DIRECT_BYTES", 0)  # the in-place route even for small matrices

    rng = np.random.default_rng(5)
    W = rng.standard_normal(shape).astype(np.float32)
    ref = np.sort(np.linalg.svd(W.astype(np.float64), compute_uv=False) ** 2)
    lean = squared_singular_values(W, low_memory=True)
    assert np.max(np.abs(lean - ref)) <= 1e-10 * ref[-1]
    for low in (False, True):  # warm both routes
        squared_singular_values(W, low_memory=low)
    peaks = {}
    for low in (False, True):
        tracemalloc.start()
        squared_singular_values(W, low_memory=low)
        peaks[low] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    M = min(shape)
    assert peaks[True] <= 8 * M * M + 8 * 128 * M + 2**20  # the Gram matrix, one block, small change
    assert peaks[True] < peaks[False]


@pytest.mark.parametrize("shape", [(1024, 300), (300, 1024), (400, 400)])
def test_low_memory_small_matrices_take_the_direct_gram_within_the_bound(shape):
    """Below LOW_MEMORY_DIRECT_BYTES the low-memory route uses the faster default Gram product: the same
    eigenvalues as the default route to 1e-12 relative to the largest, and no more memory than the bound."""
    import tracemalloc

    import wwmonitor.spectral as spectral

    rng = np.random.default_rng(7)
    W = rng.standard_normal(shape).astype(np.float32)
    assert spectral._direct_fits(W.shape)
    ref = squared_singular_values(W)
    lean = squared_singular_values(W, low_memory=True)
    assert np.max(np.abs(lean - ref)) <= 1e-12 * ref[-1]
    tracemalloc.start()
    squared_singular_values(W, low_memory=True)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    M = min(shape)
    assert peak <= 8 * (W.size + M * M) + 2**20  # the float64 copy and the Gram matrix, nothing else
    assert not spectral._direct_fits((50257, 1024))  # an embedding keeps the in-place route


def test_low_memory_route_rank_deficient_and_nonfinite():
    rng = np.random.default_rng(6)
    W = (rng.standard_normal((600, 15)) @ rng.standard_normal((15, 300))).astype(np.float32)
    ev = squared_singular_values(W, low_memory=True)
    assert np.count_nonzero(ev > ev.max() * 1e-10) == 15
    W[3, 4] = np.inf
    with pytest.raises(ValueError, match="lyr.*non-finite"):
        squared_singular_values(W, name="lyr", low_memory=True)


# ------------------------------------------------- inputs that are not real dense matrices ----
def _complex(shape=(120, 80)):
    rng = np.random.default_rng(11)
    return rng.standard_normal(shape) + 1j * rng.standard_normal(shape)


@pytest.mark.parametrize(
    "make",
    [
        lambda: _complex(),
        lambda: _complex().astype(np.complex64),
        lambda: torch.from_numpy(_complex()),
    ],
)
def test_complex_matrix_is_rejected_naming_the_layer(make):
    """A complex matrix used to be analysed as its real part (a ComplexWarning at best)."""
    W = make()
    for fn in (wwmonitor.esd, squared_singular_values):
        with pytest.raises(TypeError, match=r"blocks\.2\.fc: complex-valued matrix \(dtype (torch\.)?complex"):
            fn(W, name="blocks.2.fc")
    stack = W.reshape(2, 60, 80) if isinstance(W, np.ndarray) else W.reshape(2, 60, 80)
    with pytest.raises(TypeError, match=r"conv1: complex-valued stack"):
        esd_batched(stack, name="conv1")


def test_complex_matrix_is_rejected_on_the_device_route():
    """The accelerator route (exercised here on CPU tensors) used to cast complex to float64."""
    from wwmonitor.spectral import _squared_sv_torch

    with pytest.raises(TypeError, match=r"fc: complex-valued matrix \(dtype torch.complex128\)"):
        _squared_sv_torch(torch.from_numpy(_complex()), name="fc")


def test_device_route_checks_and_rescales_like_the_host_route():
    """The accelerator route, run here on CPU tensors: same input checks and extreme-scale handling."""
    from wwmonitor.spectral import _squared_sv_torch

    W0 = torch.from_numpy(np.random.default_rng(15).standard_normal((200, 100)))
    ev0, e0 = _squared_sv_torch(W0, name="w")
    assert e0 == 0
    np.testing.assert_allclose(ev0, squared_singular_values(W0.numpy()), rtol=1e-9, atol=1e-12 * ev0.max())
    ev, e2 = _squared_sv_torch(torch.ldexp(W0, torch.tensor(-1030.0, dtype=torch.float64)), name="w")
    assert e2 < -2000
    np.testing.assert_allclose(np.ldexp(ev, e2 + 2060), ev0, rtol=1e-9)
    with pytest.raises(ValueError, match="w: .*overflows"):
        _squared_sv_torch(W0 * 2.0**900, name="w")
    ev, e2 = _squared_sv_torch(W0 * 2.0**900, name="w", rescale_large=True)
    np.testing.assert_allclose(np.ldexp(ev, e2 - 1800), ev0, rtol=1e-12)
    evs, e2 = _squared_sv_torch(W0.reshape(2, 100, 100), name="w", stack=True)
    assert evs.shape == (2, 100) and e2 == 0
    with pytest.raises(TypeError, match=r"w: sparse tensor"):
        _squared_sv_torch(W0.to_sparse(), name="w")


_NOT_DENSE = {
    "object": r"dtype object",
    "scipy-csr": r"sparse matrix \(scipy\.sparse csr_matrix\)",
    "scipy-coo-array": r"sparse matrix \(scipy\.sparse coo_array\)",
    "torch-coo": r"sparse tensor \(layout torch\.sparse_coo\)",
    "torch-csr": r"sparse tensor \(layout torch\.sparse_csr\)",
}


def _not_dense(kind: str):
    import warnings

    import scipy.sparse as sp

    W = np.random.default_rng(12).standard_normal((90, 70))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # torch: "Sparse CSR tensor support is in beta state"
        return {
            "object": lambda: W.astype(object),
            "scipy-csr": lambda: sp.csr_matrix(W),
            "scipy-coo-array": lambda: sp.coo_array(W),
            "torch-coo": lambda: torch.from_numpy(W).to_sparse(),
            "torch-csr": lambda: torch.from_numpy(W).to_sparse_csr(),
        }[kind]()


@pytest.mark.parametrize("kind", list(_NOT_DENSE))
def test_object_and_sparse_inputs_are_clear_type_errors(kind):
    """Used to be a raw numpy/torch error or "expected a 2-D matrix, got shape ()"."""
    W = _not_dense(kind)
    for fn in (wwmonitor.esd, squared_singular_values, wwmonitor.analyze_matrix):
        with pytest.raises(TypeError, match=_NOT_DENSE[kind]) as ei:
            fn(W, name="enc.proj")
        assert "enc.proj" in str(ei.value)


def test_masked_array_with_masked_entries_is_refused():
    """np.asarray would silently analyse the hidden values behind the mask."""
    W = np.ma.masked_array(np.ones((60, 50)), mask=np.zeros((60, 50), bool))
    W.mask[3, 4] = True
    with pytest.raises(TypeError, match=r"mlp: masked array with 1 masked entr"):
        wwmonitor.esd(W, name="mlp")


# ------------------------------------------------------------- extreme (denormal) scale ----
@pytest.mark.parametrize("log2_scale", [-1030, -530, -1000])
def test_denormal_scale_eigenvalues_underflow_is_an_error_not_zeros(log2_scale):
    """σ² of a matrix at |W| ~ 1e-310 (or 1e-160) is not representable in float64: the ESD
    used to come back as zeros (or as a handful of denormals) -- "all weights are zero"."""
    W = np.ldexp(np.random.default_rng(13).standard_normal((200, 100)), log2_scale)
    assert np.count_nonzero(W) == W.size
    for fn in (wwmonitor.esd, squared_singular_values):
        with pytest.raises(ValueError, match=r"tiny\.w: .*underflow") as ei:
            fn(W, name="tiny.w")
        assert "max |W|" in str(ei.value)
    with pytest.raises(ValueError, match=r"tiny\.w: .*underflow"):
        esd_batched(W.reshape(2, 100, 100), name="tiny.w")


def test_small_scale_eigenvalues_match_where_representable():
    """Guard for the rescaled route: at |W| ~ 2^-515 the top eigenvalues are normal
    floats and must equal the unscaled ones times 2^-1030; the rest are tiny but nonzero."""
    from wwmonitor.metrics import matrix_rank

    W0 = np.random.default_rng(14).standard_normal((200, 100))
    ref = squared_singular_values(W0)
    ev = squared_singular_values(np.ldexp(W0, -515))
    normal = ev >= np.finfo(np.float64).tiny
    assert normal.sum() >= 20
    np.testing.assert_allclose(np.ldexp(ev[normal], 1030), ref[normal], rtol=1e-13)
    assert np.count_nonzero(ev) == 100 and matrix_rank(ev, W0.shape) == 100


# ------------------------------------------------------- failures that must not be silent ----
def test_broken_threadpoolctl_is_logged_not_swallowed(monkeypatch, caplog):
    import logging

    import threadpoolctl

    from wwmonitor.spectral import blas_thread_limit

    class Broken:
        def __init__(self):
            raise RuntimeError("libopenblas probe exploded")

    monkeypatch.setattr(threadpoolctl, "ThreadpoolController", Broken)
    with caplog.at_level(logging.WARNING, logger="wwmonitor"):
        with blas_thread_limit(1):
            pass
    assert any("libopenblas probe exploded" in r.getMessage() and "BLAS" in r.getMessage() for r in caplog.records)


# ------------------------------------------------ the torch (accelerator) route, run on CPU tensors ----
# analysis_device="cuda" runs exactly this code on the GPU; device="torch" runs it on CPU tensors, so CI checks it.
_SIGMA2_AXIS = ("lambda_max", "xmin", "xmax", "mp_sigma2", "lambda_plus", "lambda_minus", "tw_margin", "detX_val")


def _same_metrics(a, b, where=""):
    """Every metric of two LayerMetrics equal: numbers within 1e-9 relative (σ²-axis values that are pure
    round-off of a rank-deficient matrix -- its detX boundary -- within 1e-10·λ_max), the rest exactly."""
    da, db = a.to_dict(), b.to_dict()
    assert da.keys() == db.keys()
    scale = abs(db.get("lambda_max") or 0.0)
    for k, vb in db.items():
        va = da[k]
        if isinstance(vb, float) and isinstance(va, float):
            tol = max(1e-9 * abs(vb), 1e-10 * scale if k in _SIGMA2_AXIS else 0.0)
            assert abs(va - vb) <= tol, f"{where} {k}: {va!r} != {vb!r}"
        else:
            assert va == vb, f"{where} {k}: {va!r} != {vb!r}"


@pytest.mark.parametrize("shape", [(300, 100), (100, 300), (256, 256)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_torch_route_eigenvalues_match_the_numpy_route(shape, dtype):
    """float64 Gram + torch.linalg.eigvalsh: within 1e-10·λ_max of the float64 NumPy route (and of an SVD)."""
    W = torch.randn(*shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64).to(dtype)
    ref = squared_singular_values(W.numpy(), device="cpu")
    ev = squared_singular_values(W, device="torch")
    assert ev.shape == ref.shape and np.all(np.diff(ev) >= 0)
    assert np.max(np.abs(ev - ref)) <= 1e-10 * ref[-1]
    svd = np.sort(np.linalg.svd(W.double().numpy(), compute_uv=False) ** 2)
    assert np.max(np.abs(ev - svd)) <= 1e-10 * svd[-1]
    stack = W.reshape(2, shape[0] // 2, shape[1]) if shape[0] % 2 == 0 else W.reshape(1, *shape)
    np.testing.assert_allclose(
        esd_batched(stack, device="torch"),
        esd_batched(stack.numpy(), device="cpu"),
        rtol=0,
        atol=1e-10 * float(esd_batched(stack.numpy()).max()),
    )


def test_float32_gram_is_not_accurate_enough():
    """Why the device route stays float64: a float32 Gram misses the 1e-10·λ_max budget by orders of
    magnitude and its error exceeds the smallest eigenvalues of a square matrix (rank detection)."""
    W = torch.randn(256, 256, generator=torch.Generator().manual_seed(2))
    ref = squared_singular_values(W, device="cpu")
    ev32 = torch.linalg.eigvalsh(W.T @ W).double().numpy()
    err = np.max(np.abs(ev32 - ref))
    assert err > 1e-8 * ref[-1]
    assert err > ref[0]


def test_torch_route_rank_deficient_matrix_takes_the_svd_like_the_cpu():
    """A rank-20 float64 matrix: the torch route used to report matrix_rank 159 (Gram round-off read as
    rank) where the CPU route gives 20; both now recompute such spectra by a values-only SVD."""
    from wwmonitor.metrics import matrix_rank

    rng = np.random.default_rng(1)
    W = rng.standard_normal((400, 20)) @ rng.standard_normal((20, 160))
    for dev in ("cpu", "torch", None):
        ev = squared_singular_values(torch.from_numpy(W), device=dev)
        assert matrix_rank(ev, W.shape) == 20 == np.linalg.matrix_rank(W), dev
    evb = esd_batched(torch.from_numpy(np.stack([W, rng.standard_normal(W.shape)])), normalize=False, device="torch")
    assert matrix_rank(evb[0], W.shape) == 20 and matrix_rank(evb[1], W.shape) == 160
    lm_t = wwmonitor.analyze_matrix(torch.from_numpy(W), "w", device="torch")
    lm_c = wwmonitor.analyze_matrix(W, "w", device="cpu")
    assert lm_t.matrix_rank == lm_c.matrix_rank == 20 and lm_t.phase == lm_c.phase


def _cases():
    rng = np.random.default_rng(16)
    return {
        "tall": rng.standard_normal((300, 120)).astype(np.float32),
        "wide": rng.standard_normal((90, 400)),
        "square": rng.standard_normal((160, 160)).astype(np.float32),
        "rank5": (rng.standard_normal((200, 5)) @ rng.standard_normal((5, 120))),
        "heavy": (rng.standard_t(2.5, (250, 100))).astype(np.float32),
        "conv-stack": rng.standard_normal((9, 40, 24)).astype(np.float32),
        "tiny": np.ldexp(rng.standard_normal((120, 80)), -1030),
        "zero": np.zeros((60, 50)),
        "few": rng.standard_normal((40, 20)),
    }


@pytest.mark.parametrize("case", list(_cases()))
def test_torch_route_every_metric_equals_the_numpy_route(case):
    W = _cases()[case]
    a = wwmonitor.analyze_matrix(torch.from_numpy(W), case, device="torch", keep_esd=True)
    b = wwmonitor.analyze_matrix(W, case, device="cpu", keep_esd=True)
    esd_a, esd_b = a.esd, b.esd
    fits_a, fits_b = a.fits, b.fits
    _same_metrics(a, b, case)
    assert (esd_a is None) == (esd_b is None) and (fits_a is None) == (fits_b is None)
    if esd_b is not None:
        np.testing.assert_allclose(esd_a, esd_b, rtol=1e-6, atol=1e-7 * float(esd_b.max()))


def test_torch_route_nonfinite_and_bad_device():
    W = np.random.default_rng(17).standard_normal((80, 60))
    W[3, 4] = np.nan
    lm = wwmonitor.analyze_matrix(torch.from_numpy(W), "nan", device="torch")
    assert lm.status == "non_finite" and "1 non-finite" in lm.message
    with pytest.raises(ValueError, match="non-finite"):
        squared_singular_values(torch.from_numpy(W), device="torch", name="nan")
    with pytest.raises(ValueError, match=r"device must be one of"):
        wwmonitor.esd(W, device="gpu")
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="CUDA is not available"):
            wwmonitor.esd(torch.from_numpy(W[:, :10]), device="cuda")


def test_analyze_model_and_monitor_on_the_torch_route(tmp_path):
    """analysis_device plumbing: analyze_model and the Monitor's worker run the device route (here on the
    CPU) and report the metrics of the NumPy route; "auto" on a CPU model is the CPU."""
    from wwmonitor.monitor import Monitor

    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(64, 160), torch.nn.ReLU(), torch.nn.Linear(160, 96), torch.nn.Conv2d(8, 24, 3)
    ).double()
    with torch.no_grad():  # one rank-deficient layer (float64: exactly rank 6): the SVD recheck must run here too
        model[2].weight.copy_(torch.randn(96, 6, dtype=torch.float64) @ torch.randn(6, 160, dtype=torch.float64))
    ref = wwmonitor.analyze_model(model, workers=1, analysis_device="cpu")
    got = wwmonitor.analyze_model(model, workers=1, analysis_device="torch")
    for a, b in zip(got.layers, ref.layers):
        _same_metrics(a, b, a.name)
    with pytest.raises(ValueError, match="analysis_device"):
        wwmonitor.analyze_model(model, analysis_device="tpu")
    results = {}
    for dev in ("cpu", "torch", "auto"):
        with Monitor(model, tmp_path, run_name=dev, every_n_epochs=None, store=False, analysis_device=dev) as mon:
            mon.snapshot(step=0)
        res = mon.results[0]
        results[dev] = res
        assert res.meta["analysis_device"] == ("cpu" if dev == "auto" else dev)
        assert not res.errors
    for a, b in zip(results["torch"].layers, results["cpu"].layers):
        _same_metrics(a, b, a.name)
    assert results["torch"].layers[1].matrix_rank == 6
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="analysis_device='cuda' but CUDA is not available"):
            Monitor(model, tmp_path, run_name="x", analysis_device="cuda")
    with pytest.raises(ValueError, match="analysis_device must be one of"):
        Monitor(model, tmp_path, run_name="y", analysis_device="gpu")


@pytest.mark.gpu
@pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a CUDA device (the device path runs on the GPU machine)"
)
def test_cuda_route_every_metric_and_monitor_side_stream(tmp_path):  # pragma: no cover - GPU machine only
    """On the GPU: the same metrics as the host route, rank-deficient matrices included; the Monitor with
    analysis_device="cuda" (host snapshots, one matrix uploaded at a time, side stream) equals "cpu", and
    "auto" picks CUDA for a CUDA model."""
    from wwmonitor.monitor import Monitor

    for case, W in _cases().items():
        _same_metrics(
            wwmonitor.analyze_matrix(torch.from_numpy(W).cuda(), case, device="cuda"),
            wwmonitor.analyze_matrix(W, case, device="cpu"),
            case,
        )
    rng = np.random.default_rng(1)
    W = rng.standard_normal((400, 20)) @ rng.standard_normal((20, 160))
    assert wwmonitor.analyze_matrix(W, "w", device="cuda").matrix_rank == 20
    model = torch.nn.Sequential(torch.nn.Linear(64, 160), torch.nn.ReLU(), torch.nn.Linear(160, 96)).cuda()
    out = {}
    for dev in ("cpu", "cuda", "auto"):
        with Monitor(model, tmp_path, run_name=dev, every_n_epochs=None, store=False, analysis_device=dev) as mon:
            mon.snapshot(step=0)
            with torch.no_grad():
                model[0].weight.mul_(1.0)  # an in-place update right after the snapshot (ordered after the copy)
        out[dev] = mon.results[0]
    assert out["auto"].meta["analysis_device"].startswith("cuda")
    for a, b in zip(out["cuda"].layers, out["cpu"].layers):
        _same_metrics(a, b, a.name)
    rep = wwmonitor.analyze_model(model)  # auto: on the device
    for a, b in zip(rep.layers, wwmonitor.analyze_model(model, analysis_device="cpu").layers):
        _same_metrics(a, b, a.name)
