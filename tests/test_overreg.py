"""The ``over_regularization`` alert rule: unit tests on synthetic sequences and an end-to-end run (slow).

The rule compares each layer's stable rank and MP soft rank with the largest values of its first
``overreg_ref_snapshots`` snapshots before the current one, and its mass outside the top direction with its first
snapshot's (docs/alerts.md, "over_regularization").
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest

import wwmonitor
from wwmonitor.alerts import DEFAULT_RULES, RULES, AlertRules
from wwmonitor.metrics import LayerMetrics
from wwmonitor.records import SnapshotResult

ROOT = Path(__file__).resolve().parents[1]


def _snap(
    step: int,
    sr: float,
    soft: float | None = None,
    norm: float = 1.0,
    name: str = "fc",
    status: str = "ok",
    n: int = 512,
) -> SnapshotResult:
    """One layer of ``n`` eigenvalues with stable rank ``sr``, MP soft rank ``soft`` and ``||W||_F² = norm``.

    The norms are stored as the analysis does: ``log_norm = log10(Σλ)``, ``log_spectral_norm = log10(λ_max)``
    with ``λ_max = Σλ / sr``; so the mass outside the top direction is ``norm·(1 - 1/sr)``.
    """
    lm = LayerMetrics(
        name=name,
        N=512,
        M=n,
        Q=512 / n,
        num_evals=n,
        stable_rank=sr,
        mp_softrank=soft,
        log_norm=math.log10(norm),
        log_spectral_norm=math.log10(norm / sr),
        status=status,
    )
    return SnapshotResult(step=step, epoch=step, time=0.0, layers=[lm])


def _rules(**kw) -> AlertRules:
    return AlertRules(rules=["over_regularization"], **kw)


def _fired(rules: AlertRules, seq: list[tuple], start: int = 0) -> list[int]:
    """Steps at which the rule fired over ``seq`` of (sr, soft, norm)."""
    out = []
    for i, (sr, soft, norm) in enumerate(seq, start):
        if rules.evaluate(_snap(i, sr, soft, norm)):
            out.append(i)
    return out


REF = [(100.0, 0.9, 1.0), (110.0, 1.0, 1.0), (105.0, 0.95, 1.0)]  # reference: sr 110, soft 1.0, bulk 0.99


# ------------------------------------------------------------------------------------------------ the rule
def test_is_a_known_default_rule():
    assert "over_regularization" in RULES and "over_regularization" in DEFAULT_RULES
    assert AlertRules().needs_weights is False


def test_fires_after_patience_against_the_early_reference():
    rules = _rules()  # defaults: sr < 0.22, soft < 0.25 of the early max, bulk < 0.8 of the first; patience 2
    squeeze = [(40.0, 0.4, 0.6), (23.0, 0.2, 0.5), (22.0, 0.2, 0.5), (20.0, 0.1, 0.4), (15.0, 0.05, 0.3)]
    # 23/110 = 0.209 < 0.22: first low snapshot at step 4, the second one (patience 2) at step 5
    assert _fired(rules, REF + squeeze) == [5]
    a = rules.fired[0]
    assert (a.rule, a.severity, a.layer, a.epoch) == ("over_regularization", "warning", "fc", 5)
    assert a.value == pytest.approx(22.0 / 110)
    assert a.message == (
        "layer 'fc' at step 5 (epoch 5): bulk squeezed toward zero (over-regularisation) for "
        "2 snapshots: stable rank 22 = 20% of its early 110, MP soft rank 0.2 = 20% of its early 1, "
        "mass outside the top direction at 48% of its first value"
    )


def test_a_collapse_inside_the_first_snapshots_is_caught():
    # issue 16: the old rule built its reference over 3 snapshots before it looked, so it needed 5 snapshots;
    # now every snapshot from the second on is compared with the ones before it
    collapse = [(100.0, 1.0, 1.0), (10.0, 0.05, 0.2), (10.0, 0.05, 0.2), (10.0, 0.05, 0.2)]
    assert _fired(_rules(), collapse) == [2]  # low at snapshots 1 and 2: patience 2
    assert _fired(_rules(overreg_patience=1), collapse) == [1]


def test_an_early_growth_transient_does_not_fire():
    # issue 16: ||W||² grows 5x over the first snapshots and settles at 77% of its peak while learning concentrates
    # the spectrum; against the peak the norm "fell", against the layer's first snapshot its bulk grew
    seq = [(100.0, 1.0, 1.0), (40.0, 0.5, 3.0), (20.0, 0.2, 5.0), (20.0, 0.2, 5.0)] + [(18.0, 0.15, 3.85)] * 6
    assert _fired(_rules(), seq) == []


def test_a_collapse_to_one_direction_that_keeps_its_norm_fires():
    # issue 16: stable rank -> 1 at constant ||W||: the norm clause of the old rule vetoed it
    seq = [(100.0, 1.0, 1.0), (60.0, 0.6, 1.0), (30.0, 0.3, 1.0), (5.0, 0.05, 1.0), (1.1, 0.01, 1.0), (1.1, 0.01, 1.0)]
    # at stable rank 5 the bulk still holds 81% of its first mass; at 1.1 it holds 9%: low at 4 and 5
    assert _fired(_rules(), seq) == [5]


def test_a_layer_decaying_toward_zero_fires_although_its_ranks_do_not_move():
    # weight decay far above the gradient shrinks the whole (random) matrix: stable and soft rank stay put
    seq = [(60.0, 0.9, 1.0), (62.0, 0.95, 0.08), (63.0, 0.98, 6e-3), (64.0, 1.0, 5e-4), (64.0, 1.0, 4e-5)]
    rules = _rules()
    assert _fired(rules, seq) == [4]  # below 1e-3 of the first ||W||² at snapshots 3 and 4: patience 2
    assert "||W||_F^2 at 4e-05 of its first value (the layer decays toward zero)" in rules.fired[0].message
    assert _fired(_rules(), [(60.0, 0.9, 1.0)] + [(60.0, 0.9, 0.002)] * 4) == []  # 2e-3: not yet


def test_layers_below_the_minimum_size_are_skipped():
    collapse = [(20.0, 1.0, 1.0)] + [(1.5, 0.05, 0.2)] * 4
    rules = AlertRules(rules=["over_regularization"])
    for i, (sr, soft, norm) in enumerate(collapse):
        assert rules.evaluate(_snap(i, sr, soft, norm, n=32)) == []  # 32 < overreg_min_evals = 50
    lowered = AlertRules(rules=["over_regularization"], overreg_min_evals=32)
    assert [i for i, (sr, so, no) in enumerate(collapse) if lowered.evaluate(_snap(i, sr, so, no, n=32))] == [2]


def test_hysteresis_one_alert_until_the_stable_rank_recovers():
    rules = _rules(overreg_patience=1, overreg_hysteresis=0.25)  # clears at sr >= 0.22 * 1.25 = 0.275 of 110
    low, band, back = (11.0, 0.1, 0.3), (29.0, 0.1, 0.3), (31.0, 0.1, 0.3)  # 0.10, 0.264 (in band), 0.282
    seq = REF + [low, low, band, low, back, low, low]
    assert _fired(rules, seq) == [3, 8]


def test_patience_counts_consecutive_low_snapshots_and_resets_on_recovery():
    rules = _rules(overreg_patience=3)
    low, back = (11.0, 0.1, 0.3), (50.0, 0.5, 0.9)
    assert _fired(rules, REF + [low, low, back, low, low, low]) == [8]


@pytest.mark.parametrize(
    "what, snap",
    [
        ("stable rank not low enough", (30.0, 0.05, 0.3)),  # 0.27 of its early value
        ("bulk edge not squeezed", (11.0, 0.5, 0.3)),  # soft rank at half its early value
        ("bulk not shrinking", (11.0, 0.05, 1.3)),  # spikes grew over the bulk: learning, not regularisation
    ],
)
def test_every_signal_is_needed(what, snap):
    assert _fired(_rules(overreg_patience=1), REF + [snap] * 4) == [], what


def test_without_an_mp_fit_the_other_signals_decide():
    rules = _rules(overreg_patience=1)
    assert _fired(rules, [(100.0, None, 1.0)] * 3 + [(11.0, None, 0.3)]) == [3]
    assert "MP soft rank" not in rules.fired[0].message


def test_layers_without_a_usable_spectrum_are_skipped_and_do_not_count_as_reference():
    rules = _rules(overreg_patience=1)
    for i in range(3):
        assert rules.evaluate(_snap(i, 2.0, 0.1, 0.01, status="too_few_evals")) == []  # e.g. a 10-class head
    assert rules.state_dict()["fc"]["seen"] == 3 and "overreg_ref_count" not in rules.state_dict()["fc"]
    assert _fired(rules, REF + [(11.0, 0.1, 0.3)], start=3) == [6]
    lm = LayerMetrics(name="fc", N=512, M=512, status="error")  # analysis failed: all metrics None
    assert rules.evaluate(SnapshotResult(step=7, epoch=7, time=0.0, layers=[lm])) == []


def test_layers_are_independent():
    rules = _rules(overreg_patience=1)
    for i, (sr, soft, norm) in enumerate(REF):
        rules.evaluate(
            SnapshotResult(
                step=i,
                epoch=i,
                time=0.0,
                layers=[_snap(i, sr, soft, norm, name="a").layers[0], _snap(i, sr, soft, norm, name="b").layers[0]],
            )
        )
    fired = rules.evaluate(
        SnapshotResult(
            step=3,
            epoch=3,
            time=0.0,
            layers=[_snap(3, 11.0, 0.1, 0.3, name="a").layers[0], _snap(3, 100.0, 0.9, 1.0, name="b").layers[0]],
        )
    )
    assert [a.layer for a in fired] == ["a"]


def test_state_dict_round_trip_keeps_reference_counter_and_hysteresis():
    low = (11.0, 0.1, 0.3)
    whole = _rules()
    assert _fired(whole, REF + [low, low, low]) == [4]

    first = _rules()
    assert _fired(first, REF + [low]) == []  # reference built, one low snapshot counted
    state = json.loads(json.dumps(first.state_dict()))  # JSON-able, as in a checkpoint
    assert state["fc"]["overreg_sr_ref"] == 110.0 and state["fc"]["overreg_count"] == 1
    assert state["fc"]["overreg_ref_count"] == 3 and state["fc"]["overreg_softrank_ref"] == 1.0
    assert state["fc"]["overreg_log_bulk_ref"] == pytest.approx(math.log10(0.99))  # the first snapshot's
    resumed = _rules()
    resumed.load_state_dict(state)
    assert resumed.state_dict() == state
    assert _fired(resumed, [low, low], start=4) == [4]  # as in the uninterrupted run
    fresh = _rules()  # without the state, the first snapshots after a resume would become the reference
    assert _fired(fresh, [low, low], start=4) == []

    again = _rules()
    again.load_state_dict(json.loads(json.dumps(resumed.state_dict())))
    assert _fired(again, [low, low], start=6) == []  # still active: no repeat after the resume


def test_a_layer_the_rule_never_saw_keeps_the_old_state_format():
    rules = AlertRules(rules=["alpha_low"])
    rules.evaluate(_snap(0, 11.0, 0.1, 0.3))
    assert set(rules.state_dict()["fc"]) == {
        "seen",
        "active",
        "low_count",
        "prev_alpha",
        "phase",
        "cand_phase",
        "cand_count",
        "cooldown",
    }


# ----------------------------------------------------------------------------------------------- settings
NAN, INF = float("nan"), float("inf")
_BAD = [
    ({"overreg_sr_ratio": NAN}, ValueError, "overreg_sr_ratio"),
    ({"overreg_sr_ratio": 0.0}, ValueError, "overreg_sr_ratio"),
    ({"overreg_sr_ratio": 1.0}, ValueError, "overreg_sr_ratio"),
    ({"overreg_softrank_ratio": NAN}, ValueError, "overreg_softrank_ratio"),
    ({"overreg_softrank_ratio": 0.0}, ValueError, "overreg_softrank_ratio"),
    ({"overreg_softrank_ratio": 1.5}, ValueError, "overreg_softrank_ratio"),
    ({"overreg_bulk_ratio": NAN}, ValueError, "overreg_bulk_ratio"),
    ({"overreg_bulk_ratio": INF}, ValueError, "overreg_bulk_ratio"),
    ({"overreg_bulk_ratio": -0.5}, ValueError, "overreg_bulk_ratio"),
    ({"overreg_norm_ratio": 0.8}, TypeError, "overreg_norm_ratio"),  # replaced by overreg_bulk_ratio
    ({"overreg_min_evals": 0}, ValueError, "overreg_min_evals"),
    ({"alpha_min_evals": -1}, ValueError, "alpha_min_evals"),
    ({"alpha_min_tail": 2.5}, ValueError, "alpha_min_tail"),
    ({"collapse_min_evals": 0}, ValueError, "collapse_min_evals"),
    ({"collapse_sr": -1.0}, ValueError, "collapse_sr"),
    ({"collapse_softrank": NAN}, ValueError, "collapse_softrank"),
    ({"collapse_early": -1}, ValueError, "collapse_early"),
    ({"overreg_vanish_ratio": -1e-3}, ValueError, "overreg_vanish_ratio"),
    ({"overreg_hysteresis": NAN}, ValueError, "overreg_hysteresis"),
    ({"overreg_hysteresis": -0.1}, ValueError, "overreg_hysteresis"),
    ({"overreg_hysteresis": 4.0}, ValueError, "overreg_hysteresis"),  # 0.22 * 5 > 1: could only clear above the ref
    ({"overreg_patience": NAN}, ValueError, "overreg_patience"),
    ({"overreg_patience": 0}, ValueError, "overreg_patience"),
    ({"overreg_patience": 1.5}, ValueError, "overreg_patience"),
    ({"overreg_ref_snapshots": NAN}, ValueError, "overreg_ref_snapshots"),
    ({"overreg_ref_snapshots": 0}, ValueError, "overreg_ref_snapshots"),
    ({"overreg_sr_ratio": "0.2"}, TypeError, "overreg_sr_ratio"),
    ({"overreg_patience": True}, TypeError, "overreg_patience"),
]


@pytest.mark.parametrize(
    "kwargs, exc, name", _BAD, ids=[",".join(f"{k}={v!r}" for k, v in kw.items()) for kw, _, _ in _BAD]
)
def test_meaningless_settings_raise_naming_the_argument(kwargs, exc, name):
    with pytest.raises(exc, match=name):
        AlertRules(**kwargs)


def test_settings_are_checked_when_assigned_and_used():
    rules = _rules(overreg_patience=1)
    with pytest.raises(ValueError, match="overreg_sr_ratio"):
        rules.overreg_sr_ratio = NAN
    rules.overreg_sr_ratio = 0.05
    assert _fired(rules, REF + [(11.0, 0.1, 0.3), (5.0, 0.1, 0.3)]) == [4]  # 0.10 is no longer low; 0.045 is


# ------------------------------------------------------------------------------------ real spectra, analysed
def _analysed(step: int, W: np.ndarray) -> SnapshotResult:
    lm = wwmonitor.analyze_matrix(W, "fc", keep_esd=True)
    esds = {"fc": lm.esd}
    return SnapshotResult(step=step, epoch=step, time=0.0, layers=[lm], esds=esds)


def test_real_spectra_squeezed_bulk_fires_and_growing_spikes_do_not():
    r = np.random.default_rng(0)
    N, M = 400, 200
    noise = r.standard_normal((N, M)) / math.sqrt(N)  # MP bulk, singular values in [0.29, 1.71]
    U, _ = np.linalg.qr(r.standard_normal((N, 5)))
    V, _ = np.linalg.qr(r.standard_normal((M, 5)))
    signal = U @ np.diag([3.0, 2.5, 2.0, 1.5, 1.2]) @ V.T  # a few learned directions above the bulk
    # weight decay without gradient: the bulk shrinks by 0.6 per snapshot, the learned directions stay
    squeezed = [_analysed(t, signal + 0.6**t * noise) for t in range(10)]
    # healthy learning: the same directions grow, the bulk stays -- the stable rank falls as much
    learning = [_analysed(t, (1 + 2 * t) * signal + noise) for t in range(10)]
    sr_learning = [res.layers[0].stable_rank for res in learning]
    assert sr_learning[-1] < 0.22 * max(sr_learning[:3])  # the stable rank alone would fire here
    rules_a, rules_b = AlertRules(), AlertRules()
    fired_a = [a for res in squeezed for a in rules_a.evaluate(res)]
    fired_b = [a for res in learning for a in rules_b.evaluate(res)]
    over = [a for a in fired_a if a.rule == "over_regularization"]
    assert [a.step for a in over] == [4]  # low from snapshot 3 (after the 3 reference snapshots), patience 2
    assert [a for a in fired_a if a.rule == "rank_collapse"] == []  # no singular value is near 1e-4 sigma_max yet
    assert [a for a in fired_b if a.rule == "over_regularization"] == []


# ------------------------------------------------------------------------------------------- end to end
def _panel():
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    import benchmarks.overreg_panel as panel

    return panel


def test_panel_classifies_against_the_wd0_twin():
    panel = _panel()
    acc = [0.9] * 20
    healthy = panel.RunRecord("mlp", 0.0, 0, 20, acc, [], {"0": [30.0], "2": [50.0], "4": [5.0]}, ["0", "2", "4"])
    mild = panel.RunRecord("mlp", 0.01, 0, 20, [0.89] * 20, [], {"0": [25.0], "2": [30.0], "4": [5.0]}, ["0", "2", "4"])
    collapsed = panel.RunRecord("mlp", 0.05, 0, 20, acc, [], {"0": [25.0], "2": [20.0], "4": [1.0]}, ["0", "2", "4"])
    worse = panel.RunRecord("mlp", 0.1, 0, 20, [0.85] * 20, [], {"0": [25.0], "2": [30.0], "4": [5.0]}, ["0", "2", "4"])
    panel.classify([healthy, mild, collapsed, worse])
    assert [r.verdict for r in (healthy, mild, collapsed, worse)] == ["healthy", "healthy", "collapsing", "collapsing"]
    assert collapsed.why == "sr(2) 20.0 < 0.5 x 50.0" and worse.why == "val acc -5.0 pt"  # the head is not hidden
    assert panel.check(healthy) == (True, "silent") and panel.check(collapsed) == (False, "missed")


@pytest.mark.slow
def test_weight_decay_collapse_warns_early_and_the_healthy_twin_stays_quiet():
    """Issue 9's run: MLP 64-512-512-10 on digits, SGD lr 0.05, batch 32, weight decay 0.05 vs 0, 20 epochs.

    About 2 x 2-4 s on 2 cores.  The measured run warns at epoch 7 on the 512x512 layer ("2"), 12 epochs before
    the end; its stable rank is then about 20% of its early value, while rank_collapse never fires.
    """
    panel = _panel()
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in the panel; faster on a loaded 2-core machine
    try:
        data = panel.load_data()
        sick = panel.train_run("mlp", 0.05, data=data)
        well = panel.train_run("mlp", 0.0, data=data)
    finally:
        torch.set_num_threads(threads)
    severe = ("warning", "error")

    over = [a for a in sick.alerts if a.rule == "over_regularization"]
    assert over, [(a.epoch, a.rule, a.layer) for a in sick.alerts]
    assert over[0].epoch < sick.epochs - 1 and over[0].epoch <= 10
    assert over[0].layer == "2" and over[0].severity == "warning"
    assert not [a for a in sick.alerts if a.rule == "rank_collapse"]  # the old rule stays silent on this run
    assert sick.stable_rank["2"][-1] < 0.5 * well.stable_rank["2"][-1]  # it is collapsing ...
    assert np.mean(sick.val_acc[-5:]) < np.mean(well.val_acc[-5:]) - 0.01  # ... and it costs accuracy

    loud = [(a.epoch, a.rule, a.layer) for a in well.alerts if a.severity in severe]
    assert loud == []  # the healthy twin gets no warning from any rule (issue 16's budget)
