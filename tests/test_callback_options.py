"""Option handling shared by the Keras and Lightning callbacks (wwmonitor.callbacks._options); fast, no framework."""

from __future__ import annotations

import types

import pytest

from wwmonitor.alerts import AlertRules
from wwmonitor.callbacks._options import check_interval, pump_sinks, stop_reason, store_monitor_options
from wwmonitor.records import Alert


@pytest.mark.parametrize("v", [0, -1, 1.0, True, "2"])
def test_check_interval_rejects_and_names_the_argument(v) -> None:
    with pytest.raises(ValueError, match=r"^every_n_steps must be a positive integer or None, got"):
        check_interval("every_n_steps", v, allow_none=True)
    with pytest.raises(ValueError, match=r"^every_n_epochs must be a positive integer, got"):
        check_interval("every_n_epochs", v, allow_none=False)


def test_check_interval_none_only_where_allowed() -> None:
    check_interval("every_n_epochs", None, allow_none=True)
    check_interval("every_n_epochs", 3, allow_none=False)
    with pytest.raises(ValueError, match="every_n_epochs must be a positive integer, got None"):
        check_interval("every_n_epochs", None, allow_none=False)


def _store(**over):
    kw = dict(
        run_dir="runs",
        run_name=None,
        layers=None,
        exclude=None,
        alerts="default",
        stop_on=(),
        metrics="default",
        esd_every_n_epochs=5,
        queue_size=3,
        policy="block",
        options=None,
        config=None,
        flush_timeout=300.0,
    )
    kw.update(over)
    cb = types.SimpleNamespace()
    store_monitor_options(cb, **kw)
    return cb


def test_store_monitor_options_sets_attributes_and_validates() -> None:
    cfg = {"lr": 0.1}
    cb = _store(config=cfg, esd_every_n_epochs=3, stop_on=("alpha_low",))
    assert cb.resume is False
    with pytest.raises(ValueError, match="esd_every_n_epochs must be an integer >= 0, got '3'"):
        _store(esd_every_n_epochs="3")
    assert cb.run_dir == "runs" and cb.esd_every_n_epochs == 3 and cb.config == cfg and cb.config is not cfg
    assert isinstance(cb.alert_rules, AlertRules) and cb.alert_rules.stop_on == ("alpha_low",)
    assert _store(alerts=None).alert_rules is None
    with pytest.raises(ValueError, match="unknown metric"):
        _store(metrics=["not_a_metric"])


def test_stop_reason_and_pump() -> None:
    warn = Alert(step=1, epoch=0, rule="alpha_low", severity="warning", message="low", layer="fc1")
    stop = Alert(
        step=2, epoch=1, rule="rank_collapse", severity="error", message="collapsed", layer="fc2", stop_training=True
    )
    assert stop_reason([warn]) == ""
    assert stop_reason([warn, stop]) == " (rank_collapse: collapsed)"

    class Sink:
        def __init__(self, fail: bool) -> None:
            self.fail, self.pumped = fail, 0

        def pump(self) -> None:
            self.pumped += 1
            if self.fail:
                raise RuntimeError("wandb down")

    sinks = [Sink(True), Sink(False)]
    pump_sinks(sinks)  # the failing one is logged, the next one still pumped
    assert [s.pumped for s in sinks] == [1, 1]
