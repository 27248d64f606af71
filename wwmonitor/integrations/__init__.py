"""Hyper-parameter sweeps: wwmonitor inside Ray Tune trials and Optuna studies.

* :mod:`wwmonitor.integrations.ray_tune` -- spectral summaries in each trial's
  ``tune.report`` (``ww/mean_alpha``, ``ww/phase_count/heavy-tailed`` ...) for
  schedulers (ASHA, PBT) and stoppers, :class:`~.ray_tune.WWAlertStopper`,
  run stores in the trial folders, and the experiment folder for
  ``wwmonitor compare``.
* :mod:`wwmonitor.integrations.optuna` -- a spectral metric as the trials'
  intermediate values for Optuna's pruners, run stores found through the
  study's storage.
* :func:`record_eval_metrics` -- a run's validation metrics in its store, which
  ``wwmonitor compare`` ranks the runs' spectra against.
* :func:`discover_runs` -- the run stores (and hyper-parameters) of a Ray Tune
  experiment, a ``ResultGrid`` or an Optuna study folder.

This package imports neither Ray nor Optuna until one of their modules is
used; ``import wwmonitor.integrations`` needs only the core.
"""

from __future__ import annotations

from ._common import PREFIX, flat_metrics, lower_is_better, record_eval_metrics, ww_metrics
from .discovery import discover_runs

__all__ = ["PREFIX", "discover_runs", "flat_metrics", "lower_is_better", "record_eval_metrics", "ww_metrics"]
