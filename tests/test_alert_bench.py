"""The alert bench (benchmarks/alert_bench, issue 16): criterion, record/replay and the budget on a small slice.

The slice trains a few real runs of two *tune* families end to end under ``wwmonitor.Monitor`` with the default
alert rules (a few seconds each), records them into a temporary cache, replays them and asserts the budget:
healthy runs silent, collapsing runs warned before their last epoch.  The runs are labelled by the bench's own
criterion (validation loss and ranks from ``torch.linalg``), never by the setting's name.
"""

from __future__ import annotations

import json
import logging
import math
import re
from pathlib import Path

import numpy as np
import pytest

from benchmarks.alert_bench import criterion, table
from benchmarks.alert_bench.families import FAMILIES
from benchmarks.alert_bench.record import cache_dir, run_dir, train_and_record
from benchmarks.alert_bench.replay import replay, replay_run
from benchmarks.alert_bench.split import HELDOUT, SPLITS, TUNE

ROOT = Path(__file__).resolve().parents[1]

#: (family, setting) of the slice, seed 0: the reference and the collapse-prone settings of two tune families
SLICE = [
    ("mlp_cls", "ref"),
    ("mlp_cls", "wd_strong"),
    ("mlp_cls", "lr_huge"),
    ("gru_seq", "ref"),
    ("gru_seq", "wd_strong"),
]


# --------------------------------------------------------------------------------------------- criterion
def test_rank_stats_of_known_matrices():
    rng = np.random.default_rng(0)
    u, v = rng.standard_normal((64, 1)), rng.standard_normal((1, 32))
    sr, nr, fn = criterion.rank_stats(u @ v)
    assert sr == pytest.approx(1.0) and nr == 1 and fn == pytest.approx(np.linalg.norm(u @ v))
    sr, nr, _ = criterion.rank_stats(np.eye(16))
    assert sr == pytest.approx(16.0) and nr == 16
    assert criterion.rank_stats(np.zeros((4, 4))) == (0.0, 0, 0.0)
    sr, nr, fn = criterion.rank_stats(np.full((4, 4), np.nan))
    assert math.isnan(sr) and nr == 0
    sr, nr, _ = criterion.rank_stats(np.ones((8, 2, 3, 3)))  # conv kernel: flattened to 8 x 18
    assert sr == pytest.approx(1.0) and nr == 1


def _meta(val0, val, ranks0, ranks_end, diverged=False):
    return {"val0": val0, "val": val, "ranks0": ranks0, "ranks": [ranks_end] * len(val), "diverged": diverged}


REF = _meta(2.0, [1.5, 1.0, 0.8, 0.9], {"w": [20.0, 64, 10.0]}, {"w": [10.0, 64, 12.0]})


@pytest.mark.parametrize(
    "run, label",
    [
        (REF, "healthy"),
        # keeps less than half the reference's gain (0.8 + 0.5 * 1.2 = 1.4) and lost its stable rank
        (_meta(2.0, [1.9, 1.8, 1.7, 1.6], {"w": [20.0, 64, 10.0]}, {"w": [1.2, 64, 3.0]}), "collapsing"),
        # ... and shrank to zero, rank kept (a normalised layer under strong weight decay)
        (_meta(2.0, [1.9, 1.8, 1.7, 1.6], {"w": [20.0, 64, 10.0]}, {"w": [15.0, 64, 0.5]}), "collapsing"),
        # ... numerical rank lost
        (_meta(2.0, [1.9, 1.8, 1.7, 1.6], {"w": [20.0, 64, 10.0]}, {"w": [15.0, 20, 9.0]}), "collapsing"),
        # bad validation loss, structure kept: failed, not collapsing
        (_meta(2.0, [1.9, 1.8, 1.7, 1.6], {"w": [20.0, 64, 10.0]}, {"w": [12.0, 64, 9.0]}), "failed"),
        # low rank but a good validation loss: healthy (a low-rank solution is no collapse)
        (_meta(2.0, [1.5, 1.0, 0.9, 0.9], {"w": [20.0, 64, 10.0]}, {"w": [1.1, 64, 2.0]}), "healthy"),
        # diverged
        (_meta(2.0, [1.5, None, None, None], {"w": [20.0, 64, 10.0]}, {"w": [10.0, 64, 10.0]}, True), "collapsing"),
    ],
)
def test_judge_labels(run, label):
    assert criterion.judge(run, REF).label == label


def test_judge_best_and_last_epoch_and_invalid_reference():
    v = criterion.judge(REF, REF)
    assert (v.best_epoch, v.last_epoch) == (2, 3)
    flat = _meta(2.0, [2.1, 2.2, 2.0, 2.3], {"w": [20.0, 64, 10.0]}, {"w": [10.0, 64, 10.0]})
    assert criterion.judge(REF, flat).label == "invalid"


