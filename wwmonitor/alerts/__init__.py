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
    Onset of rank collapse (over-regularisation).  The *collapsed fraction* is
    ``f0 = max(#{σ_i < collapse_tol · σ_max} / n, rank_loss / n)`` where
    ``σ_i² = N·λ_i`` are the squared singular values (eigenvalues of ``WᵀW``),
    read from the snapshot's λ-axis ESD (the ratio is axis-free), and ``n`` the
    number of eigenvalues they were counted over (``M``; ``K·M`` for a pooled
    conv layer of ``K`` kernel positions).  Fires when
    ``f0 >= collapse_fraction`` or the layer's phase is ``"rank-collapse"``
    (or all weights are zero); clears when ``f0 < collapse_fraction / 2`` and
    the phase is no longer rank-collapse.  Defaults (``1e-4``, ``0.10``)
    match the phase classifier in :mod:`wwmonitor.phases`.
``over_regularization``
    The bulk is squeezed toward zero long before singular values are
    numerically zero: against the layer's early values (the largest over its
    first ``overreg_ref_snapshots`` snapshots, kept in the state), its stable
    rank ``Σλ/λ_max`` is below ``overreg_sr_ratio`` (0.22), its MP soft rank
    ``λ+/λ_max`` below ``overreg_softrank_ratio`` (0.25) and its squared
    Frobenius norm below ``overreg_norm_ratio`` (0.8) for ``overreg_patience``
    (2) consecutive snapshots; clears once the stable rank is back above
    ``overreg_sr_ratio · (1 + overreg_hysteresis)`` of its early value.
``alpha_low``
    ``alpha < alpha_low`` (default 2, weightwatcher's "over-trained") for
    ``alpha_low_patience`` consecutive snapshots; clears once
    ``alpha >= alpha_low + hysteresis``.
``alpha_high``
    ``alpha > alpha_high`` (default 6, "under-trained") once the layer has
    been seen in ``warmup`` snapshots; clears once
    ``alpha <= alpha_high - hysteresis``.
``phase_change``
    The layer's phase differs from its last confirmed phase for
    ``phase_patience`` consecutive snapshots (severity ``info``: phase changes
    are normal in healthy training; they are logged, never warned about).
``alpha_jump``
    ``|alpha_t - alpha_{t-1}| >= alpha_jump`` between consecutive snapshots,
    after ``warmup`` snapshots, with at least one of the two alphas
    ``<= alpha_high`` (alphas of random-like layers are noisy and carry no
    signal).  After firing, the layer is quiet for ``cooldown`` snapshots.
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
