"""The bench's table and the budget of issue 16, computed from replayed runs; the block in docs/alerts.md.

Per run: the criterion's label (:mod:`.criterion`), whether any default rule gave a ``warning`` or ``error``
alert, the epoch of the first one, the best-validation and last epochs, and the rules that fired (warning and
above, with counts).  The budget (issue 16, part 4), per split:

* healthy runs with any warning-or-higher alert: goal at most 1 in 20;
* collapsing runs warned before their last epoch: goal all of them;
* collapsing runs warned at or before their best-validation epoch: goal at least 3 in 4.

Runs labelled *failed* or *invalid* are listed but are outside the budget.  The verdict sentences are computed
from the counts, never typed.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any, Optional

from .criterion import judge
from .replay import Replayed, load_meta
from .split import SPLITS

SEVERE = ("warning", "error")
#: the marker block this table is written into (benchmarks/docs_blocks.py), and its file
BLOCK, DOC = "alert-bench", "docs/alerts.md"
#: the budget's goals
MAX_FALSE_ALARM = Fraction(1, 20)
MIN_EARLY = Fraction(3, 4)


@dataclass
class Row:
    family: str
    setting: str
    seed: int
    intent: str
    label: str
    why: str
    warned: bool
    first_epoch: Optional[int]
    best_epoch: int
    last_epoch: int
    rules: str
    seconds: float
    errors: int
    cpu_seconds: Optional[float] = None

    @property
    def before_last(self) -> bool:
        return self.first_epoch is not None and self.first_epoch < self.last_epoch

    @property
    def by_best(self) -> bool:
        return self.first_epoch is not None and self.first_epoch <= self.best_epoch


def make_row(rep: Replayed, cache: Path) -> Row:
    m = rep.meta
    ref_path = cache / m["family"] / m["reference"] / f"seed{m['seed']}"
    ref = m if m["setting"] == m["reference"] else load_meta(ref_path)
    v = judge(m, ref)
    severe = [a for a in rep.alerts if a.severity in SEVERE]
    first = min((a.epoch for a in severe), default=None)
    counts = Counter(a.rule for a in severe)
    return Row(
        m["family"],
        m["setting"],
        int(m["seed"]),
        m.get("intent", ""),
        v.label,
        v.why,
        bool(severe),
        first,
        v.best_epoch,
        v.last_epoch,
        ", ".join(f"{r} x{n}" for r, n in sorted(counts.items())) or "-",
        float(m["seconds"]),
        sum(rep.rule_errors.values()),
        m.get("cpu_seconds"),
    )


def split_of(family: str) -> str:
    return "tune" if family in SPLITS["tune"] else "heldout" if family in SPLITS["heldout"] else "?"


def budget(rows: list[Row]) -> dict[str, Any]:
    """Counts of the budget on ``rows``."""
    healthy = [r for r in rows if r.label == "healthy"]
    coll = [r for r in rows if r.label == "collapsing"]
    return {
        "runs": len(rows),
        "healthy": len(healthy),
        "healthy_warned": sum(r.warned for r in healthy),
        "collapsing": len(coll),
        "coll_before_last": sum(r.before_last for r in coll),
        "coll_by_best": sum(r.by_best for r in coll),
        "failed": sum(r.label == "failed" for r in rows),
        "failed_warned": sum(r.warned and r.label == "failed" for r in rows),
        "invalid": sum(r.label == "invalid" for r in rows),
        "rule_errors": sum(r.errors for r in rows),
    }


def verdict(b: dict[str, Any]) -> list[str]:
    """The budget's sentences, each ending in whether its goal is met."""
    out = []
    if b["healthy"]:
        ok = Fraction(b["healthy_warned"], b["healthy"]) <= MAX_FALSE_ALARM
        out.append(
            f"{b['healthy_warned']} of {b['healthy']} healthy runs got a warning-or-higher alert "
            f"(goal: at most 1 in 20): {'met' if ok else 'NOT met'}."
        )
    else:
        out.append("no healthy run: the false-alarm goal cannot be judged.")
    if b["collapsing"]:
        ok1 = b["coll_before_last"] == b["collapsing"]
        ok2 = Fraction(b["coll_by_best"], b["collapsing"]) >= MIN_EARLY
        out.append(
            f"{b['coll_before_last']} of {b['collapsing']} collapsing runs were warned before their last epoch "
            f"(goal: all): {'met' if ok1 else 'NOT met'}."
        )
        out.append(
            f"{b['coll_by_best']} of {b['collapsing']} collapsing runs were warned at or before their "
            f"best-validation epoch (goal: at least 3 in 4): {'met' if ok2 else 'NOT met'}."
        )
    else:
        out.append("no collapsing run: the detection goals cannot be judged.")
    if b["failed"]:
        out.append(f"{b['failed_warned']} of {b['failed']} failed runs (outside the budget) got a warning.")
    if b["invalid"]:
        out.append(f"{b['invalid']} runs are invalid (their reference run gained nothing).")
    if b["rule_errors"]:
        out.append(f"alert rules raised {b['rule_errors']} times (see the rule_errors of the replay).")
    return out