# --------------------------------------------------------------------------------------------- split, cache
def test_split_is_fixed_and_covers_every_family():
    assert set(TUNE) | set(HELDOUT) == set(FAMILIES) and not set(TUNE) & set(HELDOUT)
    assert len(TUNE) == len(HELDOUT) == 4 and SPLITS["all"] == TUNE + HELDOUT
    for f in FAMILIES.values():
        assert len(f.settings) >= 3 and f.reference in f.settings
        assert {"healthy", "collapse"} <= set(f.intent.values()), f.name


def test_cache_refuses_the_repository(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="inside the repository"):
        cache_dir(str(ROOT / "cache"))
    monkeypatch.setenv("WWM_ALERT_BENCH_CACHE", str(tmp_path))
    assert cache_dir() == tmp_path.resolve()


def test_write_docs_replaces_only_the_block(tmp_path):
    doc = tmp_path / "alerts.md"
    doc.write_text("head\n<!-- bench:alert-bench:begin -->\nold\n<!-- bench:alert-bench:end -->\ntail\n")
    table.write_docs("new table", doc)
    assert (
        doc.read_text() == "head\n<!-- bench:alert-bench:begin -->\nnew table\n<!-- bench:alert-bench:end -->\ntail\n"
    )
    doc.write_text("no markers")
    with pytest.raises(ValueError, match="alert-bench"):
        table.write_docs("x", doc)


def test_docs_block_exists_once_and_cites_no_machine_path():
    from benchmarks import docs_blocks

    text = (ROOT / table.DOC).read_text()
    docs_blocks.read_block(text, table.BLOCK)
    assert not re.findall(r"(?<![\w.])/(?:work|tmp|home|root|mnt|Users)/\S+", text)


def test_budget_and_verdict_sentences():
    def row(label, first, best=3, last=9):
        return table.Row("f", "s", 0, "", label, "", first is not None, first, best, last, "-", 1.0, 0)

    rows = [row("healthy", None)] * 19 + [row("healthy", 2)] + [row("collapsing", 1)] * 3 + [row("collapsing", 5)]
    b = table.budget(rows)
    assert (b["healthy"], b["healthy_warned"], b["collapsing"], b["coll_before_last"], b["coll_by_best"]) == (
        20,
        1,
        4,
        4,
        3,
    )
    assert table.met(b)
    assert [s.endswith("met.") and "NOT" not in s for s in table.verdict(b)] == [True, True, True]
    b2 = table.budget(rows + [row("healthy", 4), row("collapsing", 9)])  # one warned only at its last epoch
    assert not table.met(b2)
    assert sum("NOT met" in s for s in table.verdict(b2)) == 3  # 2/21 healthy; 4/5 before last; 3/5 by best


# --------------------------------------------------------------------------------------------- end to end
@pytest.fixture(scope="module")
def slice_cache(tmp_path_factory):
    import torch

    # quiet, one-thread recording; both settings are process-wide, so they are put back for the tests after this
    # module (log-capturing tests elsewhere need the wwmonitor logger's level untouched)
    threads, logger = torch.get_num_threads(), logging.getLogger("wwmonitor")
    level = logger.level
    torch.set_num_threads(1)
    logger.setLevel(logging.ERROR)
    try:
        cache = tmp_path_factory.mktemp("alert_bench_cache")
        for fam, setting in SLICE:
            train_and_record(FAMILIES[fam], setting, 0, cache)
    finally:
        logger.setLevel(level)
        torch.set_num_threads(threads)
    return cache


@pytest.mark.slow
def test_record_writes_what_replay_needs(slice_cache):
    path = run_dir(slice_cache, "mlp_cls", "ref", 0)
    meta = json.loads((path / "meta.json").read_text())
    assert len(meta["val"]) == len(meta["steps"]) == FAMILIES["mlp_cls"].epochs
    assert [e[0] for e in meta["entries"]] == ["0", "2", "4"]
    with np.load(path / "snap_000.npz") as z:
        assert z["a1"].shape == (256, 256)
    assert (path / "init.npz").exists() and (path / "results.pkl").exists()


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["reanalyse", "results"])
def test_replay_gives_the_live_alerts(slice_cache, mode):
    for fam, setting in SLICE:
        rep = replay_run(run_dir(slice_cache, fam, setting, 0), mode=mode)
        live = [(a["step"], a["rule"], a["layer"], a["severity"]) for a in rep.meta["alerts"]]
        assert [(a.step, a.rule, a.layer, a.severity) for a in rep.alerts] == live, (fam, setting)
        assert not rep.rule_errors


