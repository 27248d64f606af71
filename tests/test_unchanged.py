"""Unchanged weights are free (wwmonitor/monitor/unchanged.py): a weight that did not change since its last
analysis is neither copied nor re-analysed; its earlier result is carried forward, marked ``"carried"``.

One tiny MLP (three Linear layers, the first frozen), a carrying monitor and a plain one (``carry_unchanged=False``)
snapshotting the same model at the same steps: the carried results must equal the full re-analysis.
"""

from __future__ import annotations

import csv
import time

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import wwmonitor  # noqa: E402
from wwmonitor.alerts import AlertRules  # noqa: E402
from wwmonitor.analyze import AnalysisOptions  # noqa: E402
from wwmonitor.metrics import CARRIED, LayerMetrics  # noqa: E402
from wwmonitor.monitor import unchanged  # noqa: E402
from wwmonitor.records import SnapshotResult  # noqa: E402
from wwmonitor.sinks import CSVSink  # noqa: E402
from wwmonitor.sinks._render import phase_markdown  # noqa: E402

pytestmark = [
    pytest.mark.usefixtures("one_blas_thread"),
    pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing.*:FutureWarning"),  # peft -> transformers
    pytest.mark.filterwarnings("ignore:.*fan_in_fan_out.*:UserWarning"),
]
torch.set_num_threads(1)
OPTS = AnalysisOptions(min_evals=8)
KW = dict(loggers=False, announce=False, options=OPTS, esd_every_n_epochs=0, alerts=None)


def mlp(seed: int = 0) -> "torch.nn.Module":
    torch.manual_seed(seed)
    m = torch.nn.Sequential(torch.nn.Linear(24, 40), torch.nn.ReLU(), torch.nn.Linear(40, 32), torch.nn.Linear(32, 16))
    m[0].weight.requires_grad_(False)
    return m


def train_step(m: "torch.nn.Module", opt: "torch.optim.Optimizer") -> None:
    loss = m(torch.randn(8, 24)).pow(2).mean()
    opt.zero_grad()
    loss.backward()
    opt.step()


@pytest.fixture
def copied(monkeypatch):
    """Names of the matrices each snapshot of a carrying monitor copied (its copy plan, instrumented)."""
    calls: list[list[str]] = []
    real = unchanged.plan_copies

    def spy(*args, **kw):
        plan = real(*args, **kw)
        calls.append([sp.name for sp in plan.copy])
        return plan

    monkeypatch.setattr(unchanged, "plan_copies", spy)
    return calls


def snap(mons, step):
    for mon in mons:
        mon.snapshot(step=step, epoch=step)
        mon.flush()
    return [mon.results[-1] for mon in mons]


def test_carried_equals_full_reanalysis_without_a_copy_and_is_marked(tmp_path, copied):
    m = mlp()
    opt = torch.optim.SGD([p for p in m.parameters() if p.requires_grad], lr=0.05)
    csv_path = tmp_path / "m.csv"
    carry = wwmonitor.Monitor(m, tmp_path, run_name="carry", sinks=[CSVSink(csv_path)], **KW)
    plain = wwmonitor.Monitor(m, tmp_path, run_name="plain", carry_unchanged=False, **KW)
    with carry, plain:
        first = snap([carry], 1)[0]
        assert copied == [["0", "2", "3"]] and first.summary["carried_layers"] == 0
        bytes_all = carry.stats["buffer_bytes"]
        plain.snapshot(step=1, epoch=1)
        for step in (2, 3):
            train_step(m, opt)
            a, b = snap([carry, plain], step)
            assert copied[-1] == ["2", "3"]  # the frozen layer is not copied
            assert [lm.status for lm in a.layers] == [CARRIED, "ok", "ok"]
            assert a.layers[0].message == "unchanged since step 1"
            assert "| 0 |" in phase_markdown(a) and "carried, unchanged since step 1" in phase_markdown(a)
            assert a.summary["carried_layers"] == 1 and a.summary["num_ok"] == 3
            assert "carried_layers" not in b.summary
            for x, y in zip(a.layers, b.layers):  # every value equals the plain monitor's fresh analysis
                assert x.numeric() == y.numeric() and x.phase == y.phase
                np.testing.assert_array_equal(a.esds[x.name], b.esds[y.name])
                assert a.fits[x.name] == b.fits[y.name]
        assert carry.stats["buffer_bytes"] < bytes_all  # the frozen layer's buffer was given back
        assert {k: v for k, v in a.summary.items() if k != "carried_layers"} == b.summary
    run = wwmonitor.load_run(carry.run_dir)
    st = run.layer_status.set_index(["step", "layer"])
    assert st.loc[(1, "0"), "status"] == "ok" and st.loc[(3, "0"), "status"] == CARRIED
    assert st.loc[(3, "0"), "message"] == "unchanged since step 1"
    assert run.esd("0", 3).tolist() == run.esd("0", 1).tolist() and run.fits("0", 3) == run.fits("0", 1)
    with open(csv_path) as f:
        rows = [r for r in csv.DictReader(f) if r["metric"] == "carried_layers"]
    assert [(r["step"], float(r["value"])) for r in rows] == [("1", 0.0), ("2", 1.0), ("3", 1.0)]


