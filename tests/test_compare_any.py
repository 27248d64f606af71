"""``wwmonitor compare`` of any runs: side by side when no config key is swept, and the phases of a sweep.

The runs are written by a real :class:`wwmonitor.Monitor` from given matrices that change between snapshots
(synthetic random-like, spiked, heavy-tailed and low-rank matrices), so layers change phase during a run.  What
the pages must show is computed from the run stores (``load_run``), never hard-coded: the phase classifier
decides which phases the matrices get.
"""

from __future__ import annotations

import html as _html
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("matplotlib")
from PIL import Image  # noqa: E402

import wwmonitor  # noqa: E402
from wwmonitor.cli import main as cli_main  # noqa: E402
from wwmonitor.phases import PHASE_LABELS, PHASES  # noqa: E402
from wwmonitor.report import figures as F  # noqa: E402
from wwmonitor.report.compare import (  # noqa: E402
    detect_param,
    final_metrics_table,
    phase_changes,
    phase_history,
    phases_seen,
    sweep_param,
    write_comparison,
)
from wwmonitor.report.html import fmt  # noqa: E402
from wwmonitor.synthetic import PHASE_GENERATORS  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_blas_thread")

#: layer -> shape; "head" has 30 eigenvalues: too few for a power-law fit (no alpha), still a phase
SHAPES = {"fc1": (300, 120), "fc2": (240, 100), "head": (100, 30)}
#: per run, the matrix family of each layer at each of the 4 snapshots
PLANS = [
    {
        "fc1": ["random-like", "bulk+spikes", "heavy-tailed", "heavy-tailed"],
        "fc2": ["random-like", "random-like", "rank-collapse", "rank-collapse"],
        "head": ["random-like"] * 4,
    },
    {
        "fc1": ["random-like", "random-like", "bulk+spikes", "bulk+spikes"],
        "fc2": ["random-like", "heavy-tailed", "heavy-tailed", "heavy-tailed"],
        "head": ["random-like"] * 4,
    },
    {
        "fc1": ["random-like", "heavy-tailed", "heavy-tailed", "heavy-tailed"],
        "fc2": ["random-like"] * 4,
        "head": ["random-like", "rank-collapse", "rank-collapse", "random-like"],
    },
]


def _make_run(root: Path, name: str, plan: dict, seed: int, config: "dict | None", epochs: bool = True) -> Path:
    rng = np.random.default_rng(seed)
    mon = wwmonitor.Monitor(None, run_dir=root, run_name=name, config=config, every_n_epochs=None, policy="block")
    for i in range(4):
        mats = {L: PHASE_GENERATORS[kinds[i]](*SHAPES[L], rng) for L, kinds in plan.items()}
        mon.snapshot(step=10 * (i + 1), epoch=i if epochs else None, matrices=mats)
    mon.close()
    return mon.run_dir


@pytest.fixture(scope="module")
def same_runs(tmp_path_factory) -> list[Path]:
    """Three runs with identical configs (nothing swept)."""
    root = tmp_path_factory.mktemp("same")
    return [
        _make_run(root, name, PLANS[i], i, {"lr": 0.1, "model": "mlp"})
        for i, name in enumerate(("baseline", "wider-init", "long-warmup"))
    ]


@pytest.fixture(scope="module")
def sweep_runs(tmp_path_factory) -> list[Path]:
    """A batch-size sweep: the config key batch_size differs."""
    root = tmp_path_factory.mktemp("sweep")
    return [
        _make_run(root, f"bs{bs}", PLANS[i], 10 + i, {"batch_size": bs, "lr": 0.1}) for i, bs in enumerate((8, 64, 512))
    ]


# ---------------------------------------------------------------- helpers reading the page


def _section(page: str, anchor: str) -> str:
    """The page from ``id="anchor"`` to the next ``<h2``."""
    return page.split(f'id="{anchor}"', 1)[1].split("<h2", 1)[0]


def _rows(fragment: str) -> list[list[str]]:
    """The cells (inner HTML) of every body row of the first table in ``fragment``."""
    body = fragment.split("<tbody>", 1)[1].split("</tbody>", 1)[0]
    return [re.findall(r"<td[^>]*>(.*?)</td>", row, re.S) for row in re.findall(r"<tr>(.*?)</tr>", body, re.S)]


def _text(cell: str) -> str:
    return _html.unescape(re.sub(r"<[^>]+>", "", cell)).strip()


def _badges(cell: str) -> list[str]:
    return [_html.unescape(b) for b in re.findall(r'class="phase"[^>]*>([^<]*)</span>', cell)]


