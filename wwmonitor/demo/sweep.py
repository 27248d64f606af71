"""The sweep: runs scheduled over worker processes or Ray tasks, then the comparison report and ``summary.json``."""

from __future__ import annotations

import json
import queue
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from .config import TREND_METRICS, DemoConfig, DemoResult
from .findings import _val_ranking, demo_notes_html, format_spearman, format_trends, format_val_ranking, measure_trends
from .training import _worker


def run_demo(cfg: DemoConfig, *, echo: Callable[[str], None] = print) -> DemoResult:
    """Run the sweep, then write the comparison report and ``summary.json``.

    Runs are scheduled largest-cost first (small batches take the most
    steps) over ``cfg.workers`` spawned processes, each limited to one
    thread.  Returns the per-run summaries and the Spearman correlations
    of the final metrics with the batch size, per seed and layer; the
    trends this run measured (:func:`~wwmonitor.demo.findings.measure_trends`)
    are in ``summary.json`` and the report.
    """
    from tqdm.auto import tqdm

    t0 = time.perf_counter()
    out = Path(cfg.out).resolve()
    (out / "runs").mkdir(parents=True, exist_ok=True)
    jobs = [(bs, s) for bs in sorted(cfg.batch_sizes) for s in cfg.seeds]  # smallest batch (slowest) first
    echo(
        f"wwmonitor demo: {len(jobs)} runs (batch sizes {list(cfg.batch_sizes)} x seeds {list(cfg.seeds)}), "
        f"{cfg.epochs} epochs each, {_where(cfg)} -> {out}"
    )
    bar = tqdm(
        total=len(jobs) * cfg.epochs, unit="epoch", desc="training", disable=not cfg.progress, dynamic_ncols=True
    )
    results = _run_jobs(cfg, jobs, out, {"lr_scaling": cfg.lr_scaling}, bar)
    bar.close()
    results.sort(key=lambda r: (r["batch_size"], r["seed"]))
    res = _write_outputs(cfg, out, results, t0)
    echo(format_trends(res.trends))
    echo(format_spearman(res.spearman))
    echo(format_val_ranking(res.val_ranking))
    echo(f"run stores:  {out / 'runs'}")
    echo(f"TensorBoard: tensorboard --logdir {out / 'tensorboard'}")
    if res.report is not None:
        echo(f"report:      {res.report}")
    echo(f"summary:     {out / 'summary.json'}   ({res.seconds:.0f} s)")
    return res


def _where(cfg: DemoConfig) -> str:
    if cfg.backend == "local":
        return f"{cfg.workers} worker process(es)"
    return f"Ray tasks on {cfg.address}" if cfg.address else f"Ray tasks on a local Ray with {cfg.workers} CPU(s)"


def _run_jobs(
    cfg: DemoConfig, jobs: Sequence[tuple[int, int]], out: Path, extra: dict[str, Any], bar: Any
) -> list[dict[str, Any]]:
    """Every ``(batch size, seed)`` run: on Ray, in this process (``workers=1``) or on a spawned process pool."""
    if cfg.backend == "ray":
        return _run_on_ray(cfg, jobs, out, extra, bar)
    if cfg.workers == 1:

        class _BarTicker:  # same interface as the queue: put(1) per finished epoch
            def put(self, n: int) -> None:
                bar.update(n)

        results = []
        for bs, s in jobs:
            results.append(_worker((bs, s, cfg.epochs, cfg.lr_for(bs), str(out), _BarTicker(), extra)))
            bar.write(_run_line(results[-1]))
        return results
    return _run_on_pool(cfg, jobs, out, extra, bar)


def _run_on_pool(
    cfg: DemoConfig, jobs: Sequence[tuple[int, int]], out: Path, extra: dict[str, Any], bar: Any
) -> list[dict[str, Any]]:
    """The runs on ``cfg.workers`` spawned processes; the bar advances per finished epoch (through a queue)."""
    import multiprocessing as mp

    results: list[dict[str, Any]] = []
    ctx = mp.get_context("spawn")
    with ctx.Manager() as manager:
        q = manager.Queue()
        with ctx.Pool(processes=cfg.workers, maxtasksperchild=None) as pool:
            pending = [
                pool.apply_async(_worker, ((bs, s, cfg.epochs, cfg.lr_for(bs), str(out), q, extra),)) for bs, s in jobs
            ]
            done: set[int] = set()
            while len(done) < len(pending):
                _drain(q, bar)
                for i, p in enumerate(pending):
                    if i not in done and p.ready():
                        done.add(i)
                        results.append(p.get())  # re-raises a worker's exception here
                        bar.write(_run_line(results[-1]))
                time.sleep(0.2)
            _drain(q, bar)
    return results