@pytest.mark.slow
def test_refresh_rewrites_the_results_with_the_current_analysis(slice_cache):
    """After ``refresh`` the fast mode replays the current analysis: here the recorded and current analyses are
    the same code, so the rewritten results must give the same layers' metrics and the same alerts."""
    import pickle

    path = run_dir(slice_cache, "mlp_cls", "lr_huge", 0)
    with open(path / "results.pkl", "rb") as f:
        before = [[(lm.name, lm.alpha, lm.phase) for lm in r.layers] for r in pickle.load(f)]
    (rep,) = replay(slice_cache, ["mlp_cls"], seeds=[0], refresh=True, settings_filter=["lr_huge"])
    with open(path / "results.pkl", "rb") as f:
        after = pickle.load(f)
    # same code, same matrices: names and phases equal, alpha equal up to BLAS summation order (the live
    # analysis ran on the monitor's worker with its own BLAS thread count)
    got = [[(lm.name, lm.alpha, lm.phase) for lm in r.layers] for r in after]
    assert [[(n, p) for n, _, p in r] for r in got] == [[(n, p) for n, _, p in r] for r in before]
    for r_got, r_before in zip(got, before):
        for (_, a, _), (_, b, _) in zip(r_got, r_before):
            assert (a is None and b is None) or a == pytest.approx(b, rel=1e-9)
    assert all(not r.alerts for r in after) and not (path / "results.pkl.tmp").exists()
    fast = replay_run(path, mode="results")
    assert [(a.step, a.rule, a.layer) for a in fast.alerts] == [(a.step, a.rule, a.layer) for a in rep.alerts]
    with pytest.raises(ValueError, match="refresh needs"):
        replay(slice_cache, ["mlp_cls"], mode="results", refresh=True)


@pytest.mark.slow
def test_results_mode_refuses_results_of_other_analysis_code(slice_cache, tmp_path):
    import shutil

    path = tmp_path / "run"
    shutil.copytree(run_dir(slice_cache, "mlp_cls", "ref", 0), path)
    (path / "results.fingerprint").write_text("0" * 64 + "\n")
    with pytest.raises(ValueError, match="other analysis code"):
        replay_run(path, mode="results")
    (path / "results.fingerprint").unlink()
    with pytest.raises(ValueError, match="no fingerprint"):
        replay_run(path, mode="results")
    assert replay_run(path).meta["setting"] == "ref"  # reanalyse needs no fingerprint


@pytest.mark.slow
def test_replay_judges_rules_that_need_the_weights(slice_cache, tmp_path):
    """correlation_trap reads the raw matrices: a live run with it and its replays agree, traps and all."""
    import pickle

    from wwmonitor.alerts import DEFAULT_RULES, AlertRules

    def rules():
        return AlertRules(rules=[*DEFAULT_RULES, "correlation_trap"], log_alerts=False)

    assert rules().needs_weights
    meta = train_and_record(FAMILIES["mlp_cls"], "lr_huge", 0, tmp_path, rules=rules())
    path = run_dir(tmp_path, "mlp_cls", "lr_huge", 0)
    with open(path / "results.pkl", "rb") as f:
        live_traps = [[lm.num_traps for lm in r.layers] for r in pickle.load(f)]
    assert any(t is not None for snap in live_traps for t in snap)
    live = [(a["step"], a["rule"], a["layer"]) for a in meta["alerts"]]
    for mode in ("reanalyse", "results"):
        rep = replay_run(path, rules=rules(), mode=mode, keep_results=True)
        assert [[lm.num_traps for lm in r.layers] for r in rep.results] == live_traps, mode
        assert [(a.step, a.rule, a.layer) for a in rep.alerts] == live, mode


@pytest.fixture(scope="module")
def slice_rows(slice_cache):
    """The slice's table rows: replayed with the current default rules, labelled by the criterion."""
    return [table.make_row(replay_run(run_dir(slice_cache, f, s, 0)), slice_cache) for f, s in SLICE]


@pytest.mark.slow
def test_slice_labels_follow_the_criterion(slice_rows):
    rows = {(r.family, r.setting): r for r in slice_rows}
    assert rows[("mlp_cls", "ref")].label == "healthy"
    assert rows[("gru_seq", "ref")].label == "healthy"
    assert rows[("mlp_cls", "wd_strong")].label == "collapsing"
    assert rows[("gru_seq", "wd_strong")].label == "collapsing"


@pytest.mark.slow
def test_budget_on_the_slice(slice_rows):
    """Issue 16's budget on the slice: every healthy run silent, every collapsing run warned before its last epoch.

    It failed on the default rules before issue 16's rework (alpha_low on the healthy gru_seq reference, nothing
    on mlp_cls wd_strong, which collapses within its first snapshots)."""
    rows = slice_rows
    healthy = [r for r in rows if r.label == "healthy"]
    collapsing = [r for r in rows if r.label == "collapsing"]
    assert healthy and collapsing
    loud = [(r.family, r.setting, r.rules) for r in healthy if r.warned]
    assert not loud, f"healthy runs with warnings: {loud}"
    late = [(r.family, r.setting, r.first_epoch, r.last_epoch) for r in collapsing if not r.before_last]
    assert not late, f"collapsing runs not warned before their last epoch: {late}"