@pytest.mark.parametrize("how", ["data_mul", "data_copy", "numpy_buffer", "version_bump"])
def test_in_place_change_is_caught(tmp_path, copied, how):
    """``.data`` and a NumPy array sharing the buffer do not move ``p._version``: the checksum catches them."""
    m = mlp()
    w = m[0].weight
    with wwmonitor.Monitor(m, tmp_path, **KW) as mon:
        snap([mon], 1)
        v0 = w._version
        with torch.no_grad():
            if how == "data_mul":
                w.data.mul_(1.5)
            elif how == "data_copy":
                w.data.copy_(torch.randn_like(w))
            elif how == "numpy_buffer":
                w.detach().numpy()[3, :5] += 0.25
            else:
                w.mul_(1.5)
        assert (w._version == v0) == (how != "version_bump")
        res = snap([mon], 2)[0]
        assert copied[-1] == ["0"] and [lm.status for lm in res.layers] == ["ok", CARRIED, CARRIED]
        fresh = wwmonitor.analyze_matrix(w.detach().numpy(), "0", options=OPTS)
        assert res.layers[0].alpha == pytest.approx(fresh.alpha, rel=1e-9)
        assert [lm.status for lm in snap([mon], 3)[0].layers] == [CARRIED] * 3  # unchanged again


def test_option_off_copies_and_analyses_everything(tmp_path, copied):
    m = mlp()
    with wwmonitor.Monitor(m, tmp_path, carry_unchanged=False, **KW) as mon:
        res = [snap([mon], s)[0] for s in (1, 2)]
    assert copied == []  # the carrying copy step is never used
    assert all(lm.status == "ok" for r in res for lm in r.layers) and all(
        "carried_layers" not in r.summary for r in res
    )


def test_lora_frozen_base_is_free_after_the_first_snapshot(tmp_path, copied):
    """Under peft LoRA the frozen matrices (non-adapted layers, the adapted layers' base W0) are carried; each
    effective weight W0 + s·BA and update s·BA is re-analysed."""
    peft = pytest.importorskip("peft")
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    base = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=64, n_positions=16))
    cfg = peft.LoraConfig(r=4, lora_alpha=8, target_modules=["c_attn"], fan_in_fan_out=True, init_lora_weights=False)
    pm = peft.get_peft_model(base, cfg)
    opt = torch.optim.SGD([p for p in pm.parameters() if p.requires_grad], lr=0.01)
    with wwmonitor.Monitor(pm, tmp_path, lora="all", **KW) as mon:  # effective, update and base matrices
        first = snap([mon], 1)[0]
        for step in (2, 3):
            loss = pm(torch.randint(0, 64, (2, 8)), labels=torch.randint(0, 64, (2, 8))).loss
            opt.zero_grad()
            loss.backward()
            opt.step()
            res = snap([mon], step)[0]
    lora = {lm.name for lm in first.layers if ".c_attn." in lm.name and not lm.name.endswith(".base")}
    assert lora and any(n.endswith(".base") for n in {lm.name for lm in first.layers} - lora)
    assert set(copied[-1]) == lora  # only the effective weights were copied
    assert {lm.name for lm in res.layers if lm.status == CARRIED} == {lm.name for lm in first.layers} - lora
    assert res.summary["carried_layers"] == len(first.layers) - len(lora)


def _lm(status: str) -> SnapshotResult:
    lm = LayerMetrics(name="fc", N=200, M=100, num_evals=100, num_pl_spikes=50, alpha=1.2, sigma=0.01, status=status)
    return SnapshotResult(step=0, epoch=0, time=time.time(), layers=[lm])


def test_alerts_do_not_count_carried_values_as_new_evidence():
    rules = AlertRules(alpha_low_patience=3, rules=["alpha_low"])
    seq = ["ok", CARRIED, CARRIED, CARRIED, CARRIED, "ok", "ok"]
    fired = [bool(rules.evaluate(_lm(s))) for s in seq]
    assert fired == [False] * 6 + [True]  # three analysed snapshots, however many carried ones between


@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "float16", "float64"])
def test_device_checksum_route_equals_the_host_one(dtype):
    """The accelerator route (torch kernels) and the host route (NumPy) give the same checksum, views included."""
    t = (torch.randn(37, 20, dtype=torch.float64) * 1e300 if dtype == "float64" else torch.randn(37, 20)).to(
        getattr(torch, dtype)
    )
    for v in (t, t.T, t[::2, 3:]):
        assert int(unchanged.torch_checksum(v)) == unchanged.host_checksum(v)
