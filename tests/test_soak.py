"""Test-sized soak (issue 18, part 3): 200 snapshots of a small MLP with every default sink on (run store,
TensorBoard with ESD figures, CSV, W&B offline), through the public Monitor API only
(``benchmarks/bench_soak.py``; its 1,000-snapshot figures are in docs/reliability.md, "Soak").

Bounds, measured after ``Monitor.flush()`` at the end of the warm-up (the first 50 snapshots: sinks open their
files, the TensorBoard writer and the W&B run start their threads, matplotlib loads its fonts) and at the end:

* resident memory grows by less than 64 MiB over the remaining 150 snapshots (a leak of 0.5 MiB per snapshot
  -- one float64 copy of the model's weights, 60k parameters, is 0.5 MiB -- would exceed it; allocator noise
  between samples was measured at +-25 MiB);
* open file descriptors and OS threads grow by at most 2 (a descriptor or thread per snapshot would add 150);
* after ``close()`` the monitor's threads are gone (no more than at the start + 2) and every file it opened is
  closed.  Excepted: matplotlib's font files (``mpl-data/fonts``), which matplotlib's font cache keeps open for
  the life of the process, one set per drawing thread, bounded by its cache size (measured: 4-6 descriptors for
  the first monitors of a process, none more from the third on) -- not opened by wwmonitor;
* the store holds every step 0..199 exactly once, and no (step, layer, metric) row twice; the CSV sink wrote
  every step; no snapshot was skipped, dropped or failed.

Figures go to the sinks every 20 epochs instead of the default 5, to keep the test short; the benchmark uses 5.
"""

from __future__ import annotations

from benchmarks.bench_soak import soak


def test_soak_resources_flat_and_every_step_stored_once(tmp_path):
    r = soak(200, 50, tmp_path, esd_every_n_epochs=20)
    warm, end, start, closed = r["warm"], r["end"], r["start"], r["after_close"]
    print({k: r[k] for k in ("start", "warm", "end", "after_close", "wall_s")})
    assert end["rss_mib"] - warm["rss_mib"] < 64, r["samples"]
    assert end["fds"] - warm["fds"] <= 2, (warm, end)
    assert end["threads"] - warm["threads"] <= 2, (warm, end)
    assert closed["threads"] <= start["threads"] + 2, (start, closed)
    left_open = [f for f in r["opened_not_closed"] if "mpl-data/fonts" not in f]
    assert left_open == [], left_open
    assert r["all_steps_once"] and r["steps_stored"] == 200 and r["distinct_steps"] == 200
    assert r["duplicate_metric_rows"] == 0 and r["metric_rows"] > 0
    assert r["csv_rows"] == 200
    stats = r["stats"]
    assert stats["analysed"] == 200 and stats["snapshots_taken"] == 200
    for key in ("skipped", "coalesced", "errors", "duplicates", "sink_errors", "store_errors", "sinks_dropped"):
        assert stats.get(key, 0) == 0, (key, stats)
