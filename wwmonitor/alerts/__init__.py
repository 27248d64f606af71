"""Early-warning alerts evaluated on every snapshot.

:class:`AlertRules` reads each :class:`~wwmonitor.records.SnapshotResult`
(in step order, *before* the sinks see it) and returns the
:class:`~wwmonitor.records.Alert` objects that fired.  The sinks then carry
them on: the run store keeps them, TensorBoard gets a text entry, W&B a
``run.alert``.  In :meth:`AlertRules.evaluate` each fired alert is also shown
exactly once -- a log record on the ``wwmonitor.alerts`` logger by default, or
with ``warn=True`` a :class:`WeightWatcherAlert` Python warning instead
(severity ``warning``/``error``) -- and passed to the user's ``on_alert``.

Data flows one way: framework -> snapshot -> analysis -> dispatcher -> sinks.
This package imports neither the monitor nor the sinks, callbacks or reports.
Rules say what they need: when :attr:`AlertRules.needs_weights` is true the
analyser calls :meth:`AlertRules.inspect_weights` on every analysed matrix.

Rules (ids in parentheses; all per layer; one object each in :mod:`.rules`)
---------------------------------------------------------------------------
``rank_collapse``
    Onset of rank collapse.  The *collapsed fraction* is
    ``f0 = max(#{σ_i < collapse_tol · σ_max} / n, rank_loss / n)`` where
    ``σ_i² = N·λ_i`` are the squared singular values (eigenvalues of ``WᵀW``),
    read from the snapshot's λ-axis ESD (the ratio is axis-free), and ``n`` the
    number of eigenvalues they were counted over (``M``; ``K·M`` for a pooled
    conv layer of ``K`` kernel positions).  Fires when
    ``f0 >= collapse_fraction`` (or all weights are zero), or when at one of
    the layer's first ``collapse_early`` snapshots its stable rank is at most
    ``collapse_sr`` and its MP soft rank at most ``collapse_softrank`` (a
    collapse inside the first epoch); clears when ``f0 < collapse_fraction / 2``
    and the layer is not that concentrated.  Not keyed on the phase label.
    Needs ``n >= collapse_min_evals``.
``over_regularization``
    The bulk is squeezed toward zero long before singular values are
    numerically zero: from the layer's second snapshot on, its stable rank
    ``Σλ/λ_max`` is below ``overreg_sr_ratio`` (0.22) and its MP soft rank
    ``λ+/λ_max`` below ``overreg_softrank_ratio`` (0.25) of their early values
    (the largest over its first ``overreg_ref_snapshots`` snapshots before this
    one), and its mass outside the top direction ``Σλ - λ_max`` below
    ``overreg_bulk_ratio`` (0.8) of its first snapshot's; or the layer vanishes
    (``||W||_F²`` below ``overreg_vanish_ratio`` (1e-3) of its first value); for
    ``overreg_patience`` (2) consecutive snapshots.  Clears once the stable
    rank is back above ``overreg_sr_ratio · (1 + overreg_hysteresis)`` of its
    early value.  Needs ``n >= overreg_min_evals``.
``alpha_low``
    ``alpha + 2·sigma < alpha_low`` (default 2, weightwatcher's
    "over-trained"; ``sigma`` the fit's standard error) for
    ``alpha_low_patience`` consecutive snapshots; clears once
    ``alpha >= alpha_low + hysteresis``.  Needs ``n >= alpha_min_evals`` and a
    fitted tail of ``alpha_min_tail``.
``alpha_high``
    ``alpha - 2·sigma > alpha_high`` (default 6, "under-trained") once the
    layer has been seen in ``warmup`` snapshots; clears once
    ``alpha <= alpha_high - hysteresis``.
``phase_change``
    The layer's phase differs from its last confirmed phase for
    ``phase_patience`` consecutive snapshots (severity ``info``: phase changes
    are normal in healthy training; they are logged, never warned about).
``alpha_jump``
    A significant, lasting step: the previous and the current alpha both
    differ from the median of the 3 usable snapshots before the previous one
    (and the previous one from the snapshot just before it), in the same
    direction, by ``>= max(alpha_jump, 3·sqrt(sigma² + sigma_ref²))``, every
    alpha involved inside ``[alpha_low, alpha_high]``, after ``warmup``
    snapshots.  After firing, the layer is quiet for ``cooldown`` snapshots.
    Minimum layer as ``alpha_low``.
``non_finite``
    The layer's weights contain NaN/Inf (``status == "non_finite"``);
    severity ``error``; clears when the weights are finite again.  A
    non-finite layer gets no other rule.
``correlation_trap`` (off by default; needs the weights)
    Correlation traps: spikes of the *element-randomised* matrix above the MP
    edge ``λ+ + TW`` (weightwatcher's "randomize" diagnostic; large single
    entries survive the shuffle, true correlations do not).  Computed by
    :func:`correlation_traps` in :meth:`AlertRules.inspect_weights` into
    ``LayerMetrics.num_traps``, which the rule reads.

Hysteresis: a stateful rule fires on the transition inactive -> active and
cannot fire again for that layer until its clear condition holds, so a
metric flapping around a threshold produces one alert, not one per snapshot.
:meth:`AlertRules.state_dict` / :meth:`AlertRules.load_state_dict` carry it
across a resume.

Stopping: alerts of the rules named in ``stop_on`` carry
``stop_training=True``; the monitor then sets ``should_stop`` and the
callbacks stop the fit (Lightning ``trainer.should_stop``, decided
collectively under DDP; Keras ``model.stop_training``).
"""

from __future__ import annotations

from .base import Firing, LayerContext, LayerState, Rule
from .config import DEFAULT_RULES, RULES
from .engine import AlertRules, OnError, resolve_alerts
from .output import WeightWatcherAlert
from .traps import correlation_traps

__all__ = [
    "AlertRules",
    "WeightWatcherAlert",
    "RULES",
    "DEFAULT_RULES",
    "correlation_traps",
    "resolve_alerts",
    "OnError",
    "Rule",
    "Firing",
    "LayerContext",
    "LayerState",
]
