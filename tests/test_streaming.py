"""Streaming checkpoint analysis: a safetensors file or folder of shards is read one tensor at a time.

``analyze_model(path)`` reads the shards' headers, then each analysis thread memory-maps the tensor of the
matrix it analyses and drops it afterwards (``wwmonitor.checkpoint.LazyTensor``), so at most ``workers`` tensors are
resident at once and each torchrun rank maps only its own tensors.  The results, the skipped entries and the
errors are those of the whole-checkpoint path (``load_weights``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import threading
import weakref
from pathlib import Path

import numpy as np
import pytest

import wwmonitor.checkpoint.lazy as wm
from wwmonitor.checkpoint import LazyTensor, LazyWeights, iter_weights, load_weights, open_weights
from wwmonitor.model import analyze_model

ROOT = Path(__file__).resolve().parents[1]
TORCHRUN = Path(sys.executable).with_name("torchrun")


def _cli(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "wwmonitor", *args], capture_output=True, text=True, timeout=timeout, cwd=ROOT
    )


def _gpt2_like(rng: np.random.Generator, layers: int = 2, d: int = 64) -> dict[str, np.ndarray]:
    """A GPT-2 style state dict (Conv1D ``c_attn`` split into q/k/v, biases, norms, an int buffer)."""
    f32 = np.float32
    sd: dict[str, np.ndarray] = {
        "wte.weight": rng.standard_normal((300, d)).astype(f32),
        "wpe.weight": rng.standard_normal((128, d)).astype(f32),
    }
    for i in range(layers):
        p = f"h.{i}."
        sd[p + "ln_1.weight"] = np.ones(d, f32)
        sd[p + "attn.c_attn.weight"] = rng.standard_normal((d, 3 * d)).astype(f32)
        sd[p + "attn.c_attn.bias"] = np.zeros(3 * d, f32)
        sd[p + "attn.c_proj.weight"] = rng.standard_normal((d, d)).astype(f32)
        sd[p + "mlp.c_fc.weight"] = rng.standard_normal((d, 4 * d)).astype(f32)
        sd[p + "mlp.c_proj.weight"] = rng.standard_normal((4 * d, d)).astype(f32)
    sd["position_ids"] = np.arange(128, dtype=np.int64).reshape(1, 128)
    sd["ln_f.weight"] = np.ones(d, f32)
    return sd


def _save_shards(sd: dict[str, np.ndarray], folder: Path, n: int) -> Path:
    from safetensors.numpy import save_file

    folder.mkdir(parents=True, exist_ok=True)
    keys = list(sd)
    for s in range(n):
        part = {k: sd[k] for k in keys[s::n]}
        save_file(part, str(folder / f"model-{s + 1:05d}-of-{n:05d}.safetensors"))
    return folder


@pytest.fixture(scope="module")
def sharded(tmp_path_factory) -> Path:
    return _save_shards(_gpt2_like(np.random.default_rng(11)), tmp_path_factory.mktemp("st") / "hf", 3)


class _Tracker:
    """Wraps ``wwmonitor.checkpoint.lazy._map_tensor``: counts the mapped tensors alive (until every view is
    dropped)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.lock = threading.Lock()
        self.alive = self.max_alive = 0
        self.mapped: list[str] = []
        real = wm._map_tensor

        def mapped(file, key, *a, **kw):
            arr = real(file, key, *a, **kw)
            with self.lock:
                self.alive += 1
                self.max_alive = max(self.max_alive, self.alive)
                self.mapped.append(key)
            weakref.finalize(arr, self._gone)
            return arr

        monkeypatch.setattr(wm, "_map_tensor", mapped)

    def _gone(self) -> None:
        with self.lock:
            self.alive -= 1


def _rows(rep) -> list[dict]:
    return [lm.to_dict() for lm in rep.layers]


def test_streamed_folder_equals_loaded_checkpoint(sharded):
    lazy = open_weights(sharded)
    assert isinstance(lazy, LazyWeights) and len(lazy.files) == 3
    assert list(lazy) == list(load_weights(sharded))  # same names, same order
    assert all(isinstance(v, LazyTensor) for v in lazy.values())
    streamed = analyze_model(sharded)
    loaded = analyze_model(load_weights(sharded))
    assert streamed.meta.get("streamed") is True and "streamed" not in loaded.meta
    assert _rows(streamed) == _rows(loaded)
    names = [lm.name for lm in streamed.layers]
    assert "h.0.attn.c_attn.q" in names and "h.1.mlp.c_proj" in names and "wte" in names
    assert [n for n, _ in streamed.skipped] == [n for n, _ in loaded.skipped]
    reasons = dict(streamed.skipped)
    assert reasons["h.0.ln_1.weight"] == "not a matrix (1-D)"
    assert reasons["position_ids"].startswith("not floating point (dtype int64")