def _images(index: Path) -> list[str]:
    """The page's images: relative, present, non-blank PNGs."""
    srcs = re.findall(r'<img src="([^"]+)"', index.read_text(encoding="utf-8"))
    assert srcs
    for src in srcs:
        assert "://" not in src and not src.startswith("/")
        with Image.open(index.parent / src) as im:
            im.load()
            assert im.format == "PNG" and im.width > 200 and im.height > 100
            assert np.asarray(im.convert("L"), dtype=float).std() > 5, f"{src} is blank"
    return srcs


def _final_phases(run) -> dict[str, "str | None"]:
    ph = run.phases[run.phases["step"] == run.steps[-1]]
    return {L: None for L in run.layer_names} | dict(zip(ph["layer"], ph["phase"]))


def _stored_sequences(run) -> dict[str, list[tuple[int, "str | None"]]]:
    """Per layer, the (step, phase) of every stored snapshot, from the run store's phase table."""
    at = {(r.layer, int(r.step)): r.phase for r in run.phases.itertuples()}
    return {L: [(s, at.get((L, s))) for s in run.steps] for L in run.layer_names}


def _changes_from_store(run) -> dict[str, list[tuple[int, "str | None"]]]:
    """Per layer, each change of phase as (first step in the new phase, new phase)."""
    out = {}
    for L, seq in _stored_sequences(run).items():
        out[L] = [(s, p) for (_, q), (s, p) in zip(seq, seq[1:]) if p != q]
    return out


# ---------------------------------------------------------------- which mode


def test_sweep_param_falls_back_to_side_by_side():
    same = [{"lr": 0.1}, {"lr": 0.1}]
    assert sweep_param(same) == (None, None)
    assert sweep_param([{}, {}]) == (None, None)
    assert sweep_param([{"lr": 0.1, "seed": 0}, {"lr": 0.1, "seed": 1}]) == (None, None)  # only the seed differs
    assert sweep_param([{"batch_size": 8}, {"batch_size": 64}]) == ("batch_size", None)
    assert sweep_param([{"batch_size": 8}, {"batch_size": 64}], by_run=True) == (None, None)
    assert sweep_param(same, param="lr") == ("lr", None)  # an explicit parameter is still honoured
    with pytest.raises(ValueError, match="exclude each other"):
        sweep_param(same, param="lr", by_run=True)
    with pytest.raises(ValueError, match="do not differ"):  # detect_param itself still insists on a swept key
        detect_param(same)


def test_final_metrics_table_without_swept_key(same_runs):
    df = final_metrics_table(same_runs)
    assert df.attrs["param"] is None and df.attrs["group"] is None
    names = [wwmonitor.load_run(p).name for p in same_runs]
    assert list(dict.fromkeys(df["run"])) == names  # the given order
    assert len(df) == sum(len(wwmonitor.load_run(p).layer_names) for p in same_runs)


def test_runs_with_the_same_name_are_told_apart(same_runs, tmp_path):
    copy = tmp_path / "other" / "baseline"
    shutil.copytree(same_runs[0], copy, ignore=shutil.ignore_patterns("*.lock"))
    df = final_metrics_table([same_runs[0], copy])
    names = list(dict.fromkeys(df["run"]))
    assert len(names) == 2 and all(n.startswith("baseline (") for n in names) and "other/baseline" in names[1]


# ---------------------------------------------------------------- runs side by side


def test_side_by_side_report(same_runs, tmp_path, monkeypatch):
    runs = [wwmonitor.load_run(p) for p in same_runs]
    names = [r.name for r in runs]
    drawn = []  # the lines of every panel of each curves figure, recorded as the page builds it

    def spy(*a, _real=F.plot_run_curves, **k):
        fig = _real(*a, **k)
        drawn.append([[ln.get_label() for ln in ax.get_lines()] for ax in fig.axes if ax.get_visible()])
        return fig

    monkeypatch.setattr(F, "plot_run_curves", spy)
    problems: list[str] = []
    index = write_comparison(same_runs, tmp_path / "cmp", dpi=50, problems=problems)
    page = index.read_text(encoding="utf-8")
    assert problems == []
    assert "side by side" in page and "configs are identical" in _section(page, "summary")
    for name in names:
        assert name in page
    srcs = _images(index)
    assert {"curves.png", "curves_layers.png", "phase_changes.png"} <= set(srcs)
    # one line per run in every panel that has values (the head layer has no alpha: its alpha panel is empty)
    assert len(drawn) == 2
    for panels in drawn:
        assert all(lines in ([], names) for lines in panels) and sum(lines == names for lines in panels) >= 4
    # the final table: one row per run, in order, with the mean over layers computed from the store
    rows = _rows(_section(page, "final"))
    assert [_text(r[0]) for r in rows] == names
    for run, row in zip(runs, rows):
        m = run.metrics[
            (run.metrics["step"] == run.steps[-1])
            & (run.metrics["metric"] == "alpha")
            & (run.metrics["layer"] != "__model__")
        ]
        assert _text(row[2]) == fmt(float(m["value"].dropna().mean()))
        counts = {p: list(_final_phases(run).values()).count(p) for p in set(_final_phases(run).values())}
        shown = dict(zip(_badges(row[7]), map(int, re.findall(r"(\d+)×", row[7]))))
        assert shown == {(p if p else "–"): n for p, n in counts.items()}
    # the phases per run: layers x runs, each cell the stored final phase
    table = _rows(_section(page, "phases"))
    for row in table:
        layer = _text(row[0])
        assert [_badges(c)[0] for c in row[1:]] == [_final_phases(r)[layer] or "–" for r in runs]


