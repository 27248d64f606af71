"""Alert rules on hand-built SnapshotResults from real analyze_matrix outputs."""
from __future__ import annotations

import logging
import time
import warnings

import numpy as np
import pytest

import wwmonitor
from wwmonitor.alerts import AlertRules, WeightWatcherAlert, correlation_traps, resolve_alerts
from wwmonitor.metrics import LayerMetrics
from wwmonitor.records import SnapshotResult


def _result(step: int, mats: dict[str, np.ndarray], epoch: int | None = None) -> SnapshotResult:
    layers = [wwmonitor.analyze_matrix(W, name, keep_esd=True) for name, W in mats.items()]
    esds = {lm.name: lm.extra.pop("esd") for lm in layers if "esd" in lm.extra}
    return SnapshotResult(step=step, epoch=epoch, time=time.time(), layers=layers, esds=esds)


def _fake(step: int, name: str = "fc", **fields) -> SnapshotResult:
    lm = LayerMetrics(name=name, N=200, M=100, **fields)
    return SnapshotResult(step=step, epoch=step, time=0.0, layers=[lm])


rng = np.random.default_rng(0)
GAUSS = rng.standard_normal((300, 120)).astype(np.float32)
LOW = (rng.standard_normal((300, 6)) @ rng.standard_normal((6, 120))).astype(np.float32)


def test_rank_collapse_fires_once_with_hysteresis():
    rules = AlertRules(warn=False, rules=["rank_collapse"])
    assert rules.evaluate(_result(0, {"fc": GAUSS})) == []
    a = rules.evaluate(_result(1, {"fc": LOW}))
    assert [x.rule for x in a] == ["rank_collapse"]
    assert a[0].layer == "fc" and a[0].value == pytest.approx(114 / 120)
    # still collapsed: no repeat (hysteresis); recovered, then collapsed again: fires again
    assert [x.rule for x in rules.evaluate(_result(2, {"fc": LOW}))] == []
    assert "rank_collapse" not in [x.rule for x in rules.evaluate(_result(3, {"fc": GAUSS}))]
    assert "rank_collapse" in [x.rule for x in rules.evaluate(_result(4, {"fc": LOW}))]


def test_collapsed_fraction_uses_near_zero_eigenvalues():
    rules = AlertRules()
    noisy = LOW + 1e-6 * rng.standard_normal(LOW.shape).astype(np.float32)  # full rank numerically
    r = _result(0, {"fc": noisy})
    assert r.layers[0].rank_loss == 0
    assert rules.collapsed_fraction(r.layers[0], r.esds["fc"]) > 0.9
    assert rules.collapsed_fraction(_result(0, {"g": GAUSS}).layers[0], _result(0, {"g": GAUSS}).esds["g"]) < 0.01


def test_alpha_low_needs_patience_and_hysteresis():
    rules = AlertRules(alpha_low_patience=3, hysteresis=0.2, rules=["alpha_low"], warn=False)
    fired = [rules.evaluate(_fake(s, alpha=a)) for s, a in enumerate([1.8, 1.9, 1.7, 1.95, 2.1, 1.9, 2.3, 1.8, 1.8, 1.8])]
    steps = [s for s, f in enumerate(fired) if f]
    # fires at the 3rd low snapshot; 2.1 is inside the hysteresis band (no reset); 2.3 clears;
    # then 3 more low snapshots fire again
    assert steps == [2, 9]


def test_alpha_high_only_after_warmup():
    rules = AlertRules(warmup=2, rules=["alpha_high"], warn=False)
    fired = [bool(rules.evaluate(_fake(s, alpha=8.0))) for s in range(5)]
    assert fired == [False, False, True, False, False]


def test_alpha_jump_and_cooldown():
    rules = AlertRules(warmup=0, alpha_jump=1.0, cooldown=1, rules=["alpha_jump"], warn=False)
    alphas = [3.0, 3.2, 4.5, 3.0, 3.1, 4.6]
    fired = [s for s, a in enumerate(alphas) if rules.evaluate(_fake(s, alpha=a))]
    assert fired == [2, 5]  # step 3 (4.5 -> 3.0) is inside the cooldown


