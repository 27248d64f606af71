"""wwmonitor.control end to end in plain PyTorch, with a real Monitor and its run store.

The rates checked are the ones the optimizer *used*: for plain SGD (no momentum, no decay) the update is
``Δp = -lr · grad``, so ``lr_used = -Δp / grad`` per parameter (float64 model); the expected value is
the scheduler's rate times the factor computed here, by hand, from the alphas read back from the store.
"""

from __future__ import annotations

import csv

import numpy as np
import pytest

torch = pytest.importorskip("torch")
nn = torch.nn

import wwmonitor  # noqa: E402
from wwmonitor.control import AlphaDecay, TempBalance  # noqa: E402
from wwmonitor.control.layout import build_layers  # noqa: E402
from wwmonitor.sinks.csv import CSVSink  # noqa: E402
from wwmonitor.sinks.tensorboard import TensorBoardSink  # noqa: E402

LAYERS = ["0", "2", "5", "7", "9"]  # the Linear layers; BatchNorm "3" follows "2"


def _model() -> nn.Module:
    torch.manual_seed(0)
    m = nn.Sequential(
        nn.Linear(12, 16),
        nn.ReLU(),
        nn.Linear(16, 16),
        nn.BatchNorm1d(16),
        nn.ReLU(),
        nn.Linear(16, 16),
        nn.ReLU(),
        nn.Linear(16, 16),
        nn.ReLU(),
        nn.Linear(16, 3),
    )
    return m.double()


def _monitor(model, tmp_path, **kw):
    return wwmonitor.Monitor(model, tmp_path / "runs", every_n_steps=1, announce=False, **kw)


def _loss(model):
    g = torch.Generator().manual_seed(1)
    X = torch.randn(32, 12, generator=g, dtype=torch.float64)
    Y = torch.randint(0, 3, (32,), generator=g)
    return nn.functional.cross_entropy(model(X), Y)


def _used_lr(before, after, grad):
    """-Δp / grad over the entries with a clear gradient (SGD without momentum or decay)."""
    ok = grad.abs() > 1e-8
    if not ok.any():  # e.g. the bias of a Linear right before a BatchNorm: no gradient, no information
        return None
    return float(np.median((-(after - before)[ok] / grad[ok]).numpy()))


def _expected_factors(run, step, lo=0.5, hi=1.5):
    """From the STORED alpha_median of snapshot ``step``: the ends keep 1, the rest linear in alpha."""
    m = run.metrics
    a = {r.layer: r.value for r in m[(m.step == step) & (m.metric == "alpha_median")].itertuples()}
    mid = np.array([a[n] for n in LAYERS[1:-1]])
    f = lo + (hi - lo) * (mid - mid.min()) / (mid.max() - mid.min())
    return dict(zip(LAYERS, [1.0, *f, 1.0]))


SCHEDULERS = {
    "lambda": lambda opt: torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.9**s),
    "cosine": lambda opt: torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=6),
    "exponential": lambda opt: torch.optim.lr_scheduler.ExponentialLR(opt, gamma=0.8),  # chainable
}


@pytest.mark.parametrize("sched_name", list(SCHEDULERS))
def test_tempbalance_sgd_rates_equal_assignment_from_stored_alphas(tmp_path, sched_name):
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = SCHEDULERS[sched_name](opt)
    twin_opt = torch.optim.SGD(_model().parameters(), lr=0.1)  # the same scheduler without a controller
    twin_sched = SCHEDULERS[sched_name](twin_opt)
    tb = _Writer()
    sinks = [CSVSink(tmp_path / "csv"), TensorBoardSink(tb, layout=False, images=False)]
    sinks = sinks if sched_name == "lambda" else []
    used: dict[int, dict[str, float]] = {}
    scheduled: dict[int, float] = {}
    with _monitor(model, tmp_path, sinks=sinks) as mon:
        ctl = TempBalance(min_evals=8, sync=True).bind(model=model, optimizer=opt, monitor=mon)
        assert ctl.layers == LAYERS
        for s in range(1, 5):
            before = {n: p.detach().clone() for n, p in model.named_parameters()}
            opt.zero_grad()
            _loss(model).backward()
            grads = {n: p.grad.detach().clone() for n, p in model.named_parameters()}
            scheduled[s] = opt.param_groups[0]["lr"]
            opt.step()
            used[s] = {n: _used_lr(before[n], p.detach(), grads[n]) for n, p in model.named_parameters()}
            assert len(opt.param_groups) == 1  # the split exists only inside the update
            sched.step()
            twin_opt.step()
            twin_sched.step()
            assert opt.param_groups[0]["lr"] == twin_opt.param_groups[0]["lr"]  # the scheduler's own sequence
            mon.snapshot(step=s)
            assert ctl.step(s)  # sync: the analysis of step s is applied before update s + 1
    run = wwmonitor.load_run(mon.run_dir)
    assert all(u == pytest.approx(scheduled[1], rel=1e-9) for u in used[1].values() if u is not None)  # as given
    for s in range(2, 5):
        want = _expected_factors(run, s - 1)
        for name, u in used[s].items():
            if u is None:
                continue
            layer = "2" if name.startswith("3.") else name.split(".")[0]  # BatchNorm follows its Linear
            assert u == pytest.approx(scheduled[s] * want[layer], rel=1e-7), (s, name)
    recs = run.control_records()
    assert recs == ctl.assignments and len(recs) == 4 * len(LAYERS)
    r = next(r for r in recs if r.step == 2 and r.layer == "5")
    assert r.source_step == 2 and r.controller == "TempBalance" and r.quantity == "lr"
    assert r.value == pytest.approx(r.base * r.factor) and r.base == pytest.approx(scheduled[3])
    if sched_name == "lambda":
        _check_sinks(tmp_path, recs, tb)


