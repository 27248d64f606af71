"""Options every entry point shares (MonitorOptions), the one schedule rule, the session core; no framework."""

from __future__ import annotations

import typing
import warnings

import numpy as np
import pytest

from wwmonitor.callbacks._options import check_interval, pump_sinks, stop_reason
from wwmonitor.callbacks._session import CallbackSession
from wwmonitor.monitor.options import DEPRECATED_NAMES, MonitorKwargs, MonitorOptions
from wwmonitor.monitor.schedule import Schedule
from wwmonitor.monitor.status import RunStatus
from wwmonitor.records import Alert, SnapshotResult


@pytest.mark.parametrize("v", [0, -1, 1.5, "3", True])
def test_check_interval_rejects_and_names_the_argument(v) -> None:
    with pytest.raises(ValueError, match="every_n_epochs"):
        check_interval("every_n_epochs", v)


def test_check_interval_none_only_where_allowed() -> None:
    assert check_interval("every_n_steps", None) is None
    assert check_interval("every_n_steps", 5) == 5
    with pytest.raises(ValueError, match="queue_size"):
        check_interval("queue_size", None, allow_none=False)


def test_typed_kwargs_list_every_option_and_old_name() -> None:
    keys = set(typing.get_type_hints(MonitorKwargs))
    assert keys == set(MonitorOptions.names()) | set(DEPRECATED_NAMES)


@pytest.mark.parametrize(
    "kw, arg",
    [
        ({"every_n_steps": 0}, "every_n_steps"),
        ({"queue_size": 0}, "queue_size"),
        ({"history": -1}, "history"),
        ({"blas_threads": 0}, "blas_threads"),
        ({"analysis_nice": -1}, "analysis_nice"),
        ({"analysis_nice": 20}, "analysis_nice"),
        ({"analysis_nice": 2.5}, "analysis_nice"),
        ({"policy": "drop"}, "policy"),
        ({"flush_timeout": 0}, "flush_timeout"),
        ({"sink_timeout": -1.0}, "sink_timeout"),
        ({"esd_every_n_epochs": -1}, "esd_every_n_epochs"),
        ({"lora": "merged"}, "lora"),
        ({"analysis_device": "tpu"}, "analysis_device"),
        ({"metrics": ["not_a_metric"]}, "metric"),
        ({"stop_on": ["bogus"]}, "stop_on"),
        ({"loggers": {"neptune": "x"}}, "loggers"),
    ],
)
def test_options_validate_and_name_the_argument(kw, arg) -> None:
    with pytest.raises(ValueError, match=arg):
        MonitorOptions(**kw)


def test_unknown_option_is_a_type_error_with_the_closest_name() -> None:
    with pytest.raises(TypeError, match="every_n_step'.*did you mean every_n_steps"):
        MonitorOptions.from_kwargs("Thing", every_n_step=3)
    with pytest.raises(TypeError, match="sinks\\[0\\]"):
        MonitorOptions(sinks=[object()])


def test_old_names_warn_and_map() -> None:
    with pytest.warns(DeprecationWarning, match="run_dir= is deprecated; use root="):
        o = MonitorOptions.from_kwargs("Thing", run_dir="runs", close_timeout=5.0)
    assert o.root == "runs" and o.flush_timeout == 5.0
    with pytest.raises(TypeError, match="root= only"):
        MonitorOptions.from_kwargs("Thing", run_dir="a", root="b")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        MonitorOptions.from_kwargs("Thing", root="runs", flush_timeout=5.0)  # the new names do not warn


def test_one_schedule_rule() -> None:
    s = Schedule(every_n_epochs=2, every_n_steps=4)
    assert [st for st in range(0, 13) if s.step_due(st)] == [4, 8, 12]  # step 0 never
    assert [e for e in range(6) if s.epoch_due(e)] == [1, 3, 5]
    assert s.due(step=0, epoch=1, epoch_end=True)  # an epoch end is due whatever its step
    assert not s.due(step=3, epoch=1, epoch_end=False)  # mid-epoch calls never fire on the epoch interval
    assert Schedule(None, None).due(step=0) and Schedule(None, None).never


def test_run_status_is_the_dispatchers_channel() -> None:
    st = RunStatus(history=2, stored=[3])
    assert st.is_stored(3) and not st.stop_requested
    stop = Alert(step=5, epoch=0, rule="non_finite", severity="error", message="nan", stop_training=True)
    for step in (4, 5, 6):
        st.record(SnapshotResult(step=step, epoch=0, time=0.0, layers=[], alerts=[stop] if step == 5 else []))
    assert [r.step for r in st.results()] == [5, 6] and st.stored_steps() == {3, 4, 5, 6}
    assert st.stop_requested and st.stop_alert is stop and st.alerts() == [stop]


def test_session_schedule_dedup_state_and_stop(tmp_path) -> None:
    mats = {"w": np.random.default_rng(0).standard_normal((60, 30))}

    class Model(dict):
        pass

    s = CallbackSession("Test", 1, 3, {"root": tmp_path, "run_name": "s", "alerts": None, "announce": False})
    with pytest.raises(ValueError, match="never snapshot"):
        CallbackSession("Test", None, None, {})
    s.open(Model(mats))
    assert [st for st in range(1, 8) if s.on_step(st, 0)] == [3, 6]
    assert s.on_epoch_end(0, 6) is True  # due, but step 6 was just taken: not snapshotted twice
    s.finish()
    assert [r.step for r in s.monitor.results] == [3, 6]
    state = s.state_dict()
    assert state["last_step"] == 6 and state["monitor"]["run_id"] == "s"
    s.close()
    s2 = CallbackSession("Test", 1, None, {"root": tmp_path, "alerts": None, "announce": False})
    s2.load_state_dict(state)
    s2.open(Model(mats))  # continues run "s" after step 6
    assert s2.monitor.run_id == "s" and s2.last_step == 6
    s2.on_epoch_end(1, 6)
    s2.on_epoch_end(2, 9)
    s2.finish()
    s2.close()
    assert sorted(s2.monitor._status.stored_steps()) == [3, 6, 9]
    assert not s2.stop_requested() and s2.note_stop("here") and not s2.note_stop("again")


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


def test_keras_old_spelling_maps_to_loggers_with_a_warning() -> None:
    from wwmonitor.callbacks._options import legacy_keras_loggers

    opts: dict = {"wandb": False, "csv": "out/csv"}
    with pytest.warns(DeprecationWarning, match="loggers="):
        n = legacy_keras_loggers("logs", opts)  # the old first positional argument: a log dir
    assert n == 1 and opts == {"loggers": {"tensorboard": "logs", "csv": "out/csv"}}
    opts = {"wandb": False}
    with pytest.warns(DeprecationWarning):
        assert legacy_keras_loggers(2, opts) == 2
    assert opts == {"loggers": False}
    with pytest.raises(TypeError, match="not both"):
        legacy_keras_loggers(1, {"log_dir": "a", "loggers": {"csv": "b"}})
    new: dict = {"loggers": {"tensorboard": "logs"}}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert legacy_keras_loggers(3, new) == 3 and new == {"loggers": {"tensorboard": "logs"}}
