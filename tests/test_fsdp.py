"""FSDP2 (``fully_shard``, DTensor dim-0 shards) with 2 CPU ranks (gloo): the sharded analysis equals a
single-process analysis of the full weights, and no rank assembles a matrix it does not own.

The distributed parts run in subprocesses (``torch.distributed.run`` for plain FSDP2, a Lightning script that
re-launches itself for ``ModelParallelStrategy``), like tests/test_ddp.py; pytest compares what they saved.
"""

from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import wwmonitor  # noqa: E402
from wwmonitor.analyze import _SCALED_FIELDS  # noqa: E402
from wwmonitor.layers import extract_matrices  # noqa: E402
from wwmonitor.sharded_model import analyze_sharded  # noqa: E402
from wwmonitor.sharding import ShardedSpectra, sharded_specs  # noqa: E402
from wwmonitor.sharding.plan import _row_dim, _view_rows  # noqa: E402

HERE = Path(__file__).parent
ROOT = HERE.parent

# The model, shared by the subprocess script and the single-process reference (exec'd in both).
MODEL = textwrap.dedent(
    """
    import torch
    from torch import nn


    class Block(nn.Module):
        # every route: rows (embedding, head, up, low, conv stack: the long side is sharded -> factors),
        # rows of the short side (down), row slices of a fused weight (attention q/k/v), a rank-8 frozen matrix
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.emb = nn.Embedding(1000, 64)
            self.attn = nn.MultiheadAttention(64, 4, batch_first=True)
            self.up = nn.Linear(64, 512)
            self.down = nn.Linear(512, 64)
            self.conv = nn.Conv2d(16, 64, 3, padding=1)
            self.low = nn.Linear(60, 400)
            self.head = nn.Linear(64, 1000, bias=False)
            with torch.no_grad():  # rank 8, never trained: the SVD recheck must find it (matrix_rank, phase)
                self.low.weight.copy_(torch.randn(400, 8) @ torch.randn(8, 60) / 8)

        def forward(self, x):
            h = self.emb(x)
            a, _ = self.attn(h, h, h)
            h = h + a
            h = h + self.down(torch.relu(self.up(h)))
            B, T, _ = h.shape
            c = self.conv(h.reshape(B, T, 16, 4).permute(0, 2, 1, 3)).mean(-1).transpose(1, 2)
            h = h + c
            return self.head(h) + 0.0 * self.low(h[..., :60]).mean()

        def trained(self):
            return [p for n, p in self.named_parameters() if not n.startswith("low.")]
    """
)