class _Writer:
    """What TensorBoardSink hands a SummaryWriter (it takes any object with these methods)."""

    def __init__(self):
        self.scalars: dict[str, dict[int, float]] = {}

    def add_scalar(self, tag, value, step):
        self.scalars.setdefault(tag, {})[int(step)] = float(value)

    def add_text(self, *a, **k):
        pass

    def flush(self):
        pass


def _check_sinks(tmp_path, recs, tb):
    with open(tmp_path / "csv" / "wwmonitor_metrics.csv") as fh:
        rows = [row for row in csv.DictReader(fh) if row["metric"] == "control.lr"]
    assert len(rows) == len(recs)
    assert {(int(r["step"]), r["layer"]) for r in rows} == {(r.step, r.layer) for r in recs}
    assert tb.scalars["ww_control/lr/5"] == {r.step: r.value for r in recs if r.layer == "5"}
    assert tb.scalars["ww_control/lr_factor/5"] == {r.step: r.factor for r in recs if r.layer == "5"}


def test_alphadecay_adamw_decay_no_decay_groups(tmp_path):
    model = _model()
    decay = [p for n, p in model.named_parameters() if n.endswith("weight") and not n.startswith("3.")]
    no_decay = [p for n, p in model.named_parameters() if not (n.endswith("weight") and not n.startswith("3."))]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}])
    groups_before = list(opt.param_groups)
    seen: list[dict[int, float]] = []
    with _monitor(model, tmp_path) as mon:
        ctl = AlphaDecay(min_evals=8, wd_range=(0.5, 2.0)).bind(model=model, optimizer=opt, monitor=mon)
        # registered after bind: sees the groups the update uses
        opt.register_step_pre_hook(
            lambda o, a, k: seen.append({id(p): g["weight_decay"] for g in o.param_groups for p in g["params"]})
        )
        for s in (1, 2):
            opt.zero_grad()
            _loss(model).backward()
            opt.step()
            mon.snapshot(step=s)
            mon.flush()  # async mode: the result is there once the analysis finished
            assert ctl.step(s)
            assert not ctl.step(s)  # nothing newer: no second application
    assert opt.param_groups == groups_before and [g["weight_decay"] for g in opt.param_groups] == [0.1, 0.0]
    run = wwmonitor.load_run(mon.run_dir)
    m = run.metrics
    a = {r.layer: r.value for r in m[(m.step == 1) & (m.metric == "alpha_median")].itertuples()}
    mid = np.array([a[n] for n in LAYERS[1:-1]])
    want = dict(zip(LAYERS[1:-1], 0.5 + 1.5 * (mid - mid.min()) / (mid.max() - mid.min())))
    for name, p in model.named_parameters():
        layer = "2" if name.startswith("3.") else name.split(".")[0]
        base = 0.1 if any(p is q for q in decay) else 0.0
        assert seen[1][id(p)] == pytest.approx(base * want.get(layer, 1.0), rel=1e-12), name  # 2nd update
        assert seen[0][id(p)] == base  # first update: nothing applied yet
    assert {r.quantity for r in run.control_records()} == {"weight_decay"}