def met(b: dict[str, Any]) -> bool:
    """Whether every goal of the budget holds on these counts (and there is something to judge)."""
    return (
        b["healthy"] > 0
        and b["collapsing"] > 0
        and Fraction(b["healthy_warned"], b["healthy"]) <= MAX_FALSE_ALARM
        and b["coll_before_last"] == b["collapsing"]
        and Fraction(b["coll_by_best"], b["collapsing"]) >= MIN_EARLY
    )


def markdown(rows: list[Row], wall: bool = True) -> str:
    head = [
        "split",
        "family",
        "setting",
        "seed",
        "label (criterion)",
        "warned",
        "first warning epoch",
        "best-val epoch",
        "last epoch",
        "rules fired (warning+)",
        *(["wall s"] if wall else []),
        "CPU s",
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        lines.append(
            "| "
            + " | ".join(
                [
                    split_of(r.family),
                    r.family,
                    r.setting,
                    str(r.seed),
                    r.label,
                    "yes" if r.warned else "no",
                    "-" if r.first_epoch is None else str(r.first_epoch),
                    str(r.best_epoch),
                    str(r.last_epoch),
                    r.rules,
                    *([f"{r.seconds:.0f}"] if wall else []),
                    "-" if r.cpu_seconds is None else f"{r.cpu_seconds:.0f}",
                ]
            )
            + " |"
        )
    return "\n".join(lines)


def summary(rows: list[Row]) -> str:
    out = []
    for split in ("tune", "heldout"):
        sub = [r for r in rows if split_of(r.family) == split]
        if not sub:
            continue
        fams = sorted({r.family for r in sub})
        out.append(f"**{split}** ({', '.join(fams)}; {len(sub)} runs):")
        out.extend(f"- {s}" for s in verdict(budget(sub)))
        out.append("")
    return "\n".join(out).rstrip()


def docs_block(rows: list[Row], mode: str, stamp: str) -> str:
    """The body of the docs block: the stamp, the budget per split and the table (CPU seconds only: wall seconds
    on a shared machine measure the other jobs as much as the run)."""
    return "\n".join(
        [
            stamp,
            "",
            f"Replay mode `{mode}`: the current default rules on the recorded runs. `CPU s`: CPU seconds of "
            "recording the run (training, criterion and monitor; the first run of a process includes its imports; "
            "`-`: recorded before the bench kept CPU time).",
            "",
            summary(rows),
            "",
            markdown(rows, wall=False),
        ]
    )


def write_docs(body: str, path: Path) -> None:
    """Replace the alert-bench block of the Markdown file ``path`` with ``body``."""
    from benchmarks import docs_blocks

    docs_blocks.write_block(path, BLOCK, body)