SCRIPT = textwrap.dedent(
    """
    import json, os, sys
    import torch
    import torch.distributed as dist
    torch.set_num_threads(1)
    sys.path.insert(0, {root!r})
    exec({model!r})
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
    import wwmonitor
    from wwmonitor import sharding as sharded
    from wwmonitor.sharded_model import analyze_sharded

    out = {out!r}
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    mesh = init_device_mesh("cpu", (world,))
    model = Block()
    for m in (model.emb, model.attn, model.up, model.down, model.conv, model.low, model.head):
        fully_shard(m, mesh=mesh)
    fully_shard(model, mesh=mesh)
    opt = torch.optim.SGD(model.trained(), lr=0.05)
    gen = torch.Generator().manual_seed(rank)

    def step():
        x = torch.randint(0, 1000, (4, 12), generator=gen)
        loss = torch.nn.functional.cross_entropy(model(x).reshape(-1, 1000), x.reshape(-1))
        loss.backward()
        opt.step()
        opt.zero_grad()

    def full_weights(path):  # a collective: every rank
        sd = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        if rank == 0:
            torch.save(sd, path)

    # instrument: no all-gather of tensors (or DTensor redistribution) may run during an exchange
    calls = {{"all_gather": 0}}
    active = [False]
    import torch.distributed.distributed_c10d as c10d
    from torch.distributed.tensor import DTensor

    import threading

    def spy(fn):
        def wrapped(*a, **k):  # the training thread's exchange only (the monitor's worker gathers its results)
            if active[0] and threading.current_thread() is threading.main_thread():
                calls["all_gather"] += 1
            return fn(*a, **k)
        return wrapped

    for mod in (dist, c10d):
        for name in ("all_gather", "all_gather_into_tensor", "_all_gather_base", "all_gather_coalesced"):
            if hasattr(mod, name):
                setattr(mod, name, spy(getattr(mod, name)))
    DTensor.full_tensor = spy(DTensor.full_tensor)
    DTensor.redistribute = spy(DTensor.redistribute)
    _exchange = sharded.ShardedSpectra.exchange

    def exchange(self):
        active[0] = True
        try:
            return _exchange(self)
        finally:
            active[0] = False

    sharded.ShardedSpectra.exchange = exchange

    for _ in range(3):
        step()
    full_weights(os.path.join(out, "full.pt"))
    info = {{"rank": rank, "world": world}}
    for route in ("auto", "gather", "rfactor"):
        sp = sharded.ShardedSpectra(model, route=route)
        rep = analyze_sharded(model, spectra=sp, dst=0)
        st = sp.stats
        info[route] = {{"owned": sp.layers, "routes": sp.routes(), "received": st.bytes_received, "sent": st.bytes_sent,
                       "by_name": st.received_by_name, "assembled": sorted(st.assembled),
                       "plan": {{e.name: [e.bytes_gather, e.bytes_rfactor] for e in sp.entries}}}}
        if rank == 0:
            with open(os.path.join(out, f"report-{{route}}.json"), "w") as f:
                json.dump([lm.to_dict() for lm in rep.layers], f, default=str)
        else:
            assert rep is None

    # the factors carry each piece's largest |entries|: the owner's entry tail index (phase rule 4c)
    owned = sharded.ShardedSpectra(model).exchange()
    info["entry_tail"] = {{o.name: o.entry_tail for o in owned if o.kind == "rfactor"}}

    # DTensor layouts that are not FSDP2's: tensor parallel (Shard(1)) is reported per layer, Replicate is analysed
    from torch.distributed.tensor import Replicate, Shard, distribute_tensor
    torch.manual_seed(5)
    odd = torch.nn.Module()
    odd.tp, odd.rep = torch.nn.Linear(64, 96, bias=False), torch.nn.Linear(64, 80, bias=False)
    full_rep = odd.rep.weight.detach().clone()
    odd.tp.weight = torch.nn.Parameter(distribute_tensor(odd.tp.weight.detach(), mesh, [Shard(1)]))
    odd.rep.weight = torch.nn.Parameter(distribute_tensor(odd.rep.weight.detach(), mesh, [Replicate()]))
    odd_rep = analyze_sharded(odd, dst=0)
    if rank == 0:
        ref = wwmonitor.analyze_matrix(full_rep, "rep", layer_type="Linear")
        with open(os.path.join(out, "odd.json"), "w") as f:
            json.dump({{"layers": [lm.to_dict() for lm in odd_rep.layers], "rep_ref": ref.to_dict(),
                       "routes": odd_rep.meta["routes"]}}, f, default=str)

    # the plain training loop: Monitor(model) on every rank (FSDP2 strategy), rank 0 files the merged results
    mon = wwmonitor.Monitor(model, os.path.join(out, "runs"), run_name="fsdp", every_n_epochs=None)
    for s in (10, 20):
        step()
        full_weights(os.path.join(out, f"w{{s}}.pt"))
        mon.snapshot(step=s)
    mon.close()
    st = mon.strategy.spectra.stats
    info["callback"] = {{"owned": mon.strategy.layers, "assembled": sorted(st.assembled),
                        "by_name": st.received_by_name, "routes": mon.strategy.spectra.routes(),
                        "kind": mon.strategy.kind, "stats": mon.stats, "results": [r.step for r in mon.results],
                        "run_id": mon.run_id, "has_store": mon.store is not None}}
    info["all_gather_calls"] = calls["all_gather"]
    with open(os.path.join(out, f"rank{{rank}}.json"), "w") as f:
        json.dump(info, f)
    dist.barrier()
    # torch's gloo teardown sometimes aborts at interpreter exit on a loaded machine ("terminate called without
    # an active exception", also in a bare FSDP2 script without wwmonitor): everything is written, leave now
    os._exit(0)
    """
)


