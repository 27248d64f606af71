"""A LoRA fine-tune's monitor cost with and without carrying unchanged weights (``carry_unchanged``).

One small GPT-2 (built from a config, no download) with peft LoRA adapters on ``c_attn``: the adapted layers'
effective weights ``W0 + s·B A`` change at every step, every other matrix (embeddings, ``attn.c_proj``, the MLP)
is frozen.  Two monitors watch the same model in one process, one with ``carry_unchanged=False`` (before), one
with the default ``True`` (after); after each training step both snapshot it, in alternating order, and each is
flushed before the other runs, so that neither competes with the other.  Per snapshot: the time ``snapshot()``
blocks the training thread and the worker's analysis wall and CPU time (``SnapshotResult.meta["analysis_s"]``,
``["analysis_cpu_s"]``); the first
snapshot (nothing to carry yet) is reported apart from the median over the later ones.

The fingerprint's cost: the checksum of the carried matrices (what the "after" monitor computes on the training
thread for them) against copying the same matrices into warm host buffers (what it saves).

Goal (issue 20): a frozen base costs nothing after the first snapshot -- every frozen matrix carried (neither
copied nor analysed) at every later snapshot.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

from benchmarks.docs_blocks import format_load, load_average

#: block name -> Markdown file this benchmark writes with ``python -m benchmarks --write-docs``
DOC_BLOCKS = {"lora": "docs/benchmarks.md"}
FULL = {"n_layer": 4, "n_embd": 256, "vocab": 4096, "snapshots": 6, "rank": 8}
QUICK = {"n_layer": 1, "n_embd": 64, "vocab": 256, "snapshots": 3, "rank": 4}


def _model(cfg: dict[str, int]) -> Any:
    import peft
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    gpt = GPT2LMHeadModel(
        GPT2Config(
            n_layer=cfg["n_layer"],
            n_embd=cfg["n_embd"],
            n_head=4,
            vocab_size=cfg["vocab"],
            n_positions=64,
            bos_token_id=0,
            eos_token_id=0,
            loss_type="ForCausalLM",
        )
    )
    lcfg = peft.LoraConfig(r=cfg["rank"], lora_alpha=2 * cfg["rank"], target_modules=["c_attn"], fan_in_fan_out=True)
    return peft.get_peft_model(gpt, lcfg)


def _step(model: Any, opt: Any, vocab: int) -> None:
    import torch

    x = torch.randint(0, vocab, (4, 32))
    loss = model(x, labels=x).loss
    opt.zero_grad()
    loss.backward()
    opt.step()


def _fingerprint_vs_copy(mon: Any, model: Any) -> dict[str, float]:
    """Median seconds of the checksum of the matrices ``mon`` carried vs a warm copy of them."""
    from wwmonitor.monitor.snapshot import BufferSet, copy_matrices
    from wwmonitor.monitor.unchanged import _checksums

    carried = {lm.name for lm in mon.results[-1].layers if lm.status == "carried"}
    specs = [sp for sp in mon._selection.extract(model, None) if sp.name in carried]
    bs = BufferSet()
    copy_matrices(specs, bs, "bench")  # warm: buffers allocated, plan built
    t_sum, t_copy = [], []
    for _ in range(7):
        t0 = time.perf_counter()
        _checksums([sp.tensor for sp in specs])
        t_sum.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        copy_matrices(specs, bs, "bench")
        t_copy.append(time.perf_counter() - t0)
    nbytes = sum(sp.tensor.numel() * sp.tensor.element_size() for sp in specs)
    return {"checksum": statistics.median(t_sum), "copy": statistics.median(t_copy), "bytes": nbytes}


def measure(quick: bool = False) -> dict[str, Any]:
    """Both monitors' per-snapshot times, the matrix counts and the fingerprint-vs-copy times."""
    import tempfile

    import torch

    import wwmonitor

    torch.set_num_threads(1)
    cfg = QUICK if quick else FULL
    model = _model(cfg)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    kw: dict[str, Any] = dict(store=False, loggers=False, alerts=None, announce=False, esd_every_n_epochs=0)
    times: dict[str, dict[str, list[float]]] = {k: {"snap": [], "analysis": [], "cpu": []} for k in ("before", "after")}
    carried: list[int] = []
    with tempfile.TemporaryDirectory() as root:
        mons = {
            "before": wwmonitor.Monitor(model, root, run_name="before", carry_unchanged=False, **kw),
            "after": wwmonitor.Monitor(model, root, run_name="after", **kw),
        }
        for i in range(cfg["snapshots"]):
            _step(model, opt, cfg["vocab"])
            for name in ("before", "after") if i % 2 == 0 else ("after", "before"):
                mon = mons[name]
                t0 = time.perf_counter()
                mon.snapshot(step=i + 1, epoch=i)
                times[name]["snap"].append(time.perf_counter() - t0)
                mon.flush()
                times[name]["analysis"].append(float(mon.results[-1].meta["analysis_s"]))
                times[name]["cpu"].append(float(mon.results[-1].meta["analysis_cpu_s"]))
            carried.append(int(mons["after"].results[-1].summary.get("carried_layers", 0)))
        layers = mons["after"].results[-1].layers
        fp = _fingerprint_vs_copy(mons["after"], model)
        for mon in mons.values():
            mon.close()
    effective = sum(".c_attn." in lm.name for lm in layers)
    return {
        "cfg": cfg,
        "times": times,
        "carried": carried,
        "matrices": len(layers),
        "frozen": len(layers) - effective,
        "fingerprint": fp,
    }