def test_runs_without_config_compare_side_by_side(tmp_path):
    runs = [_make_run(tmp_path / "runs", f"r{i}", PLANS[i], i, None, epochs=False) for i in range(2)]
    index = write_comparison(runs, tmp_path / "cmp", dpi=40)
    page = index.read_text(encoding="utf-8")
    assert "no run has a config" in _section(page, "summary")
    assert len(_rows(_section(page, "final"))) == 2
    assert "step 40" in _section(page, "final") and "epoch" not in _text(_section(page, "final"))
    _images(index)


# ---------------------------------------------------------------- the phases of a sweep


def _where(cell: str) -> dict[str, set[str]]:
    """``<b>fc1</b>: 8, 64`` lines -> {layer: {values}} (an empty dict for "not seen")."""
    out = {}
    for line in cell.split("<br>"):
        m = re.match(r"\s*<b>(.*?)</b>: (.*)", line, re.S)
        if m:
            out[_html.unescape(m.group(1))] = {
                re.sub(r" \(\d+/\d+ runs\)$", "", v.strip()) for v in _html.unescape(m.group(2)).split(",")
            }
    return out


def test_sweep_lists_the_phases_seen(sweep_runs, tmp_path):
    runs = [wwmonitor.load_run(p) for p in sweep_runs]
    final: dict[str, dict[str, set[str]]] = {}
    during: dict[str, dict[str, set[str]]] = {}
    for r in runs:
        bs = str(r.config["batch_size"])
        for L, p in _final_phases(r).items():
            if p:
                final.setdefault(p, {}).setdefault(L, set()).add(bs)
        for L, seq in _stored_sequences(r).items():
            for _, p in seq:
                if p:
                    during.setdefault(p, {}).setdefault(L, set()).add(bs)
    assert len(final) >= 2 and len(during) >= 3  # the matrices make the sweep show several phases
    index = write_comparison(sweep_runs, tmp_path / "cmp", dpi=40)
    page = index.read_text(encoding="utf-8")
    assert "swept batch_size" in page and "Phases seen in this sweep" in page
    sec = _section(page, "phases-seen")
    rows = {_badges(r[0])[0]: r for r in _rows(sec)}
    # every one of the 5+1 phases has a row, then the labels outside them that the runs show ('undetermined':
    # the test matrices include layers too small for a reliable phase)
    assert list(rows) == list(PHASES) + [p for p in PHASE_LABELS if p not in PHASES and p in during]
    for p in PHASES:
        assert _where(rows[p][1]) == final.get(p, {}), p
        assert _where(rows[p][2]) == during.get(p, {}), p
        assert ("not seen" in rows[p][1]) == (p not in final)
    intro = sec.split("<table", 1)[0]
    seen_part, rest = intro.split("Seen only earlier in training:", 1)
    earlier_part, never_part = rest.split("Not seen at any snapshot:", 1)
    assert set(_badges(seen_part)) == set(final)
    assert set(_badges(earlier_part)) == set(during) - set(final)
    assert set(_badges(never_part)) == set(PHASES) - set(during)
    # the Python side agrees
    seen = phases_seen(final_metrics_table(sweep_runs), by="batch_size")
    assert {p: {L: set(v) for L, v in d.items()} for p, d in seen.items() if d} == final