def _block():
    ns: dict = {}
    exec(MODEL, ns)  # noqa: S102 - the test's own model source
    return ns["Block"]()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _env() -> dict[str, str]:
    return {
        **os.environ,
        "PYTHONWARNINGS": "ignore",
        "OMP_NUM_THREADS": "1",
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(_free_port()),
        "PYTHONPATH": str(ROOT),
    }


def _close(a: dict, b: dict, where: str) -> None:
    """Every metric of two LayerMetrics dicts equal: numbers within 1e-10 relative (values on the σ² axis of a
    rank-deficient matrix that are pure round-off, such as its detX boundary, within 1e-10·λ_max), the rest
    exactly."""
    assert a.keys() == b.keys(), where
    scale = abs(b.get("lambda_max") or 0.0)
    for k, vb in b.items():
        va = a[k]
        if k == "message":
            continue
        if isinstance(vb, float) and isinstance(va, (int, float)) and not isinstance(va, bool):
            tol = 1e-10 * max(abs(vb), scale if k in _SCALED_FIELDS else 0.0)
            assert (math.isnan(vb) and math.isnan(va)) or abs(va - vb) <= tol, f"{where} {k}: {va!r} != {vb!r}"
        else:
            assert va == vb, f"{where} {k}: {va!r} != {vb!r}"


# ------------------------------------------------------------------ without a process group ----
def test_view_geometry():
    S = 8  # a (12, 8) parameter
    p = torch.empty(12, 8, device="meta")
    whole, t, rows, conv = p, p.T, p[4:8], torch.empty(6, 4, 3, 3, device="meta").reshape(6, 4, 9).permute(2, 0, 1)
    assert _row_dim(whole.shape, whole.stride(), 0, S) == 0
    assert _row_dim(t.shape, t.stride(), 0, S) == 1  # Conv1D-style transposed weight: its columns are rows
    assert _row_dim(rows.shape, rows.stride(), rows.storage_offset(), S) == 0
    assert _view_rows(rows.shape, rows.stride(), rows.storage_offset(), S) == (4, 8)
    assert _row_dim(conv.shape, conv.stride(), 0, 36) == 1  # (K, out, in) stack of a conv: out walks the rows
    cols = p[:, 2:5]
    assert _row_dim(cols.shape, cols.stride(), cols.storage_offset(), S) == 0
    mixed = p.reshape(6, 16)  # two parameter rows per view row: no row dim
    assert _row_dim(mixed.shape, mixed.stride(), 0, S) == -1


def test_plain_model_without_process_group_equals_analyze_model():
    """No DTensor, no process group: every matrix is "local" and the result is analyze_model's."""
    model = _block()
    assert [s.name for s in sharded_specs(model)] == [s.name for s in extract_matrices(model)]
    sp = ShardedSpectra(model)
    assert set(sp.routes().values()) == {"local"} and sp.layers == sp.names
    rep = analyze_sharded(model, spectra=sp)
    ref = wwmonitor.analyze_model(model, workers=1)
    for a, b in zip(rep.layers, ref.layers):
        _close(a.to_dict(), b.to_dict(), a.name)
    assert sp.stats.bytes_received == 0


def test_check_strategy_allows_fsdp2_and_refuses_fsdp1_and_deepspeed():
    pytest.importorskip("lightning")
    from lightning.pytorch.strategies import DeepSpeedStrategy, FSDPStrategy, ModelParallelStrategy

    from wwmonitor.distributed import UnsupportedStrategyError, check_strategy

    class T:
        def __init__(self, s):
            self.strategy = s

    check_strategy(T(ModelParallelStrategy.__new__(ModelParallelStrategy)))  # FSDP2: supported
    with pytest.raises(UnsupportedStrategyError, match=r"FSDP1.*FSDP2 is supported.*ModelParallelStrategy"):
        check_strategy(T(FSDPStrategy.__new__(FSDPStrategy)))
    with pytest.raises(UnsupportedStrategyError, match=r"DeepSpeed.*FSDP2"):
        check_strategy(T(DeepSpeedStrategy.__new__(DeepSpeedStrategy)))