def test_single_file_and_iter_weights(tmp_path):
    from safetensors.numpy import save_file

    sd = _gpt2_like(np.random.default_rng(3), layers=1)
    save_file(sd, str(tmp_path / "model.safetensors"))
    streamed = _rows(analyze_model(tmp_path / "model.safetensors"))
    assert streamed == _rows(analyze_model(load_weights(tmp_path / "model.safetensors")))
    # the file's order is safetensors' (by dtype, then name), not the dict's: same rows otherwise
    assert sorted(streamed, key=lambda r: r["name"]) == sorted(_rows(analyze_model(sd)), key=lambda r: r["name"])
    got = dict(iter_weights(tmp_path / "model.safetensors"))
    assert list(got) == list(load_weights(tmp_path / "model.safetensors"))
    for k, v in sd.items():
        np.testing.assert_array_equal(got[k], v)


@pytest.mark.parametrize("workers", [1, 2])
def test_one_tensor_per_analysis_thread_at_a_time(sharded, monkeypatch, workers):
    t = _Tracker(monkeypatch)
    rep = analyze_model(sharded, workers=workers)
    assert t.alive == 0  # every mapping was released
    assert 1 <= t.max_alive <= workers, t.max_alive
    # each analysed matrix mapped its tensor once (c_attn three times: q, k, v); nothing else was read
    params = [lm.name for lm in rep.layers]
    assert len(t.mapped) == len(params)
    assert not {k for k in t.mapped} & {n for n, _ in rep.skipped}


def test_each_rank_maps_only_the_tensors_it_analyses(sharded, monkeypatch):
    import wwmonitor.distributed as wd
    import wwmonitor.model as model_mod
    from wwmonitor.layers import extract_matrices

    t = _Tracker(monkeypatch)
    monkeypatch.setattr(model_mod, "_dist_rank_world", lambda distributed: (1, 2))
    monkeypatch.setattr(wd, "gather_objects", lambda obj, dst=None: [obj])
    rep = analyze_model(sharded, distributed=True, workers=1)
    specs = extract_matrices(open_weights(sharded))
    mine = specs[1::2]
    assert [lm.name for lm in rep.layers] == [s.name for s in mine]
    assert sorted(t.mapped) == sorted(s.param for s in mine)
    assert rep.meta["num_matrices"] == len(specs)


@pytest.mark.parametrize("ml_dtypes_loaded", [False, True])
def test_bf16_is_widened_exactly(tmp_path, ml_dtypes_loaded):
    import torch
    from safetensors.torch import save_file

    if ml_dtypes_loaded:  # jax / tensorflow import it; NumPy then knows a "bfloat16" that is not np.floating
        import ml_dtypes  # noqa: F401

    g = torch.Generator().manual_seed(5)
    sd = {
        "a.weight": torch.randn(200, 120, generator=g).to(torch.bfloat16),
        "b.weight": torch.randn(150, 300, generator=g).to(torch.bfloat16),
    }
    save_file(sd, str(tmp_path / "bf16.safetensors"))
    lazy = open_weights(tmp_path / "bf16.safetensors")
    assert lazy["a.weight"].dtype == "bfloat16"
    np.testing.assert_array_equal(lazy["a.weight"].load(), sd["a.weight"].float().numpy())
    np.testing.assert_array_equal(lazy["b.weight"].T[10:20].load(), sd["b.weight"].T[10:20].float().numpy())
    assert _rows(analyze_model(tmp_path / "bf16.safetensors")) == _rows(analyze_model(sd))


def test_duplicate_and_corrupt_shards_are_errors_naming_the_file(tmp_path):
    from safetensors.numpy import save_file

    (tmp_path / "dup").mkdir()
    save_file({"a.weight": np.ones((60, 50), np.float32)}, str(tmp_path / "dup" / "model-00001.safetensors"))
    save_file({"a.weight": np.ones((60, 50), np.float32)}, str(tmp_path / "dup" / "model-00002.safetensors"))
    for fn in (open_weights, analyze_model, load_weights):
        with pytest.raises(
            ValueError,
            match=r"tensor 'a.weight' is in two shards, model-00001.safetensors and "
            r"model-00002.safetensors",
        ):
            fn(tmp_path / "dup")
    (tmp_path / "dup" / "model-00002.safetensors").write_bytes(b"garbage")
    for fn in (open_weights, analyze_model):
        with pytest.raises(ValueError, match=r"model-00002\.safetensors: not a valid \.safetensors file"):
            fn(tmp_path / "dup")


