"""``wwmonitor demo``: the batch-size sweep of Martin & Mahoney, reproduced in minutes on a CPU.

What it does
------------
* **Data:** sklearn's handwritten digits (1797 images of 8x8 pixels, shipped
  inside scikit-learn, no download), standardised with the training set's
  pixel mean and standard deviation; a fixed 80/20 train/validation split.
* **Model:** "MicroAlexNet" -- ``Conv2d(1→64, 3x3, padding=1) + ReLU +
  MaxPool(2)`` (64 channels x 4 x 4 = 1024 features), then ``FC1 1024→384``,
  ``FC2 384→192``, ``FC3 192→10`` with ReLUs.
* **Training:** plain SGD at a *constant* learning rate (0.05), no momentum,
  no weight decay, ``torch.set_num_threads(1)``, Lightning ``Trainer`` with
  :class:`wwmonitor.callbacks.lightning.WeightWatcherCallback` (one
  snapshot per epoch) and a ``TensorBoardLogger``.
* **Sweep:** several batch sizes x several seeds, run in parallel worker
  processes (one thread each): a local process pool (``backend="local"``, the
  default) or Ray tasks (``backend="ray"``: a local Ray, or the cluster at
  ``address``).
* **Output** (under ``--out``): ``runs/<bs>_<seed>/`` run stores,
  ``tensorboard/`` logs, ``report/index.html`` (the comparison) and
  ``summary.json`` (final metrics and Spearman correlations).  Each run store
  also holds the run's final ``val_acc``, ``val_loss`` and ``train_acc``
  (:func:`wwmonitor.integrations.record_eval_metrics`): the report ranks the
  runs' spectral summaries against the validation accuracy.

What it shows, and why
----------------------
Smaller batches give more correlated, heavier-tailed layers: lower alpha,
lower MP soft rank and stable rank, more spikes; larger batches stay closer
to random-like.  At a constant learning rate the strength of the SGD noise
("temperature") scales like ``lr / batch_size``, and that ratio is what
drives the effect: with the learning rate scaled linearly with the batch
size (``--lr-scaling linear``) it largely went away in the run recorded in
docs/demo-results.md (batch sizes 8-64).  The largest batches also take far
fewer steps in the same number of epochs, so they are simply less trained.

The report states what *this* run measured (:func:`~wwmonitor.demo.findings.measure_trends`):
the Spearman correlation of each trend metric, averaged over the reported
layers and the seeds, with the batch size, and whether the expected trend is
present, absent or reversed -- never the finding in fixed words.

Modules: :mod:`.config` (settings, requirements), :mod:`.training` (data,
model, one run), :mod:`.sweep` (the sweep and its outputs), :mod:`.findings`
(what the run measured, as text and HTML).
"""

from __future__ import annotations

from .config import (
    DEFAULT_BATCH_SIZES,
    DEFAULT_SEEDS,
    DEMO_INSTALL,
    DEMO_LAYERS,
    TREND_METRICS,
    DemoConfig,
    DemoResult,
    missing_demo_requirement,
)
from .findings import demo_notes_html, format_spearman, format_trends, format_val_ranking, measure_trends
from .sweep import run_demo
from .training import build_model, load_digits_split, run_name, train_one

__all__ = [
    "DEFAULT_BATCH_SIZES",
    "DEFAULT_SEEDS",
    "DEMO_INSTALL",
    "DEMO_LAYERS",
    "DemoConfig",
    "DemoResult",
    "TREND_METRICS",
    "load_digits_split",
    "build_model",
    "run_name",
    "train_one",
    "run_demo",
    "missing_demo_requirement",
    "measure_trends",
    "format_trends",
    "format_spearman",
    "format_val_ranking",
    "demo_notes_html",
]
