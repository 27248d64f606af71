"""``Monitor(model)`` under DDP in a plain training loop, 2 CPU ranks (gloo, torchrun): the same numbers as a
single process, one worker and one ``stats`` per rank, failures counted and logged, FSDP1 refused by name.

(The FSDP2 plain loop is in tests/test_fsdp.py, which shares its torchrun run with the exchange tests.)
"""

from __future__ import annotations

import json
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
from wwmonitor.distributed import UnsupportedStrategyError  # noqa: E402

ROOT = Path(__file__).parent.parent

MODEL = textwrap.dedent(
    """
    import torch


    def mlp():
        torch.manual_seed(0)
        nn = torch.nn
        return nn.Sequential(nn.Linear(64, 160), nn.ReLU(), nn.Linear(160, 96), nn.ReLU(), nn.Linear(96, 10))
    """
)

SCRIPT = textwrap.dedent(
    """
    import json, logging, os, sys
    import torch
    import torch.distributed as dist
    torch.set_num_threads(1)
    sys.path.insert(0, {root!r})
    exec({model!r})
    import wwmonitor
    from wwmonitor.monitor.analyzer import default_analyze

    out = {out!r}
    seen = []


    class Catch(logging.Handler):
        def emit(self, record):
            seen.append(record.getMessage())


    logging.getLogger("wwmonitor").addHandler(Catch())
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    ddp = torch.nn.parallel.DistributedDataParallel(mlp())
    opt = torch.optim.SGD(ddp.parameters(), lr=0.05)
    gen = torch.Generator().manual_seed(rank)

    def train(n):
        for _ in range(n):
            loss = ddp(torch.randn(16, 64, generator=gen)).pow(2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()

    def summary(mon):
        return {{"kind": mon.strategy.kind, "layers": mon.strategy.layers, "stats": mon.stats,
                "results": [r.step for r in mon.results], "has_store": mon.store is not None, "run_id": mon.run_id}}

    info = {{}}
    # 1. a plain loop, policy="latest" asked for: every rank must analyse every snapshot, so it is "block";
    # with a controller: every rank applies rank 0's decision (one broadcast per snapshot step, none between)
    from wwmonitor.control import TempBalance

    mon = wwmonitor.Monitor(ddp, os.path.join(out, "runs"), run_name="ddp", every_n_epochs=None, policy="latest",
                            queue_size=1)
    ctl = TempBalance(keep_ends=False, min_evals=0, sync=True).bind(model=ddp, optimizer=opt, monitor=mon)
    applied = []
    for s in (4, 8, 12):
        train(4)
        applied.append(ctl.step(s - 1))  # no snapshot since the last call: no collective, nothing to apply
        if rank == 0:
            torch.save(ddp.module.state_dict(), os.path.join(out, f"w{{s}}.pt"))
        mon.snapshot(step=s)
        applied.append(ctl.step(s))
    mon.close()
    ctl.unbind()
    info["ddp"] = summary(mon)
    info["policy"] = mon.policy
    info["control"] = {{"applied": applied, "factors": ctl.factors, "broadcasts": ctl._agreement.broadcasts}}

    # 2. failures on rank 1: one layer's analysis raises at every step, the whole analysis at step 2
    mon = wwmonitor.Monitor(ddp, os.path.join(out, "runs"), run_name="faults", every_n_epochs=None)
    if rank == 1:
        worker = mon._worker

        def bad_layer(W, name, *a):
            if name == "2":
                raise FloatingPointError("injected layer failure")
            return default_analyze(W, name, *a)

        worker.analyze_fn = bad_layer
        analyse = worker._analyse

        def bad_step(snap):
            if snap.step == 2:
                raise MemoryError("injected worker failure")
            return analyse(snap)

        worker._analyse = bad_step
    for s in (1, 2, 3):
        train(1)
        mon.snapshot(step=s)
    mon.close()
    info["faults"] = summary(mon)
    info["log"] = seen

    # 3. FSDP1 is refused, by name, on every rank
    try:
        from torch.distributed.fsdp import FullyShardedDataParallel
        fsdp1 = FullyShardedDataParallel(mlp(), device_id=torch.device("cpu"))
    except Exception as e:
        info["fsdp1"] = "could not build: " + repr(e)
    else:
        try:
            wwmonitor.Monitor(fsdp1, os.path.join(out, "runs"), run_name="fsdp1")
            info["fsdp1"] = "accepted"
        except Exception as e:
            info["fsdp1"] = type(e).__name__ + ": " + str(e)
    with open(os.path.join(out, f"rank{{rank}}.json"), "w") as f:
        json.dump(info, f, default=str)
    dist.barrier()
    os._exit(0)  # gloo's teardown sometimes aborts at exit on a loaded machine; everything is written
    """
)