def test_tensor_unreadable_after_opening_is_that_layers_error(tmp_path):
    from safetensors.numpy import save_file

    rng = np.random.default_rng(1)
    save_file({"a.weight": rng.standard_normal((80, 60)).astype(np.float32)}, str(tmp_path / "a.safetensors"))
    save_file({"b.weight": rng.standard_normal((80, 60)).astype(np.float32)}, str(tmp_path / "b.safetensors"))
    lazy = open_weights(tmp_path)
    (tmp_path / "b.safetensors").write_bytes(b"")  # replaced after the headers were read
    rep = analyze_model(lazy, workers=1)
    by = {lm.name: lm for lm in rep.layers}
    assert by["a"].status == "ok"
    assert by["b"].status == "error" and "b.safetensors: could not read tensor 'b.weight'" in by["b"].message


_PEAK_CHILD = textwrap.dedent(
    """
    import json, sys
    import numpy as np
    from wwmonitor.model import analyze_model

    def status(key):
        for line in open("/proc/self/status"):
            if line.startswith(key):
                return int(line.split()[1]) * 1024

    analyze_model({"w.weight": np.random.default_rng(0).standard_normal((4096, 256)).astype(np.float32)})  # warm up
    base = status("VmRSS")
    try:
        open("/proc/self/clear_refs", "w").write("5")  # VmHWM := current RSS
    except OSError:
        pass
    rep = analyze_model(sys.argv[1])
    print(json.dumps({"base": base, "peak": status("VmHWM"), "layers": len(rep.layers),
                      "ok": sum(lm.status == "ok" for lm in rep.layers)}))
    """
)


def test_peak_memory_follows_the_largest_tensor_not_the_checkpoint(tmp_path):
    """128 MiB of weights in 2 shards, 32 tensors of 4 MiB: the peak RSS increase stays far below the checkpoint."""
    from safetensors.numpy import save_file

    rng = np.random.default_rng(2)
    for s in range(2):
        save_file(
            {f"l{s}_{i}.weight": rng.standard_normal((4096, 256)).astype(np.float32) for i in range(16)},
            str(tmp_path / f"model-{s}.safetensors"),
        )
    total = sum(f.stat().st_size for f in tmp_path.glob("*.safetensors"))
    assert total > 128 * 2**20
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072", "MALLOC_TRIM_THRESHOLD_": "131072", "OMP_NUM_THREADS": "1"}
    p = subprocess.run(
        [sys.executable, "-c", _PEAK_CHILD, str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        cwd=ROOT,
    )
    assert p.returncode == 0, p.stderr[-2000:]
    r = json.loads(p.stdout.strip().splitlines()[-1])
    assert r["layers"] == r["ok"] == 32
    increase = r["peak"] - r["base"]
    # two analysis threads, each: one 4 MiB tensor mapped + its 8 MiB float64 copy (+ a 0.5 MiB Gram)
    assert increase < total / 2, (increase / 2**20, total / 2**20)


def test_cli_progress_bar_goes_to_stderr(sharded, tmp_path):
    proc = _cli("analyze", str(sharded), "--progress", "--min-evals", "10")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "analyze: 100%" in proc.stderr and "matrix" in proc.stderr
    assert "analyze:" not in proc.stdout and "h.1.mlp.c_fc" in proc.stdout
    quiet = _cli(
        "analyze",
        str(sharded),
        "--no-progress",
        "--low-memory",
        "--min-evals",
        "10",
        "--json",
        str(tmp_path / "r.json"),
    )
    assert quiet.returncode == 0, quiet.stderr[-2000:]
    assert "analyze:" not in quiet.stderr
    low = {r["name"]: r["alpha"] for r in json.loads((tmp_path / "r.json").read_text())["layers"]}
    ref = {lm.name: lm.alpha for lm in analyze_model(sharded, min_evals=10).layers}
    assert low.keys() == ref.keys()
    for k in ref:  # the in-place route: same eigenvalues to float64 rounding
        assert low[k] == pytest.approx(ref[k], rel=1e-9), k


@pytest.mark.slow
def test_torchrun_two_ranks_stream_a_sharded_folder(sharded, tmp_path):
    single = _cli("analyze", str(sharded), "--json", str(tmp_path / "one.json"), "--no-progress")
    assert single.returncode == 0, single.stderr
    proc = subprocess.run(
        [
            str(TORCHRUN),
            "--nproc-per-node",
            "2",
            "--master-port",
            "29531",
            "-m",
            "wwmonitor",
            "analyze",
            str(sharded),
            "--json",
            str(tmp_path / "two.json"),
            "--progress",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    one = json.loads((tmp_path / "one.json").read_text())
    two = json.loads((tmp_path / "two.json").read_text())
    assert [r["name"] for r in two["layers"]] == [r["name"] for r in one["layers"]]
    assert two["layers"] == one["layers"] and two["skipped"] == one["skipped"]
    assert proc.stderr.count("analyze:   0%") == 1 and "analyze: 100%" in proc.stderr  # rank 0's bar only
