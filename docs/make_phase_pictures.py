"""Make docs/img/phase-*.png: one synthetic ESD per 5+1 phase with its MP fit.

Usage (from the repository root)::

    python docs/make_phase_pictures.py            # writes docs/img/phase-*.png
    python docs/make_phase_pictures.py --confusion  # also prints the test's confusion matrix

Each picture has two panels: the ESD on a linear axis around the bulk (with
the fitted Marchenko-Pastur density, λ+ and λ+ + TW) and the whole ESD on a
logarithmic axis (histogram of log10 λ with the MP density transformed to
that axis), so tails that reach 1000 λ+ stay visible.
"""

from __future__ import annotations

import argparse
import math
import sys
import textwrap
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

import wwmonitor  # noqa: E402
from wwmonitor.mp import mp_pdf  # noqa: E402
from wwmonitor.phases import PHASES  # noqa: E402
from wwmonitor.synthetic import PHASE_GENERATORS  # noqa: E402

N, M = 1000, 500
#: generator arguments chosen to show each phase clearly (the tests draw them at random)
EXAMPLES: dict[str, dict] = {
    "random-like": {},
    "bleeding-out": {"r": 3},
    "bulk+spikes": {"r": 3},
    "bulk-decay": {"k": 150, "top": 4.5},  # issue 9's case: a continuum up to ~5 λ+ (once called heavy-tailed)
    "heavy-tailed": {"mu": 2.0},
    "rank-collapse": {"rank": 200},
}
SEED = 2024


def slug(phase: str) -> str:
    return phase.replace("+", "-")


def picture(phase: str, out: Path) -> str:
    rng = np.random.default_rng([SEED, PHASES.index(phase)])
    W = PHASE_GENERATORS[phase](N, M, rng, **EXAMPLES[phase]).astype(np.float64)
    m = wwmonitor.analyze_matrix(W, keep_esd=True)
    lam = np.sort(np.asarray(m.esd, dtype=np.float64))
    s2, Q = m.mp_sigma2, m.Q
    lp, lm, edge = m.lambda_plus, m.lambda_minus, m.lambda_plus + m.tw_margin
    lmax = float(lam[-1])

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    # --- linear panel around the bulk
    hi = min(lmax, 3.0 * lp) * 1.08
    ax1.hist(
        lam[lam <= hi],
        bins=60,
        range=(0, hi),
        density=False,
        weights=np.full((lam <= hi).sum(), 1.0 / (lam.size * hi / 60)),
        color="#9ecae1",
        edgecolor="#3182bd",
        linewidth=0.4,
        label="ESD (density)",
    )
    x = np.linspace(max(lm, 1e-9 * lp), lp, 400)[1:-1]
    # the MP law describes the bulk: the non-zero eigenvalues up to λ+
    frac = float(np.count_nonzero((lam > 1e-8 * lmax) & (lam <= lp))) / lam.size
    ax1.plot(x, frac * mp_pdf(x, Q, s2), color="#d62728", lw=2, label=f"MP fit, σ²={s2:.3g}")
    ax1.axvline(lp, color="k", ls="--", lw=1, label="λ+")
    ax1.axvline(edge, color="#ff7f0e", ls=":", lw=1.5, label="λ+ + TW")
    beyond = int((lam > hi).sum())
    zero_frac = float((lam <= 1e-8 * lmax).mean())
    if beyond:
        ax1.annotate(
            f"{beyond} eigenvalue{'s' if beyond > 1 else ''} beyond the axis,\nλ_max = {lmax / lp:.0f}× λ+",
            xy=(0.97, 0.6),
            xycoords="axes fraction",
            ha="right",
            fontsize=9,
        )
    spikes = lam[(lam > edge) & (lam <= hi)]
    ax1.plot(spikes, np.zeros_like(spikes), "|", color="#ff7f0e", ms=14, mew=2)
    ax1.set_xlim(0, hi)
    top = 1.15 * max(frac * mp_pdf(x, Q, s2).max() if Q > 1.2 else 2.5 / lp, 1e-12)
    ax1.set_ylim(0, top)
    ax1.set_xlabel("eigenvalue λ of X = WᵀW/N")
    ax1.set_ylabel("density")
    ax1.legend(fontsize=8, loc="center right" if zero_frac > 0 else ("upper right" if not beyond else "upper center"))
    ax1.set_title("linear axis (bulk)", fontsize=10)

    # --- log panel: whole ESD
    floor = lmax * 1e-16
    lg = np.log10(np.clip(lam, floor, None))
    lo = math.floor(lg.min() * 2) / 2
    bins = np.linspace(lo, math.log10(lmax) + 0.05, 70)
    w = bins[1] - bins[0]
    ax2.hist(
        lg,
        bins=bins,
        weights=np.full(lg.size, 1.0 / (lg.size * w)),
        color="#9ecae1",
        edgecolor="#3182bd",
        linewidth=0.4,
        label="ESD",
    )
    xl = np.linspace(math.log10(max(lm, lp * 1e-6)), math.log10(lp), 400)[1:-1]
    xv = 10**xl
    ax2.plot(xl, frac * mp_pdf(xv, Q, s2) * xv * math.log(10), color="#d62728", lw=2, label="MP fit")
    ax2.axvline(math.log10(lp), color="k", ls="--", lw=1, label="λ+")
    zero = (lam <= 1e-8 * lmax).mean()
    if zero > 0:
        ax2.text(0.1, 0.55, f"← {zero:.0%} numerically zero\n    (λ ≤ 1e-8 λ_max)", transform=ax2.transAxes, fontsize=9)
        ax1.text(
            0.03,
            0.93,
            f"← {zero:.0%} of eigenvalues at λ ≈ 0 (bar clipped)",
            transform=ax1.transAxes,
            fontsize=9,
            va="top",
        )
    ax2.set_xlabel("log10 λ")
    ax2.set_ylabel("density of log10 λ")
    ax2.set_yscale("log")
    ax2.set_ylim(bottom=0.5 / (lg.size * w))
    ax2.legend(fontsize=8, loc="upper left" if zero == 0 else "upper center")
    ax2.set_title("log axis (whole ESD)", fontsize=10)

    gen = PHASE_GENERATORS[phase].__name__
    args = ", ".join(f"{k}={v}" for k, v in EXAMPLES[phase].items())
    fig.suptitle(
        f"{phase}: classified as {m.phase}  ({gen}({N}, {M}{', ' + args if args else ''}))\n"
        + textwrap.fill(m.phase_reason, 150),
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return m.phase


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--outdir", default=str(HERE / "img"))
    ap.add_argument("--confusion", action="store_true", help="print the test's confusion matrix too")
    a = ap.parse_args()
    outdir = Path(a.outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    for phase in PHASES:
        p = outdir / f"phase-{slug(phase)}.png"
        got = picture(phase, p)
        print(f"{p}: generated {phase}, classified {got}")
    if a.confusion:
        sys.path.insert(0, str(HERE.parent / "tests"))
        from test_phases import confusion_matrix, format_confusion

        C, misses = confusion_matrix()
        print(format_confusion(C))
        for mm in misses:
            print("miss:", mm)


if __name__ == "__main__":
    main()