# ------------------------------------------------------------------ 2 ranks, gloo ----
@pytest.fixture(scope="module")
def fsdp_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("fsdp")
    script = out / "fsdp_run.py"
    script.write_text(SCRIPT.format(root=str(ROOT), model=MODEL, out=str(out)))
    port = _free_port()
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc-per-node",
            "2",
            "--master-port",
            str(port),
            str(script),
        ],
        cwd=out,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return out


@pytest.mark.slow
@pytest.mark.parametrize("route", ["auto", "gather", "rfactor"])
def test_fsdp2_metrics_equal_single_process(fsdp_run, route):
    model = _block()
    model.load_state_dict(torch.load(fsdp_run / "full.pt", weights_only=True))
    ref = wwmonitor.analyze_model(model, workers=1, distributed=False)
    got = json.loads((fsdp_run / f"report-{route}.json").read_text())
    assert [g["name"] for g in got] == [lm.name for lm in ref.layers]
    for g, lm in zip(got, ref.layers):
        b = json.loads(json.dumps(lm.to_dict(), default=str))
        _close(g, b, f"{route}/{lm.name}")
        assert g["phase"] == lm.phase and g["status"] == lm.status, lm.name
    low = next(g for g in got if g["name"] == "low")
    want = np.linalg.matrix_rank(model.low.weight.detach().double().numpy())
    assert low["matrix_rank"] == want and low["phase"] == ref["low"].phase  # the SVD recheck ran on the owner
    trained = next(g for g in got if g["name"] == "emb")
    assert trained["alpha"] is not None


