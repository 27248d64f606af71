"""DDP with 2 CPU ranks (gloo): sharded analysis equals a single-process analysis, no duplicates.

Lightning's ``strategy="ddp"`` re-launches the *script* for rank 1, so the fit
runs in a subprocess script, never inside pytest itself.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("lightning")

import wwmonitor  # noqa: E402
from wwmonitor.distributed import gather_objects, shard_indices  # noqa: E402

HERE = Path(__file__).parent

SCRIPT = textwrap.dedent(
    """
    import json, os, sys
    sys.path.insert(0, {tests!r})
    import torch
    torch.set_num_threads(1)
    import lightning.pytorch as pl
    from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
    from _wwcb_helpers import make_module
    from wwmonitor.callbacks.lightning import WeightWatcherCallback

    import logging, warnings

    seen = []  # wwmonitor's own output on this rank: log records and warnings


    class _Catch(logging.Handler):
        def emit(self, record):
            seen.append(record.getMessage())


    logging.getLogger("wwmonitor").addHandler(_Catch())
    logging.getLogger("wwmonitor").setLevel(logging.INFO)
    _show = warnings.showwarning


    def _showwarning(message, category, filename, lineno, file=None, line=None):
        if "wwmonitor" in str(message) or "wwmonitor" in filename:
            seen.append(str(message))
        return _show(message, category, filename, lineno, file, line)


    warnings.showwarning = _showwarning

    class SaveWeights(pl.Callback):
        # rank 0 keeps the weights of every epoch end, to check each step's filed metrics

        def on_train_epoch_end(self, trainer, pl_module):
            if trainer.global_rank == 0:
                torch.save(pl_module.state_dict(), os.path.join({out!r}, f"w{{trainer.global_step}}.pt"))


    if __name__ == "__main__":
        out = {out!r}
        # policy="latest" (and "skip") used to file gathered metrics under the wrong step
        cb = WeightWatcherCallback(every_n_epochs=1, run_dir=os.path.join(out, "runs"), run_name="ddp",
                                   policy="latest", queue_size=1, esd_every_n_epochs=1,
                                   # a threshold every layer exceeds: guaranteed alert output on rank 0
                                   alerts={{"rules": ["alpha_high", "rank_collapse"], "alpha_high": 2.5,
                                            "warmup": 0}})
        trainer = pl.Trainer(accelerator="cpu", devices=2, strategy="ddp", max_epochs=3, callbacks=[SaveWeights(), cb],
                             logger=[TensorBoardLogger(os.path.join(out, "tb")), CSVLogger(os.path.join(out, "csv"))],
                             enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False)
        model = make_module("lightning")
        trainer.fit(model)
        r = trainer.global_rank
        info = {{"rank": r, "world": trainer.world_size, "shard": cb.shard_layers, "step": trainer.global_step,
                "has_store": cb.monitor.store is not None, "sinks": len(cb.sinks), "output": seen}}
        with open(os.path.join(out, f"rank{{r}}.json"), "w") as f:
            json.dump(info, f)
        if r == 0:
            torch.save(model.state_dict(), os.path.join(out, "final.pt"))
    """
)


def test_shard_indices():
    assert shard_indices(5, 0, 2) == [0, 2, 4]
    assert shard_indices(5, 1, 2) == [1, 3]
    assert sorted(i for r in range(3) for i in shard_indices(10, r, 3)) == list(range(10))
    assert gather_objects({"a": 1}) == [{"a": 1}]  # no process group: identity
    with pytest.raises(ValueError, match="rank"):
        shard_indices(3, 2, 2)


@pytest.mark.slow
def test_ddp_two_cpu_ranks_equals_single_process(tmp_path):
    script = tmp_path / "ddp_fit.py"
    script.write_text(SCRIPT.format(tests=str(HERE), out=str(tmp_path)))
    import socket

    with socket.socket() as sock:  # a free port for the gloo rendezvous
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1", "MASTER_PORT": str(port)}
    proc = subprocess.run(
        [sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    info = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [i["world"] for i in info] == [2, 2]
    assert info[0]["shard"] == ["fc1", "out"] and info[1]["shard"] == ["fc2"]  # layer i on rank i mod 2
    assert info[0]["has_store"] and not info[1]["has_store"]  # a Monitor on every rank; only rank 0 stores and logs
    assert info[0]["sinks"] == 2 and info[1]["sinks"] == 0
    steps = [8, 16, 24]  # 256 samples per rank / batch 32
    assert info[0]["step"] == 24

    runs = list((tmp_path / "runs").iterdir())
    assert [p.name for p in runs] == ["ddp"]
    run = wwmonitor.load_run(runs[0])
    m = run.metrics
    assert sorted(m.step.unique()) == steps
    assert not m.duplicated(["step", "layer", "metric"]).any()
    assert set(m[m.layer != "__model__"].layer) == {"fc1", "fc2", "out"}

    # single-process analysis of each epoch's weights == the DDP run's metrics filed under that step
    sys.path.insert(0, str(HERE))
    from _wwcb_helpers import make_module

    single_run = tmp_path / "single" / "single"
    with wwmonitor.Monitor(
        None, tmp_path / "single", run_name="single", every_n_epochs=None, carry_unchanged=False
    ) as mon:
        for epoch, step in enumerate(steps):
            model = make_module("lightning")
            model.load_state_dict(torch.load(tmp_path / f"w{step}.pt", weights_only=True))
            mon.snapshot(step=step, epoch=epoch, model=model)
    single = wwmonitor.load_run(single_run).metrics
    for step in steps:
        a = m[m.step == step].set_index(["layer", "metric"]).value.sort_index()
        b = single[single.step == step].set_index(["layer", "metric"]).value.sort_index()
        assert a.index.equals(b.index), step
        np.testing.assert_allclose(a.to_numpy(), b.to_numpy(), rtol=1e-9, atol=1e-12, err_msg=f"step {step}")
        for layer in ("fc1", "fc2"):
            np.testing.assert_allclose(run.esd(layer, step), wwmonitor.load_run(single_run).esd(layer, step))
    # the steps really differ (a misfiled step would not be caught by identical snapshots)
    alphas = m[(m.layer == "fc1") & (m.metric == "log_norm")].sort_values("step").value.to_numpy()
    assert len(set(np.round(alphas, 9))) == 3

    # TensorBoard written once (rank 0), every step present exactly once
    from _wwcb_helpers import tb_accumulator

    ev_files = list((tmp_path / "tb").rglob("events.out.tfevents.*"))
    assert len(ev_files) == 1
    ea = tb_accumulator(str(ev_files[0].parent))
    assert [e.step for e in ea.Scalars("ww.alpha/fc2")] == steps
    # wwmonitor's output (alert log lines and warnings) appears only on rank 0
    assert any("alpha_high" in msg for msg in info[0]["output"]), info[0]["output"]
    assert info[1]["output"] == []


def _gloo_worker(rank: int, world: int, port: int, out: str) -> None:
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world))
    from wwmonitor.distributed import broadcast_object, init_from_env, rank_world

    init_from_env()
    r, w = rank_world()
    mine = {i: f"layer{i}@rank{r}" for i in shard_indices(5, r, w)}
    everyone = gather_objects(mine)  # all-gather: every rank gets the list
    to_zero = gather_objects(mine, dst=0)
    token = broadcast_object("from-0" if r == 0 else None)
    with open(os.path.join(out, f"g{r}.json"), "w") as f:
        json.dump({"rw": [r, w], "all": everyone, "zero": to_zero, "token": token}, f)
    dist.barrier()
    dist.destroy_process_group()


@pytest.mark.slow
def test_gather_helpers_with_two_gloo_processes(tmp_path):
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    # fork: the children reuse the imported modules (spawn would re-import torch in each)
    mp.start_processes(_gloo_worker, args=(2, port, str(tmp_path)), nprocs=2, join=True, start_method="fork")
    g = [json.loads((tmp_path / f"g{r}.json").read_text()) for r in (0, 1)]
    expect = [
        {"0": "layer0@rank0", "2": "layer2@rank0", "4": "layer4@rank0"},
        {"1": "layer1@rank1", "3": "layer3@rank1"},
    ]
    assert [x["rw"] for x in g] == [[0, 2], [1, 2]]
    assert g[0]["all"] == expect and g[1]["all"] == expect
    assert g[0]["zero"] == expect and g[1]["zero"] is None
    assert g[0]["token"] == g[1]["token"] == "from-0"