def test_async_step_never_waits_and_state_dict_round_trip(tmp_path):
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with _monitor(model, tmp_path, store=False) as mon:
        ctl = TempBalance(min_evals=8, assignment="step").bind(optimizer=opt, monitor=mon)
        assert not ctl.step(0)  # no result yet
        mon.snapshot(step=1)
        mon.flush()
        assert ctl.step(1) and ctl.assignments[0].step == 1
        state = ctl.state_dict()
    assert sorted(state["factors"]) == pytest.approx(sorted([1.0, 1.0, 0.5, 0.5 + 1 / 3, 0.5 + 2 / 3]))  # ends: 1
    opt2 = torch.optim.SGD(model.parameters(), lr=0.1)
    with _monitor(model, tmp_path, store=False) as mon2:
        ctl2 = TempBalance(min_evals=8, assignment="step")
        ctl2.load_state_dict(state)  # before bind: kept until bind
        ctl2.bind(model=model, optimizer=opt2, monitor=mon2)
        assert ctl2.factors == ctl.factors
        with pytest.raises(ValueError, match="AlphaDecay"):
            ctl2.load_state_dict({**state, "controller": "AlphaDecay"})


def test_errors_name_the_parameter(tmp_path):
    model = _model()
    with _monitor(model, tmp_path, store=False) as mon:
        part = torch.optim.SGD(model[0].parameters(), lr=0.1)
        with pytest.raises(ValueError, match=r"parameter '2\.weight' of layer '2' is not in the optimizer"):
            TempBalance().bind(model=model, optimizer=part, monitor=mon)
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        ctl = TempBalance().bind(model=model, optimizer=opt, monitor=mon)
        with pytest.raises(RuntimeError, match="already bound"):
            ctl.bind(model=model, optimizer=opt, monitor=mon)
        with pytest.raises(ValueError, match="not a module"):
            TempBalance().bind(model=nn.Linear(3, 3), optimizer=opt, monitor=mon)
    with pytest.raises(TypeError, match="torch.optim.Optimizer"):
        TempBalance().bind(model=model, optimizer=object(), monitor=mon)
    tied = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4))
    tied[1].weight = tied[0].weight
    with pytest.raises(ValueError, match=r"parameter '1\.weight' belongs to layer '1' and to layer '0'"):
        build_layers(tied, ["0", "1"])
    with pytest.raises(ValueError, match="assignment"):
        TempBalance(assignment="cubic")
    with pytest.raises(ValueError, match="alpha"):
        AlphaDecay(alpha="hill")


@pytest.mark.slow
def test_example_tempbalance_pytorch(tmp_path):
    import os
    import subprocess
    import sys
    from pathlib import Path

    example = Path(__file__).resolve().parents[1] / "examples" / "tempbalance_pytorch.py"
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    r = subprocess.run(
        [sys.executable, str(example), "--epochs", "1", "--out", "ex"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "test accuracy:" in r.stdout and "TempBalance assignments recorded: 5" in r.stdout
    recs = wwmonitor.load_run(tmp_path / "ex" / "runs" / "tempbalance-mlp").control_records()
    assert [r.factor for r in recs if r.layer in ("0", "8")] == [1.0, 1.0]  # the ends keep the scheduled rate
    assert sorted(r.factor for r in recs if r.layer not in ("0", "8"))[::2] == [0.5, 1.5]


def test_layers_norms_follow_their_layer_and_fused_matrices_are_one_layer():
    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(8, 8)
            self.ln = nn.LayerNorm(8)
            self.attn = nn.MultiheadAttention(8, 2)
            self.bn = nn.BatchNorm1d(8)  # after attn's out_proj (registered inside attn): follows it

    m = Block()
    names = ["fc", "attn.q", "attn.k", "attn.v", "attn.out_proj"]  # the monitor's matrices of this block
    layers = {x.name: [p for p, _ in x.params] for x in build_layers(m, names, norms="all")}
    assert layers == {
        "fc": ["fc.weight", "fc.bias", "ln.weight", "ln.bias"],
        "attn": ["attn.in_proj_weight", "attn.in_proj_bias"],
        "attn.out_proj": ["attn.out_proj.weight", "attn.out_proj.bias", "bn.weight", "bn.bias"],
    }
    by_default = {x.name: [p for p, _ in x.params] for x in build_layers(m, names)}  # norms="batch"
    assert by_default["fc"] == ["fc.weight", "fc.bias"] and by_default["attn.out_proj"][-1] == "bn.bias"
    assert [x.matrices for x in build_layers(m, names)][1] == ["attn.q", "attn.k", "attn.v"]