def _ms(x: float) -> str:
    return f"{1e3 * x:.1f} ms"


def render(r: dict[str, Any]) -> dict[str, str]:
    """The ``lora`` block: per-snapshot times before/after, the fingerprint cost, and the goal's verdict."""
    t, cfg, fp = r["times"], r["cfg"], r["fingerprint"]
    med = {k: {m: statistics.median(v[m][1:]) for m in ("snap", "analysis", "cpu")} for k, v in t.items()}
    out = [
        f"GPT-2 with {cfg['n_layer']} blocks, width {cfg['n_embd']}, vocabulary {cfg['vocab']}; peft LoRA r="
        f"{cfg['rank']} on `c_attn`; {r['matrices']} matrices monitored, {r['frozen']} of them frozen. "
        f"{cfg['snapshots']} snapshots, one AdamW step before each; both monitors in one process, alternating.",
        "",
        "| monitor | snapshot() 1st | analysis 1st: wall / CPU | snapshot() later (median) "
        "| analysis later (median): wall / CPU | matrices carried later |",
        "|---|---|---|---|---|---|",
    ]
    for name, label in (("before", "`carry_unchanged=False` (before)"), ("after", "`carry_unchanged=True` (after)")):
        n = "0" if name == "before" else ", ".join(str(c) for c in r["carried"][1:])
        out.append(
            f"| {label} | {_ms(t[name]['snap'][0])} | {_ms(t[name]['analysis'][0])} / {_ms(t[name]['cpu'][0])} "
            f"| {_ms(med[name]['snap'])} | {_ms(med[name]['analysis'])} / {_ms(med[name]['cpu'])} | {n} |"
        )
    ratio = fp["checksum"] / fp["copy"] if fp["copy"] > 0 else float("nan")
    out += [
        "",
        f"Fingerprint of the carried matrices ({fp['bytes'] / 2**20:.1f} MiB, median of 7): checksum "
        f"{_ms(fp['checksum'])} vs the copy it saves {_ms(fp['copy'])} ({ratio:.2f}x the copy).",
        "",
    ]
    later = r["carried"][1:]
    met = bool(later) and all(c == r["frozen"] for c in later)
    before = med["before"]["snap"] + med["before"]["cpu"]
    after = med["after"]["snap"] + med["after"]["cpu"]
    verdict = (
        f"Goal met: after the first snapshot all {r['frozen']} frozen matrices were carried (neither copied nor "
        f"analysed) at every snapshot"
        if met
        else f"Goal not met: after the first snapshot the carried counts were {later}, not {r['frozen']} each"
    )
    out.append(
        f"{verdict}; snapshot() time + analysis CPU time per later snapshot {_ms(before)} before, {_ms(after)} "
        f"after ({before / after:.1f}x less).  The analysis CPU time (the worker thread's) is given beside the "
        "wall time because the wall time also counts waiting for a core on a loaded machine."
    )
    return {"lora": "\n".join(out)}


def main() -> None:
    print(f"load average (1/5/15 min) at start: {format_load(load_average())}\n", flush=True)
    print(render(measure())["lora"])
    print(f"\nload average (1/5/15 min) at end: {format_load(load_average())}", flush=True)


if __name__ == "__main__":
    main()