def _mlp():
    ns: dict = {}
    exec(MODEL, ns)  # noqa: S102 - the test's own model source
    return ns["mlp"]()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp_plain")
    script = out / "ddp_plain.py"
    script.write_text(SCRIPT.format(root=str(ROOT), model=MODEL, out=str(out)))
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", str(_free_port())]
    proc = subprocess.run([*cmd, str(script)], cwd=out, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return out, [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]


def max_rel_diff(a: np.ndarray, b: np.ndarray) -> float:
    """max |a - b| / max(|b|, tiny) over finite entries (NaNs must match)."""
    assert np.array_equal(np.isnan(a), np.isnan(b))
    ok = ~np.isnan(b)
    return float(np.max(np.abs(a[ok] - b[ok]) / np.maximum(np.abs(b[ok]), 1e-300), initial=0.0))


def single_process(out: Path, steps: list[int], where: Path) -> wwmonitor.RunData:
    # carrying unchanged weights is off under a strategy (every rank analyses every snapshot): off here too
    with wwmonitor.Monitor(None, where, run_name="single", every_n_epochs=None, carry_unchanged=False) as mon:
        for s in steps:
            model = _mlp()
            model.load_state_dict(torch.load(out / f"w{s}.pt", weights_only=True))
            mon.snapshot(step=s, model=model)
    return wwmonitor.load_run(where / "single")


@pytest.mark.slow
def test_ddp_monitor_in_a_plain_loop_equals_single_process(ddp_run, tmp_path):
    out, info = ddp_run
    d = [i["ddp"] for i in info]
    assert [x["kind"] for x in d] == ["ddp", "ddp"] and info[0]["policy"] == "block"
    assert d[0]["layers"] == ["0", "4"] and d[1]["layers"] == ["2"]  # matrix i on rank i mod 2
    assert d[0]["has_store"] and not d[1]["has_store"] and d[0]["run_id"] == d[1]["run_id"] == "ddp"
    assert d[0]["results"] == [4, 8, 12] and d[1]["results"] == []  # rank 0 files the merged results
    for x in d:  # one worker, one stats, on every rank
        st = x["stats"]
        assert st["snapshots_taken"] == st["analysed"] == 3 and st["world_size"] == 2, st
        assert st["errors"] == st["worker_errors"] == st["skipped"] == st["coalesced"] == 0, st
    steps = [4, 8, 12]
    run = wwmonitor.load_run(out / "runs" / "ddp")
    ref = single_process(out, steps, tmp_path)
    a = run.metrics.set_index(["step", "layer", "metric"]).value.sort_index()
    b = ref.metrics.set_index(["step", "layer", "metric"]).value.sort_index()
    assert a.index.equals(b.index)
    assert max_rel_diff(a.to_numpy(), b.to_numpy()) <= 1e-12
    for s in steps:
        for layer in ("0", "2", "4"):
            np.testing.assert_allclose(run.esd(layer, s), ref.esd(layer, s), rtol=1e-12)
    pa, pb = (x.set_index(["step", "layer"]).phase.sort_index() for x in (run.phases, ref.phases))
    assert pa.equals(pb)
    # the steps really differ (a misfiled step would not be caught by identical snapshots)
    assert len(set(np.round(a.xs(("2", "log_norm"), level=("layer", "metric")).to_numpy(), 9))) == 3


@pytest.mark.slow
def test_failures_on_one_rank_reach_rank0_stats_store_and_log(ddp_run):
    out, info = ddp_run
    r0, r1 = info[0]["faults"], info[1]["faults"]
    # rank 1 analyses layer "2": it failed at steps 1 and 3 (layer) and 2 (whole analysis); nothing hangs
    assert r1["stats"]["worker_errors"] == 1 and r1["stats"]["errors"] == 3, r1["stats"]
    assert r0["stats"]["errors"] == 3 and r0["stats"]["worker_errors"] == 0, r0["stats"]  # merged on rank 0
    assert r0["results"] == [1, 2, 3]
    assert any("injected worker failure" in m and "worker_errors=1" in m for m in info[1]["log"]), info[1]["log"]
    run = wwmonitor.load_run(out / "runs" / "faults")
    assert sorted(run.metrics.step.unique()) == [1, 2, 3]
    st = run.layer_status.set_index(["step", "layer"])
    for s in (1, 2, 3):
        assert st.loc[(s, "2"), "status"] == "error" and st.loc[(s, "0"), "status"] == "ok"
    assert "injected layer failure" in st.loc[(1, "2"), "message"]
    assert "injected worker failure" in st.loc[(2, "2"), "message"] and "rank 1" in st.loc[(2, "2"), "message"]
    ok = run.metrics[(run.metrics.layer == "0") & (run.metrics.metric == "alpha")]
    assert len(ok) == 3  # the other layers are analysed as usual


@pytest.mark.slow
def test_controller_every_rank_applies_rank0_factors(ddp_run):
    out, info = ddp_run
    c0, c1 = info[0]["control"], info[1]["control"]
    assert info[1]["ddp"]["results"] == []  # rank 1 has no result of its own: it gets rank 0's decision
    assert c0["applied"] == c1["applied"] == [False, True] * 3  # sync: at the snapshot steps
    assert c0["broadcasts"] == c1["broadcasts"] == 3  # one collective per snapshot step, none in between
    assert c0["factors"] == c1["factors"]
    run = wwmonitor.load_run(out / "runs" / "ddp")
    m = run.metrics
    a = np.array([m[(m.step == 12) & (m.layer == n) & (m.metric == "alpha_median")].value.item() for n in "024"])
    want = 0.5 + (a - a.min()) / (a.max() - a.min())  # the linear map from the STORED alphas, no ends kept
    np.testing.assert_allclose([c0["factors"][n] for n in "024"], want, rtol=1e-12)
    assert sorted({(r.step, r.source_step) for r in run.control_records()}) == [(4, 4), (8, 8), (12, 12)]


@pytest.mark.slow
def test_fsdp1_is_refused_by_name_on_every_rank(ddp_run):
    _, info = ddp_run
    for i in info:
        msg = i["fsdp1"]
        assert msg.startswith("UnsupportedStrategyError: Monitor: FSDP1 (FullyShardedDataParallel) is not supported")
        assert "use torch.distributed.fsdp.fully_shard (FSDP2)" in msg


def test_deepspeed_engine_is_refused_by_name():
    class DeepSpeedEngine(torch.nn.Module):  # the class name DeepSpeed's engine has (deepspeed is not installed)
        def __init__(self) -> None:
            super().__init__()
            self.module = _mlp()

    with pytest.raises(UnsupportedStrategyError, match=r"DeepSpeed \(ZeRO\) is not supported.*FSDP2"):
        wwmonitor.Monitor(DeepSpeedEngine(), store=False)


def test_distributed_argument_is_checked():
    with pytest.raises(ValueError, match="distributed must be one of"):
        wwmonitor.Monitor(_mlp(), store=False, distributed="zero3")
    with pytest.raises(ValueError, match="no DTensor parameters"):
        wwmonitor.Monitor(_mlp(), store=False, distributed="fsdp2")


def test_old_sharded_module_warns_and_reexports():
    import importlib

    import wwmonitor.sharded as old
    import wwmonitor.sharded_model as one_call
    import wwmonitor.sharding as new

    with pytest.warns(DeprecationWarning, match="wwmonitor.sharding"):
        old = importlib.reload(old)
    assert old.analyze_sharded is one_call.analyze_sharded and old.ShardedSpectra is new.ShardedSpectra
    assert not hasattr(old, "OwnerAnalysis")  # the second analysis worker is gone: the Monitor has the strategy