@pytest.mark.slow
def test_fsdp2_moves_only_what_the_owner_needs(fsdp_run):
    info = [json.loads((fsdp_run / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [i["world"] for i in info] == [2, 2]
    assert all(i["all_gather_calls"] == 0 for i in info)  # point to point only, never an all-gather
    names = list(info[0]["auto"]["routes"])
    assert info[0]["auto"]["owned"] == names[0::2] and info[1]["auto"]["owned"] == names[1::2]  # i mod world
    routes = info[0]["auto"]["routes"]
    # long side sharded and a shard taller than M: triangular factors; the short side or a square slice: rows
    assert routes["emb"] == routes["head"] == routes["up"] == routes["low"] == routes["conv"] == "rfactor"
    assert routes["down"] == routes["attn.q"] == routes["attn.out_proj"] == "gather"
    model = _block()
    full = {s.name: s.tensor.numel() * 4 for s in extract_matrices(model)}
    for i in info:
        for route in ("auto", "gather", "rfactor", "callback"):
            r = i[route]
            # nothing arrives for, and nothing is assembled of, a matrix this rank does not own
            assert set(r["by_name"]) <= set(r["owned"]), (i["rank"], route)
            assert set(r["assembled"]) <= set(r["owned"]), (i["rank"], route)
            for name, nbytes in r["by_name"].items():  # at most the rows the owner lacks (2 snapshots: twice)
                if route == "rfactor" and r["routes"][name] == "rfactor":  # forced: the factors, even if larger
                    assert nbytes == r["plan"][name][1], (name, nbytes)
                else:
                    assert nbytes <= full[name] * (2 if route == "callback" else 1), (name, nbytes)
        auto = i["auto"]
        for name in auto["owned"]:
            if routes[name] == "rfactor":
                assert name not in auto["assembled"]
                g, f = auto["plan"][name]
                assert auto["by_name"].get(name, 0) == f < g  # the factors, fewer bytes than the rows
        assert auto["received"] <= i["gather"]["received"]
    total = {route: sum(i[route]["received"] for i in info) for route in ("auto", "gather", "rfactor")}
    assert total["auto"] < total["gather"] and total["auto"] <= total["rfactor"], total


@pytest.mark.slow
def test_fsdp2_monitor_in_a_plain_loop_equals_single_process(fsdp_run):
    """Monitor(model) on a fully_shard model, every rank, a plain loop: one worker per rank analyses the
    matrices it owns, rank 0 files the merged results -- for each step the metrics, ESDs and phases of a
    single-process Monitor over the same weights; the stats are on the Monitor of every rank."""
    info = [json.loads((fsdp_run / f"rank{r}.json").read_text())["callback"] for r in (0, 1)]
    assert [i["kind"] for i in info] == ["fsdp2", "fsdp2"]
    assert info[0]["has_store"] and not info[1]["has_store"]  # only rank 0 writes
    assert info[0]["run_id"] == info[1]["run_id"] == "fsdp"
    assert info[0]["results"] == [10, 20] and info[1]["results"] == []
    for i in info:
        st = i["stats"]
        assert st["snapshots_taken"] == 2 and st["analysed"] == 2, st
        assert st["errors"] == st["worker_errors"] == 0 and st["world_size"] == 2, st
        assert st["exchange_bytes_received"] == sum(i["by_name"].values())
    run = wwmonitor.load_run(fsdp_run / "runs" / "fsdp")
    m = run.metrics
    assert sorted(m.step.unique()) == [10, 20]
    assert not m.duplicated(["step", "layer", "metric"]).any()
    with wwmonitor.Monitor(
        None, fsdp_run / "single", run_name="single", every_n_epochs=None, carry_unchanged=False
    ) as mon:
        for s in (10, 20):
            model = _block()
            model.load_state_dict(torch.load(fsdp_run / f"w{s}.pt", weights_only=True))
            mon.snapshot(step=s, model=model)
    single = wwmonitor.load_run(fsdp_run / "single" / "single")
    for s in (10, 20):
        a = m[m.step == s].set_index(["layer", "metric"]).value.sort_index()
        b = single.metrics[single.metrics.step == s].set_index(["layer", "metric"]).value.sort_index()
        assert a.index.equals(b.index), s
        lam = b.xs("lambda_max", level="metric").reindex(a.index.get_level_values(0)).fillna(0).to_numpy()
        scaled = np.isin(a.index.get_level_values(1), _SCALED_FIELDS)
        tol = 1e-10 * np.maximum(np.abs(b.to_numpy()), np.where(scaled, lam, 0.0))
        assert np.all(np.abs(a.to_numpy() - b.to_numpy()) <= tol), (a - b)[np.abs(a - b) > tol]
        for layer in ("emb", "conv", "low"):
            np.testing.assert_allclose(run.esd(layer, s), single.esd(layer, s), rtol=1e-6, atol=1e-12)
        pa, pb = (x[x.step == s].set_index("layer").phase for x in (run.phases, single.phases))
        assert pa.sort_index().equals(pb.sort_index())


@pytest.mark.slow
def test_fsdp2_factors_carry_the_entry_tail_index(fsdp_run):
    """The owner of a matrix sent as triangular factors never sees its entries; the pieces' largest |W_ij|
    travel with the factors, so the owner's entry tail index (phase rule 4c) is the single-process one."""
    from wwmonitor.phases import entry_tail_index

    model = _block()
    model.load_state_dict(torch.load(fsdp_run / "full.pt", weights_only=True))
    specs = {s.name: s for s in extract_matrices(model)}
    got: dict = {}
    for r in (0, 1):
        got.update(json.loads((fsdp_run / f"rank{r}.json").read_text())["entry_tail"])
    assert set(got) == {"emb", "head", "up", "low", "conv"}  # every rfactor matrix, on its owner
    for name, value in got.items():
        want = entry_tail_index(specs[name].tensor.detach().numpy())
        assert value is not None and value == pytest.approx(want, rel=1e-12), (name, value, want)


@pytest.mark.slow
def test_other_dtensor_layouts_are_reported_or_analysed(fsdp_run):
    odd = json.loads((fsdp_run / "odd.json").read_text())
    assert odd["routes"] == {"tp": "unsupported", "rep": "local"}
    tp, rep = odd["layers"]
    assert tp["status"] == "error" and "Shard(dim=1)" in tp["message"] and "FSDP2" in tp["message"]
    _close(rep, json.loads(json.dumps(odd["rep_ref"], default=str)), "rep")


# ------------------------------------------------------------------ Lightning ModelParallelStrategy ----
PL_SCRIPT = textwrap.dedent(
    """
    import json, os, sys
    sys.path.insert(0, {tests!r})
    import torch
    torch.set_num_threads(1)
    import lightning.pytorch as pl
    from lightning.pytorch.strategies import ModelParallelStrategy
    from torch.utils.data import DataLoader, TensorDataset
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
    from _wwcb_helpers import digits
    from wwmonitor.callbacks.lightning import WeightWatcherCallback

    out = {out!r}


    class Net(pl.LightningModule):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.fc1 = torch.nn.Linear(64, 256)
            self.fc2 = torch.nn.Linear(256, 64)
            self.out = torch.nn.Linear(64, 10)

        def configure_model(self):
            from torch.distributed.fsdp import fully_shard

            mesh = self.device_mesh["data_parallel"]
            for m in (self.fc1, self.fc2, self.out):
                fully_shard(m, mesh=mesh)
            fully_shard(self, mesh=mesh)

        def forward(self, x):
            return self.out(torch.relu(self.fc2(torch.relu(self.fc1(x)))))

        def training_step(self, batch, _):
            return torch.nn.functional.cross_entropy(self(batch[0]), batch[1])

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.05)

        def train_dataloader(self):
            X, y = digits(256)
            return DataLoader(TensorDataset(X, y), batch_size=32)


    class SaveFull(pl.Callback):  # runs before the monitor's hook: the weights it snapshots
        def on_train_epoch_end(self, trainer, pl_module):
            sd = get_model_state_dict(pl_module, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
            if trainer.global_rank == 0:
                torch.save(sd, os.path.join(out, f"w{{trainer.global_step}}.pt"))


    if __name__ == "__main__":
        cb = WeightWatcherCallback(every_n_epochs=1, run_dir=os.path.join(out, "runs"), run_name="mp", loggers=False)
        strategy = ModelParallelStrategy(data_parallel_size=2, tensor_parallel_size=1)
        trainer = pl.Trainer(accelerator="cpu", devices=2, strategy=strategy, max_epochs=2, callbacks=[SaveFull(), cb],
                             logger=False, enable_progress_bar=False, enable_model_summary=False,
                             enable_checkpointing=False)
        trainer.fit(Net())
        with open(os.path.join(out, f"rank{{trainer.global_rank}}.json"), "w") as f:
            json.dump({{"shard": cb.shard_layers, "has_store": cb.monitor.store is not None}}, f)
        trainer.strategy.barrier()
        os._exit(0)  # as in the torchrun script: skip gloo's (occasionally aborting) teardown, all is written
    """
)


@pytest.mark.slow
def test_lightning_model_parallel_strategy_fsdp2(tmp_path):
    pytest.importorskip("lightning")
    script = tmp_path / "mp_fit.py"
    script.write_text(PL_SCRIPT.format(tests=str(HERE), out=str(tmp_path)))
    proc = subprocess.run(
        [sys.executable, str(script)], cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=900
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    info = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert info[0]["shard"] == ["fc1", "out"] and info[1]["shard"] == ["fc2"]
    assert info[0]["has_store"] and not info[1]["has_store"]
    run = wwmonitor.load_run(tmp_path / "runs" / "mp")
    steps = [4, 8]  # 256 samples / 2 ranks / batch 32
    assert sorted(run.metrics.step.unique()) == steps
    with wwmonitor.Monitor(
        None, tmp_path / "single", run_name="single", every_n_epochs=None, carry_unchanged=False
    ) as mon:
        for s in steps:
            sd = torch.load(tmp_path / f"w{s}.pt", weights_only=True)
            mon.snapshot(step=s, matrices={k[: -len(".weight")]: v for k, v in sd.items() if k.endswith(".weight")})
    single = wwmonitor.load_run(tmp_path / "single" / "single").metrics
    for s in steps:
        a = run.metrics[run.metrics.step == s].set_index(["layer", "metric"]).value.sort_index()
        b = single[single.step == s].set_index(["layer", "metric"]).value.sort_index()
        assert a.index.equals(b.index), s
        np.testing.assert_allclose(a.to_numpy(), b.to_numpy(), rtol=1e-10, atol=1e-12, err_msg=f"step {s}")
