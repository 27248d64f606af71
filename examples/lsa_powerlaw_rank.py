"""Latent Semantic Analysis: choose the latent rank K of a TF-IDF matrix with ``powerlaw_rank``.

    python examples/lsa_powerlaw_rank.py [--max-docs 2500] [--out wwmonitor-examples/lsa]

The seeds' LSA example (Martin, "Why does weightwatcher work?") selects the
top-K eigenpairs of the TF-IDF term-document matrix as those in the
power-law tail of its ESD: ``K = #{λ >= xmin}``, with ``xmin`` chosen by the
minimum Kolmogorov-Smirnov distance.  It compares K with the classic
"elbow" of the explained variance.

Corpus (offline, no download): the docstrings of the public functions and
classes of packages installed with wwmonitor -- the Python standard library
modules listed below, numpy, scipy and scikit-learn.  Each docstring of at
least 300 characters is one document.  (sklearn's 20newsgroups, which the
seed used, needs a download.)

Output: K from the power law, K at the explained-variance elbow, and a
figure with the KS landscape and the scree plot with both marked.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import pkgutil
import time
from pathlib import Path

import numpy as np

STDLIB = (
    "collections",
    "os",
    "pathlib",
    "json",
    "re",
    "itertools",
    "functools",
    "argparse",
    "logging",
    "typing",
    "asyncio",
    "email",
    "http",
    "urllib",
    "unittest",
    "xml",
    "csv",
    "datetime",
    "decimal",
    "statistics",
    "subprocess",
    "threading",
    "multiprocessing",
    "socket",
    "ssl",
    "tarfile",
    "zipfile",
    "sqlite3",
    "shutil",
    "tempfile",
    "textwrap",
    "string",
    "inspect",
    "ast",
    "dis",
    "pickle",
    "heapq",
    "bisect",
    "random",
    "math",
)
PACKAGES = ("numpy", "scipy", "sklearn")


def docstring_corpus(max_docs: int, min_chars: int = 300) -> list[str]:
    """Docstrings of public callables in installed modules, deduplicated, in a fixed order."""
    names: list[str] = list(STDLIB)
    for pkg in PACKAGES:
        mod = importlib.import_module(pkg)
        names.append(pkg)
        for info in pkgutil.walk_packages(mod.__path__, pkg + "."):
            if any(part.startswith("_") or part in ("tests", "conftest") for part in info.name.split(".")):
                continue
            names.append(info.name)
    seen: set[str] = set()
    docs: list[str] = []
    for name in names:
        try:
            mod = importlib.import_module(name)
        except Exception:  # optional sub-modules that need extras
            continue
        for attr, obj in sorted(vars(mod).items()):
            if attr.startswith("_") or not (inspect.isfunction(obj) or inspect.isclass(obj)):
                continue
            doc = inspect.getdoc(obj) or ""
            if len(doc) >= min_chars and doc not in seen:
                seen.add(doc)
                docs.append(doc)
        if len(docs) >= max_docs:
            break
    return docs[:max_docs]


def explained_variance_elbow(evals_desc: np.ndarray) -> int:
    """Elbow of the explained-variance-per-component curve: the point farthest from the chord joining its
    first and last points (both axes scaled to [0, 1]); returns K = the number of components up to it."""
    y = evals_desc / evals_desc.sum()
    x = np.arange(1, y.size + 1, dtype=float)
    xn = (x - x[0]) / (x[-1] - x[0])
    yn = (y - y.min()) / (y.max() - y.min())
    # chord from (0, 1) to (1, 0): distance ∝ 1 - xn - yn ... for a convex decreasing curve the elbow maximises it
    return int(np.argmax(1.0 - xn - yn)) + 1


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--max-docs", type=int, default=2500)
    ap.add_argument("--out", default="wwmonitor-examples/lsa")
    args = ap.parse_args()
    import warnings

    from sklearn.feature_extraction.text import TfidfVectorizer

    import wwmonitor
    from wwmonitor.report import figures as F

    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # deprecation warnings of modules imported for their docstrings
        docs = docstring_corpus(args.max_docs)
    tfidf = TfidfVectorizer(
        min_df=3, max_df=0.5, stop_words="english", token_pattern=r"(?u)\b[a-zA-Z]{3,}\b", sublinear_tf=True
    )
    A = tfidf.fit_transform(docs).astype(np.float64)
    print(f"corpus: {len(docs)} docstrings, vocabulary {A.shape[1]} terms  ({time.perf_counter() - t0:.1f} s)")

    # eigenvalues of AᵀA (squared singular values of the TF-IDF matrix)
    r = wwmonitor.powerlaw_rank(A.toarray(), name="tfidf")
    if not r.ok:
        raise SystemExit(f"power-law fit failed: {r.message}")
    ev_desc = np.sort(r.evals)[::-1]
    k_elbow = explained_variance_elbow(ev_desc[ev_desc > 0])
    var_K = ev_desc[: r.K].sum() / ev_desc.sum()
    var_elbow = ev_desc[:k_elbow].sum() / ev_desc.sum()
    print(
        f"power-law rank: K = {r.K} eigenpairs (alpha {r.alpha:.2f}, xmin {r.xmin:.3g}, KS D {r.D:.3f}), "
        f"explaining {100 * var_K:.1f}% of the variance"
    )
    print(f"explained-variance elbow: K = {k_elbow} ({100 * var_elbow:.1f}% of the variance)")

    from matplotlib.figure import Figure

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    fig = Figure(figsize=(16, 4.4), layout="constrained")
    axs = fig.subplots(1, 3)
    F.plot_esd(r.evals, fit=r.fit, ax=axs[0], title="ESD of the TF-IDF matrix (σ² axis)")
    axs[0].set_xlabel(r"eigenvalue of $A^\top A$ (squared singular value)")
    F.plot_ks_landscape(r.evals, fit=r.fit, ax=axs[1], title=f"KS distance vs xmin: K = {r.K}")
    F.plot_scree(r.evals, fit=r.fit, ax=axs[2], log_k=True, title="Scree: power-law K vs explained-variance elbow")
    axs[2].axvline(k_elbow + 0.5, color="#9467bd", ls="-.", lw=1.5)
    axs[2].text(
        k_elbow * 0.95,
        0.05,
        f"elbow K={k_elbow}",
        color="#9467bd",
        fontsize=9,
        ha="right",
        transform=axs[2].get_xaxis_transform(),
    )
    fig.suptitle(
        f"LSA of {len(docs)} Python docstrings: latent rank by power law (K={r.K}) "
        f"vs explained-variance elbow (K={k_elbow})"
    )
    fig.savefig(out / "lsa_rank.png", dpi=90)
    print(f"figure: {out / 'lsa_rank.png'}   ({time.perf_counter() - t0:.1f} s)")


if __name__ == "__main__":
    main()