def _write_outputs(cfg: DemoConfig, out: Path, results: list[dict[str, Any]], t0: float) -> DemoResult:
    """The comparison report (``cfg.report``) and ``summary.json``, from the finished runs' stores."""
    from ..report.compare import final_metrics_table, spearman_by_group

    run_dirs = [Path(r["run_dir"]) for r in results]
    table = final_metrics_table(run_dirs, param="batch_size", group="seed")
    rho = spearman_by_group(table, param="batch_size", group="seed", metrics=tuple(TREND_METRICS))
    trends = measure_trends(table)
    ranking = _val_ranking(run_dirs)
    report_path = None
    if cfg.report:
        from ..report.compare import write_comparison

        report_path = write_comparison(
            run_dirs,
            out / "report",
            param="batch_size",
            group="seed",
            title="wwmonitor demo: batch-size sweep of MicroAlexNet on sklearn digits",
            notes_html=demo_notes_html(cfg, results, rho, trends),
        )
    config_dict = _cfg_dict(cfg)
    seconds = time.perf_counter() - t0
    summary = {
        "config": config_dict,
        "runs": results,
        "spearman": rho,
        "trends": trends,
        "val_ranking": ranking,
        "final_metrics": table.to_dict(orient="records"),
        "seconds": seconds,
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=1, default=_json_default))
    return DemoResult(
        out=out,
        runs=results,
        spearman=rho,
        report=report_path,
        seconds=seconds,
        config=config_dict,
        trends=trends,
        val_ranking=ranking,
    )


def _drain(q: Any, bar: Any) -> None:
    """Move the finished-epoch ticks the workers queued onto the progress bar (a broken queue raises)."""
    n = 0
    while True:
        try:
            n += q.get_nowait()
        except queue.Empty:
            break
    if n:
        bar.update(n)


def _run_on_ray(
    cfg: DemoConfig, jobs: Sequence[tuple[int, int]], out: Path, extra: dict[str, Any], bar: Any
) -> list[dict[str, Any]]:
    """The sweep as Ray tasks (one CPU each): on the cluster at ``cfg.address``, or on a local Ray started here
    with ``cfg.workers`` CPUs (and shut down after); a Ray already initialised in this process is used as it is.

    The progress bar advances by a run's epochs when that run finishes.  Every task writes its run store under
    ``out``: on a cluster that folder must be on a filesystem all nodes share.
    """
    import ray

    started = not ray.is_initialized()
    if started:
        if cfg.address:
            ray.init(address=cfg.address, log_to_driver=False)
        else:
            ray.init(num_cpus=cfg.workers, include_dashboard=False, log_to_driver=False)
    results: list[dict[str, Any]] = []
    try:
        task = ray.remote(num_cpus=1, max_retries=0)(_worker)
        pending = {task.remote((bs, s, cfg.epochs, cfg.lr_for(bs), str(out), None, extra)): (bs, s) for bs, s in jobs}
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1, timeout=0.5)
            for ref in done:
                pending.pop(ref)
                r = ray.get(ref)  # re-raises a task's exception here
                results.append(r)
                bar.update(cfg.epochs)
                bar.write(_run_line(r))
    finally:
        if started:
            ray.shutdown()
    lost = [r["run"] for r in results if not (Path(r["run_dir"]) / "run.sqlite").is_file()]
    if lost:
        raise RuntimeError(
            f"wwmonitor demo: the run stores of {lost} are not under {str(out)!r} on this machine: "
            "on a Ray cluster, --out must be a folder every node shares"
        )
    return results


def _run_line(r: dict[str, Any]) -> str:
    return f"  done {r['run']}: train acc {r['train_acc']:.3f}, val acc {r['val_acc']:.3f} ({r['seconds']:.0f} s)"


def _cfg_dict(cfg: DemoConfig) -> dict[str, Any]:
    d = asdict(cfg)
    d["batch_sizes"] = list(cfg.batch_sizes)
    d["seeds"] = list(cfg.seeds)
    return d


def _json_default(o: Any) -> Any:
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, Path):
        return str(o)
    return str(o)