def test_grouped_sweep_counts_the_runs_of_each_value(tmp_path):
    """Repeats over seeds: each swept value says how many of its runs show the phase."""
    plans = [
        {"fc1": ["random-like", k], "fc2": ["random-like", "random-like"]}
        for k in ("heavy-tailed", "heavy-tailed", "heavy-tailed", "random-like")
    ]
    paths = []
    for i, (bs, seed) in enumerate([(8, 0), (8, 1), (64, 0), (64, 1)]):
        rng = np.random.default_rng(100 + i)
        mon = wwmonitor.Monitor(
            None,
            run_dir=tmp_path / "runs",
            run_name=f"bs{bs}-s{seed}",
            config={"batch_size": bs, "seed": seed},
            every_n_epochs=None,
        )
        for j in range(2):
            mon.snapshot(step=j + 1, matrices={L: PHASE_GENERATORS[k[j]](*SHAPES[L], rng) for L, k in plans[i].items()})
        mon.close()
        paths.append(mon.run_dir)
    runs = [wwmonitor.load_run(p) for p in paths]
    expected: dict[str, dict[str, dict[str, int]]] = {}
    for r in runs:
        for L, p in _final_phases(r).items():
            if p:
                d = expected.setdefault(p, {}).setdefault(L, {})
                d[str(r.config["batch_size"])] = d.get(str(r.config["batch_size"]), 0) + 1
    index = write_comparison(paths, tmp_path / "cmp", dpi=40)
    page = index.read_text(encoding="utf-8")
    assert "grouped by <b>seed</b>" in page
    for row in _rows(_section(page, "phases-seen")):
        got: dict[str, dict[str, int]] = {}
        for line in row[1].split("<br>"):
            m = re.match(r"\s*<b>(.*?)</b>: (.*)", line, re.S)
            if m:
                got[m.group(1)] = {
                    v: int(k) for v, k, n in re.findall(r"(\S+) \((\d+)/(\d+) runs\)", m.group(2)) if n == "2"
                }
        assert got == expected.get(_badges(row[0])[0], {})


def test_sweep_lists_when_each_layer_changed_phase(sweep_runs, tmp_path):
    runs = [wwmonitor.load_run(p) for p in sweep_runs]
    expected = {(r.name, L): ch for r in runs for L, ch in _changes_from_store(r).items()}
    assert sum(len(ch) for ch in expected.values()) >= 3  # layers do change phase in these runs
    index = write_comparison(sweep_runs, tmp_path / "cmp", dpi=40)
    page = index.read_text(encoding="utf-8")
    sec = _section(page, "phase-changes")
    assert "phase_changes.png" in sec
    rows = _rows(sec)
    assert len(rows) == len(expected)
    first = {(r.name, L): seq[0][1] for r in runs for L, seq in _stored_sequences(r).items()}
    for bs, run, layer, seq, n in rows:
        key = (_text(run), _text(layer))
        steps = [int(s) for s in re.findall(r"step (\d+)\)", _html.unescape(seq))]
        badges = _badges(seq)
        assert badges[0] == (first[key] or "–") and steps[0] == 10, key
        assert list(zip(steps[1:], badges[1:])) == [(s, p or "–") for s, p in expected[key]], key
        assert int(_text(n)) == len(expected[key])
        assert _text(bs) == str(next(r for r in runs if r.name == key[0]).config["batch_size"])
    # the Python side: phase_changes(phase_history(...)) has the same changes, with their epochs
    ch = phase_changes(phase_history(sweep_runs))
    got = {k: [(int(s), p) for s, p in zip(g["step"], g["after"])] for k, g in ch.groupby(["run", "layer"])}
    assert got == {k: v for k, v in expected.items() if v}
    assert all(e == s // 10 - 1 for e, s in zip(ch["epoch"], ch["step"]))


# ---------------------------------------------------------------- the CLI


def test_cli_compare_any_runs(same_runs, sweep_runs, tmp_path, capsys):
    out = tmp_path / "c"
    assert cli_main(["compare", str(same_runs[0]), str(same_runs[1]), "-o", str(out)]) == 0
    stdout = capsys.readouterr().out
    assert "comparison of 2 runs" in stdout and (out / "index.html").is_file()
    page = (out / "index.html").read_text(encoding="utf-8")
    assert "side by side" in page and len(_rows(_section(page, "final"))) == 2
    # --by-run compares a sweep side by side too; with --param it is refused
    assert cli_main(["compare", *map(str, sweep_runs), "--by-run", "-o", str(tmp_path / "b")]) == 0
    assert "as asked" in (tmp_path / "b" / "index.html").read_text(encoding="utf-8")
    capsys.readouterr()
    assert cli_main(["compare", *map(str, sweep_runs), "--by-run", "--param", "lr", "-o", str(tmp_path / "x")]) == 2
    assert capsys.readouterr().err == "wwmonitor compare: --param and --by-run exclude each other\n"


# ---------------------------------------------------------------- as a user sees it


@pytest.mark.slow
def test_side_by_side_page_in_headless_chromium(same_runs, tmp_path):
    chromium = next(
        (shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)), None
    )
    if chromium is None:
        pytest.skip("headless Chromium is not installed (Debian: apt-get install -y chromium)")
    index = write_comparison(same_runs, tmp_path / "cmp", dpi=60)
    shot = tmp_path / "shot.png"
    subprocess.run(
        [
            chromium,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
            f"--user-data-dir={tmp_path / 'profile'}",
            f"--screenshot={shot}",
            "--window-size=1300,2000",
            index.resolve().as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=180,
    )
    with Image.open(shot) as im:
        assert im.size == (1300, 2000)
        assert np.asarray(im.convert("L"), dtype=float).std() > 10
