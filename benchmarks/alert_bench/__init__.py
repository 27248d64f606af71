"""Alert bench: do the default alert rules stay silent on healthy training runs and warn on collapsing ones,
on model families nobody tuned them on?  (issue 16)

* :mod:`.split` -- which families may be tuned on (``TUNE``) and which are held out (``HELDOUT``); fixed before
  the first tuning run.
* :mod:`.criterion` -- the bench's own verdict (healthy / collapsing) from validation loss and the stable and
  numerical ranks of the trained matrices, computed with ``torch.linalg``; it does not use wwmonitor.
* :mod:`.families` -- the training families (CPU, small), each with healthy and collapse-prone settings.
* :mod:`.record` -- trains a run under ``wwmonitor.Monitor`` with the default alert rules (a snapshot every epoch)
  and records everything a replay needs into the cache folder.
* :mod:`.replay` -- re-evaluates the *current* default rules on recorded runs without re-training.
* :mod:`.table` -- the table and the budget of issue 16, and the block it writes into ``docs/alerts.md``.

Run ``python -m benchmarks.alert_bench --help``; see ``benchmarks/alert_bench/README.md``.
"""
