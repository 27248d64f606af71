"""Snapshot copies (``wwmonitor.monitor.snapshot``): fused views copied as one range, bf16 widening."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from wwmonitor.layers import extract_matrices  # noqa: E402
from wwmonitor.monitor.snapshot import BufferSet, as_numpy, copy_matrices  # noqa: E402


def _fused_model() -> object:
    """A fused ``qkv`` projection (split into q/k/v row blocks) and an ``nn.MultiheadAttention``."""

    class Block(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.qkv = torch.nn.Linear(16, 48)
            self.attn = torch.nn.MultiheadAttention(16, 2)
            self.out = torch.nn.Linear(16, 16)

    torch.manual_seed(0)
    return Block()


def _strided_specs() -> list:
    """Specs whose tensors are transposed column blocks of one parameter (GPT-2 ``Conv1D`` layout)."""

    class Spec:
        def __init__(self, name: str, tensor: object) -> None:
            self.name, self.type, self.tensor, self.scale = name, "Conv1D", tensor, 1.0

    torch.manual_seed(1)
    w = torch.nn.Parameter(torch.randn(16, 48))  # (in, 3 x out): q/k/v are w[:, i*16:(i+1)*16].T
    return [Spec(p, w[:, i * 16 : (i + 1) * 16].T) for i, p in enumerate("qkv")] + [Spec("o", torch.randn(8, 16))]


def test_strided_views_of_one_storage_are_copied_once_and_read_back_exactly() -> None:
    specs = _strided_specs()
    bs = BufferSet()
    entries, ready = copy_matrices(specs, bs, key="k")
    assert ready is None
    assert len(bs.bufs) == 2  # one buffer for q/k/v, one for o
    assert bs.nbytes == sum(s.tensor.numel() * 4 for s in specs)  # no more memory than a copy of each
    for s, (name, _, _, host) in zip(specs, entries):
        assert name == s.name and torch.equal(host, s.tensor.detach())
    with torch.no_grad():  # the cached plan copies the new values into the same buffers
        specs[0].tensor._base.mul_(-2.0)
    entries, _ = copy_matrices(specs, bs, key="k")
    for s, (_, _, _, host) in zip(specs, entries):
        assert torch.equal(host, s.tensor.detach())
        host_np = as_numpy(host)
        assert np.array_equal(host_np, s.tensor.detach().numpy())


def test_fused_projections_of_a_model_read_back_exactly() -> None:
    specs = extract_matrices(_fused_model())
    bs = BufferSet()
    entries, _ = copy_matrices(specs, bs, key=None)
    assert [e[0] for e in entries] == [s.name for s in specs]
    for s, (_, _, _, host) in zip(specs, entries):
        assert torch.equal(host, s.tensor.detach()), s.name
    assert bs.nbytes == sum(s.tensor.numel() * s.tensor.element_size() for s in specs)


def test_a_view_alone_on_its_storage_is_copied_by_itself() -> None:
    specs = _strided_specs()[1:]  # k alone (q, v not monitored): no group
    bs = BufferSet()
    entries, _ = copy_matrices(specs, bs)
    assert sorted(bs.bufs) == sorted(s.name for s in specs)
    assert torch.equal(entries[0][3], specs[0].tensor.detach())


def test_bfloat16_widens_exactly() -> None:
    x = (torch.randn(64, 32) * 1e3).bfloat16()
    y = as_numpy(x)
    assert y.dtype == np.float32 and np.array_equal(y, x.float().numpy())