def test_phase_change_is_info_and_not_warned():
    rules = AlertRules(rules=["phase_change"])
    rules.evaluate(_fake(0, phase="random-like"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # an info alert must not warn
        a = rules.evaluate(_fake(1, phase="bulk+spikes", phase_reason="2 spikes"))
    assert [(x.rule, x.severity) for x in a] == [("phase_change", "info")]
    assert "random-like -> bulk+spikes" in a[0].message
    assert rules.evaluate(_fake(2, phase="bulk+spikes")) == []


def test_phase_change_patience_suppresses_flapping():
    rules = AlertRules(rules=["phase_change"], phase_patience=2, warn=False)
    phases = ["random-like", "bulk+spikes", "random-like", "bulk+spikes", "bulk+spikes"]
    fired = [s for s, p in enumerate(phases) if rules.evaluate(_fake(s, phase=p))]
    assert fired == [4]


def test_non_finite_alert_warning_log_and_user_function(caplog):
    bad = GAUSS.copy()
    bad[0, 0] = np.nan
    seen = []
    rules = AlertRules(on_alert=seen.append, stop_on=["non_finite"])
    with caplog.at_level(logging.ERROR, logger="wwmonitor.alerts"), pytest.warns(WeightWatcherAlert, match="NaN"):
        a = rules.evaluate(_result(7, {"fc": bad}, epoch=1))
    assert [x.rule for x in a] == ["non_finite"] and a[0].severity == "error" and a[0].stop_training
    assert seen == a
    assert "non_finite" in caplog.text


def test_user_function_errors_never_propagate(caplog):
    def boom(alert):
        raise RuntimeError("user bug")

    rules = AlertRules(on_alert=boom, warn=False)
    with caplog.at_level(logging.ERROR, logger="wwmonitor.alerts"):
        rules.evaluate(_result(0, {"fc": LOW}))
    assert "user bug" in caplog.text


def test_healthy_snapshots_fire_nothing():
    rules = AlertRules(warn=False)
    # trained-looking layers (heavy-tailed, 2 < alpha < 6) drifting slowly: no alert at all
    ht1 = rng.standard_t(3, (300, 120)).astype(np.float32)
    ht2 = rng.standard_t(3, (400, 100)).astype(np.float32)
    for s in range(6):
        r = _result(s, {"a": ht1 + 0.01 * s * GAUSS, "b": ht2})
        assert all(2 < lm.alpha < 6 for lm in r.layers)
        assert rules.evaluate(r) == []


def test_state_dict_round_trip_keeps_hysteresis():
    rules = AlertRules(warn=False)
    assert [x.rule for x in rules.evaluate(_result(0, {"fc": LOW}))] == ["rank_collapse"]
    again = AlertRules(warn=False)
    again.load_state_dict(rules.state_dict())
    assert again.evaluate(_result(1, {"fc": LOW})) == []


def test_bad_configuration_is_named():
    with pytest.raises(ValueError, match="stop_on.*rank_colapse"):
        AlertRules(stop_on=["rank_colapse"])
    with pytest.raises(ValueError, match="rules"):
        AlertRules(rules=["nope"])
    with pytest.raises(ValueError, match="alpha_low"):
        AlertRules(alpha_low=7.0)
    with pytest.raises(TypeError, match="alerts must be"):
        resolve_alerts(3.5)
    with pytest.raises(ValueError, match="stop_on needs alerts"):
        resolve_alerts(None, stop_on=["rank_collapse"])
    assert resolve_alerts("default", stop_on=["rank_collapse"]).stop_on == ("rank_collapse",)
    assert resolve_alerts({"alpha_low": 1.5}).alpha_low == 1.5


def test_correlation_traps():
    r = np.random.default_rng(1)
    clean = [correlation_traps(r.standard_normal((300, 100)), seed=i)["num_traps"] for i in range(10)]
    assert clean == [0] * 10
    W = r.standard_normal((300, 100))
    W[5, 7], W[100, 3] = 60.0, -50.0
    assert correlation_traps(W)["num_traps"] >= 2
    lm = wwmonitor.analyze_matrix(W, "trap")
    rules = AlertRules(rules=["correlation_trap"], warn=False)
    rules.inspect_weights("trap", W, lm)
    a = rules.evaluate(SnapshotResult(step=0, epoch=0, time=0.0, layers=[lm]))
    assert [x.rule for x in a] == ["correlation_trap"]


def test_correlation_trap_through_a_monitor(tmp_path):
    """The rule's analyze_fn computes trap counts in the monitor's worker, from its host copy."""
    r = np.random.default_rng(2)
    W = r.standard_normal((300, 100)).astype(np.float32)
    W[5, 7] = 80.0
    clean = r.standard_normal((300, 100)).astype(np.float32)
    rules = AlertRules(rules=["correlation_trap"], warn=False)
    assert AlertRules().analyze_fn() is None  # off by default: no extra work
    with wwmonitor.Monitor(None, tmp_path, store=False, every_n_epochs=None, alerts=rules,
                           analyze_fn=rules.analyze_fn()) as mon:
        mon.snapshot(step=1, matrices={"trap": W, "clean": clean})
        mon.flush()
        fired = mon.alerts_fired
    assert [(a.rule, a.layer) for a in fired] == [("correlation_trap", "trap")]
