"""The HTML report and the comparison, built from real training runs, rendered in headless Chromium."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("matplotlib")
pytest.importorskip("sklearn")
from PIL import Image  # noqa: E402

import wwmonitor  # noqa: E402
from wwmonitor.alerts import AlertRules  # noqa: E402
from wwmonitor.cli import main as cli_main  # noqa: E402
from wwmonitor.report.compare import detect_param, final_metrics_table, spearman_by_group, write_comparison  # noqa: E402
from wwmonitor.report.html import pick_steps, write_report  # noqa: E402

BATCH_SIZES = (8, 64, 512)
EPOCHS = 4


def _train(run_root: Path, batch_size: int, seed: int = 0) -> Path:
    """A real (small) training run with the Monitor: MLP 64-256-128-10 on sklearn digits."""
    from sklearn.datasets import load_digits

    torch.set_num_threads(1)
    X, y = load_digits(return_X_y=True)
    X = ((X - X.mean()) / X.std()).astype(np.float32)
    xt, yt = torch.from_numpy(X), torch.from_numpy(y.astype(np.int64))
    torch.manual_seed(seed)
    model = torch.nn.Sequential(
        torch.nn.Linear(64, 256), torch.nn.ReLU(), torch.nn.Linear(256, 128), torch.nn.ReLU(), torch.nn.Linear(128, 10)
    )
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    rules = AlertRules(alpha_high=2.5, warmup=1, warn=False, log_alerts=False)  # makes alerts fire for the table
    mon = wwmonitor.Monitor(
        model,
        run_dir=run_root,
        run_name=f"bs{batch_size}",
        alerts=rules,
        config={"batch_size": batch_size, "seed": seed, "lr": 0.05, "model": "mlp"},
        policy="block",  # every epoch analysed (the default "latest" may coalesce on a busy machine)
    )
    step = 0
    g = torch.Generator().manual_seed(seed)
    for epoch in range(EPOCHS):
        perm = torch.randperm(len(xt), generator=g)
        for i in range(0, len(xt), batch_size):
            b = perm[i : i + batch_size]
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(xt[b]), yt[b]).backward()
            opt.step()
            step += 1
        mon.snapshot(step=step, epoch=epoch)
    mon.close()
    return mon.run_dir


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> list[Path]:
    root = tmp_path_factory.mktemp("runs")
    return [_train(root, bs) for bs in BATCH_SIZES]


@pytest.fixture(scope="module")
def report_index(runs, tmp_path_factory) -> Path:
    return write_report(runs[0], tmp_path_factory.mktemp("report"))


class _Imgs(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.srcs: list[str] = []
        self.external: list[str] = []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "img":
            self.srcs.append(a.get("src", ""))
        for k in ("src", "href"):
            v = a.get(k) or ""
            if re.match(r"^(https?:)?//", v):
                self.external.append(v)


def _check_images(index: Path) -> list[str]:
    p = _Imgs()
    p.feed(index.read_text(encoding="utf-8"))
    assert not p.external, f"the page must be self-contained, found {p.external}"
    assert p.srcs
    for src in p.srcs:
        assert not src.startswith("/") and "://" not in src, f"image path must be relative: {src}"
        f = index.parent / src
        assert f.is_file(), f"missing image {src}"
        with Image.open(f) as im:
            im.load()
            assert im.width > 200 and im.height > 100
            assert np.asarray(im.convert("L"), dtype=float).std() > 5, f"{src} is blank"
    return p.srcs


def _chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    pytest.skip("headless Chromium is not installed (Debian: apt-get install -y chromium)")


def _chromium_args(tmp: Path) -> list[str]:
    return [
        _chromium(),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--disable-dev-shm-usage",
        f"--user-data-dir={tmp / 'chromium-profile'}",
    ]


def _render(index: Path, tmp: Path, shot: Path) -> dict:
    """Screenshot the page, and load a copy with a probe script that records each image's naturalWidth."""
    args = _chromium_args(tmp)
    r = subprocess.run(
        args + ["--hide-scrollbars", f"--screenshot={shot}", "--window-size=1280,2000", index.resolve().as_uri()],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert shot.is_file(), r.stderr[-2000:]
    probe = index.parent / "_probe.html"
    script = (
        "<script>window.addEventListener('load', function () {"
        "var r = Array.from(document.images).map(function (i) {"
        "return {src: i.getAttribute('src'), ok: i.complete && i.naturalWidth > 0, w: i.naturalWidth}; });"
        "var p = document.createElement('pre'); p.id = 'imgcheck'; p.textContent = JSON.stringify(r);"
        "document.body.appendChild(p); });</script>"
    )
    probe.write_text(index.read_text(encoding="utf-8").replace("</body>", script + "</body>"), encoding="utf-8")
    r = subprocess.run(
        args + ["--virtual-time-budget=10000", "--dump-dom", probe.resolve().as_uri()],
        capture_output=True,
        text=True,
        timeout=180,
    )
    probe.unlink()
    m = re.search(r'<pre id="imgcheck">(.*?)</pre>', r.stdout, re.S)
    assert m, f"probe output not found in the DOM: {r.stdout[-1000:]} {r.stderr[-1000:]}"
    import html as _html

    return {"images": json.loads(_html.unescape(m.group(1)))}


# ---------------------------------------------------------------- report


@pytest.mark.slow
def test_report_from_real_run(runs, report_index):
    run = wwmonitor.load_run(runs[0])
    assert len(run.steps) == EPOCHS and len(run.alerts) > 0
    index = report_index
    html = index.read_text(encoding="utf-8")
    for section in ("Metric curves", "Phase timeline", "ESD gallery", "Fit diagnostics", "Alerts", "Run config"):
        assert section in html
    assert "<script" not in html and "<link" not in html  # inline CSS, no scripts, no external resources
    srcs = _check_images(index)
    layers = run.layer_names
    gallery = [s for s in srcs if s.startswith("esd_")]
    assert len(gallery) == len(layers) * len(pick_steps(run.steps, 3))
    assert any(s.startswith("diag_") for s in srcs) and "metrics.png" in srcs and "phases.png" in srcs
    # every alert is in the table, the config is shown
    for rule in set(run.alerts["rule"]):
        assert rule in html
    assert "batch_size" in html.split("Run config")[1]


@pytest.mark.slow
def test_report_renders_in_headless_chromium(report_index, tmp_path):
    index = report_index
    shot = tmp_path / "shot.png"
    res = _render(index, tmp_path, shot)
    imgs = res["images"]
    assert len(imgs) == len(_check_images(index))
    bad = [i for i in imgs if not i["ok"]]
    assert not bad, f"images that did not load in the browser: {bad}"
    with Image.open(shot) as im:
        assert im.size == (1280, 2000)
        assert np.asarray(im.convert("L"), dtype=float).std() > 10


def test_report_errors(runs, tmp_path):
    with pytest.raises(FileNotFoundError, match="no run store"):
        write_report(tmp_path / "nope")
    with pytest.raises(ValueError, match="not in run"):
        write_report(runs[0], tmp_path / "r", layers=["no_such_layer"])
    with pytest.raises(ValueError, match="not snapshots"):
        write_report(runs[0], tmp_path / "r", esd_steps=[123456789])


def test_pick_steps():
    assert pick_steps([5, 1, 3]) == [1, 3, 5]
    assert pick_steps(list(range(10)), 3) == [0, 4, 9]  # middle index round(4.5) = 4 (round half to even)
    assert pick_steps(list(range(11)), 3) == [0, 5, 10]
    assert pick_steps([30, 10, 20, 40, 50], 4) == [10, 20, 40, 50]
    assert pick_steps(list(range(10)), 2) == [0, 9]
    assert pick_steps(list(range(10)), 1) == [9]
    with pytest.raises(ValueError):
        pick_steps([1, 2], 0)


# ---------------------------------------------------------------- compare


def test_detect_param():
    cfgs = [{"batch_size": b, "seed": s, "lr": 0.1, "steps_per_epoch": 100 // b} for b in (2, 8) for s in (0, 1)]
    assert detect_param(cfgs) == ("batch_size", "seed")
    assert detect_param(cfgs, group=None) == ("batch_size", None)
    assert detect_param([{"lr": 0.1}, {"lr": 0.2}]) == ("lr", None)
    with pytest.raises(ValueError, match="do not differ"):
        detect_param([{"lr": 0.1}, {"lr": 0.1}])
    with pytest.raises(ValueError, match="missing"):
        detect_param([{"lr": 0.1}, {"x": 1}], param="lr")


@pytest.mark.slow
def test_comparison_from_real_runs(runs, tmp_path):
    df = final_metrics_table(runs)
    assert df.attrs["param"] == "batch_size" and df.attrs["group"] is None
    assert sorted(df["batch_size"].unique()) == list(BATCH_SIZES)
    rho = spearman_by_group(df, param="batch_size")
    # one group, every layer, each rho the Spearman correlation of that layer's values with the batch size
    from scipy.stats import spearmanr

    assert set(rho) == {"all"} and set(rho["all"]) == set(run_layers := wwmonitor.load_run(runs[0]).layer_names)
    for layer in run_layers:
        sub = df[df["layer"] == layer].sort_values("batch_size")
        for m in ("alpha", "stable_rank", "mp_softrank"):
            expected = spearmanr(sub["batch_size"], sub[m]).statistic
            assert rho["all"][layer][m] == pytest.approx(expected, nan_ok=True), (layer, m)
    # the trend of the seeds: smaller batch -> lower stable rank in the hidden layers
    assert rho["all"]["0"]["stable_rank"] > 0 and rho["all"]["2"]["stable_rank"] > 0
    index = write_comparison(runs, tmp_path / "cmp")
    html = index.read_text(encoding="utf-8")
    assert "Phase diagram" in html and "comparison.csv" in html
    table_rows = re.findall(r"<tr><td", html.split('id="table"', 1)[1])
    assert len(table_rows) == len(df)  # one row per run and layer
    srcs = _check_images(index)
    assert {"sweep.png", "phase_diagram.png"} <= set(srcs) and any(s.startswith("esd_grid_") for s in srcs)
    import pandas as pd

    csv = pd.read_csv(index.parent / "comparison.csv")
    assert len(csv) == len(df)
    res = _render(index, tmp_path, tmp_path / "cmp.png")
    assert all(i["ok"] for i in res["images"]) and len(res["images"]) == len(srcs)


@pytest.mark.slow
def test_cli_report_and_compare(runs, tmp_path, capsys):
    assert cli_main(["report", str(runs[2]), "-o", str(tmp_path / "r"), "--n-steps", "1", "--layers", "2"]) == 0
    out = capsys.readouterr().out
    assert f"file://{(tmp_path / 'r' / 'index.html').resolve()}" in out
    html = (tmp_path / "r" / "index.html").read_text(encoding="utf-8")
    final = html.split('id="final"', 1)[1].split("<h2", 1)[0]
    # only layer "2" in the final table, and one gallery image (the last snapshot of that layer)
    assert re.findall(r'<tr><td class="l">([^<]*)</td>', final.split("</table>", 1)[0]) == ["2"]
    assert len([s for s in _check_images(tmp_path / "r" / "index.html") if s.startswith("esd_")]) == 1
    # a folder of run folders expands to its runs
    assert cli_main(["compare", str(runs[0].parent), "-o", str(tmp_path / "c"), "--param", "batch_size"]) == 0
    out = capsys.readouterr().out
    assert "comparison of 3 runs" in out
    assert cli_main(["compare", str(runs[0]), "-o", str(tmp_path / "c2")]) == 2
    assert capsys.readouterr().err == "wwmonitor compare: need at least two runs to compare\n"
    assert not (tmp_path / "c2").exists()
    assert cli_main(["report", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("wwmonitor report: no run store") and str(tmp_path / "missing") in err
    assert err.count("\n") == 1


# ------------------------------------------------- fast runs written straight into the store
#
# These runs are built from given matrices (no model, no training loop) with the same analysis and store the
# monitor uses, so each takes well under a second: the report's error handling is tested on them.

#: two layers whose names differ only in punctuation (their image files used to overwrite each other)
TWIN_LAYERS: dict[str, tuple[str, tuple[int, int]]] = {"blk/fc": ("heavy", (300, 100)), "blk_fc": ("gauss", (300, 120))}


def _store_run(
    folder: Path,
    *,
    name: str,
    layers: dict = TWIN_LAYERS,
    steps: tuple[int, ...] = (10, 20, 30),
    epochs: "tuple[int, ...] | None" = None,
    config: "dict | None" = None,
    seed: int = 0,
) -> Path:
    """A run store at ``folder`` with one snapshot per step (``epochs=None``: snapshots without an epoch)."""
    import time

    from wwmonitor.analyze import analyze_matrix
    from wwmonitor.records import SnapshotResult
    from wwmonitor.store import RunStore

    rng = np.random.default_rng(seed)
    st = RunStore(folder)
    st.set_meta({"name": name, "run_id": name, "config": config or {}})
    st.set_layers([(L, "Linear", shape) for L, (_, shape) in layers.items()])
    for i, step in enumerate(steps):
        lms, esds, fits = [], {}, {}
        for L, (kind, shape) in layers.items():
            W = rng.standard_t(2.5, shape) if kind == "heavy" else rng.standard_normal(shape)
            lm = analyze_matrix(W, L, layer_type="Linear", keep_esd=True)
            esds[L], fits[L] = lm.esd, lm.fits
            lms.append(lm)
        alphas = [lm.alpha for lm in lms if lm.alpha is not None]
        st.write(
            SnapshotResult(
                step=step,
                epoch=None if epochs is None else epochs[i],
                time=time.time(),
                layers=lms,
                esds=esds,
                fits=fits,
                summary={"mean_alpha": float(np.mean(alphas)) if alphas else float("nan")},
            )
        )
    st.close()
    return folder


@pytest.fixture(scope="module")
def store_runs(tmp_path_factory) -> list[Path]:
    """Two small runs without epochs (batch_size 8 and 64), built straight into the store."""
    root = tmp_path_factory.mktemp("store_runs")
    return [_store_run(root / f"bs{bs}", name=f"bs{bs}", config={"batch_size": bs}, seed=bs) for bs in (8, 64)]


def _copy_run(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("*.lock"))
    return dst


def _section(html: str, anchor: str) -> str:
    """The page from ``id="anchor"`` to the next ``<h2``."""
    rest = html.split(f'id="{anchor}"', 1)[1]
    return rest.split("<h2", 1)[0]


def _one_error_line(err: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1, f"expected one error line, got {lines}"
    assert "Traceback" not in err
    return lines[0]


# ---------------------------------------------------------------- structure of the writers


def test_report_writers_are_split_into_small_section_functions():
    """write_report / write_comparison build the page from one small function per section (no 100+ line bodies)."""
    import ast
    import importlib
    import inspect
    import pkgutil

    import wwmonitor.report
    from wwmonitor.report import html as H

    too_long, undocumented, big = [], [], []
    for info in pkgutil.iter_modules(wwmonitor.report.__path__):
        mod = importlib.import_module(f"wwmonitor.report.{info.name}")
        src = inspect.getsource(mod)
        if src.count("\n") > 500:
            big.append(f"{mod.__name__}: {src.count(chr(10))} lines")
        # 45 lines of code as laid out by `ruff format` (one argument per line in long calls; the old
        # write_report body was 183 lines, write_comparison 103); a plotting function draws one figure: 60
        limit = 60 if info.name.startswith("figure") else 45
        for node in ast.walk(ast.parse(src)):
            if isinstance(node, ast.FunctionDef):
                body = node.body[1:] if ast.get_docstring(node) else node.body
                n_lines = node.end_lineno - body[0].lineno + 1
                if n_lines > limit:
                    too_long.append(f"{mod.__name__}.{node.name}: {n_lines} lines of code")
                if not ast.get_docstring(node) and info.name not in ("figures", "figures_runs", "figure_style"):
                    undocumented.append(f"{mod.__name__}.{node.name}")
    assert not too_long and not undocumented and not big, (too_long, undocumented, big)
    # one builder per section, in page order, each named after its section
    run_sections = [(anchor, fn.__name__) for anchor, _, _, fn in H._sections(_FakeReport())]
    assert [a for a, _ in run_sections] == [
        "summary",
        "curves",
        "final",
        "phases",
        "esd",
        "diagnostics",
        "alerts",
        "config",
    ]
    assert len({fn for _, fn in run_sections}) == len(run_sections)


class _FakeReport:
    """Just enough of a report for ``_sections`` to name the headings."""

    last = 30

    @staticmethod
    def when(step: int) -> str:
        return f"step {step}"


# ---------------------------------------------------------------- runs without epochs


def test_report_and_compare_without_epochs_use_steps(store_runs, tmp_path, monkeypatch):
    from wwmonitor.report import figures as F

    run = wwmonitor.load_run(store_runs[0])
    assert run.snapshots["epoch"].isna().all() and run.steps == [10, 20, 30]  # the case under test
    drawn = {}  # what the first panel of each figure shows, recorded when the report builds it

    def first_axes(fig) -> dict:
        ax = fig.axes[0]
        return {
            "xlabel": ax.get_xlabel(),
            "xticks": [t.get_text() for t in ax.get_xticklabels()],
            "lines": {ln.get_label(): list(ln.get_xdata()) for ln in ax.get_lines()},
        }

    for fn in ("plot_metric_curves", "plot_phase_timeline"):
        real = getattr(F, fn)

        def spy(*a, _real=real, _fn=fn, **k):
            fig = _real(*a, **k)
            drawn[_fn] = first_axes(fig)
            return fig

        monkeypatch.setattr(F, fn, spy)
    index = write_report(store_runs[0], tmp_path / "rep", dpi=40)
    html = index.read_text(encoding="utf-8")
    assert "from step 10 to step 30" in html and "epoch None" not in html and "epoch <NA>" not in html
    assert "Final snapshot: step 30" in html
    # the metric curves are drawn against the step, one line per layer through every snapshot
    curves = drawn["plot_metric_curves"]
    assert curves["xlabel"] == "step"
    assert curves["lines"] == {"blk/fc": [10, 20, 30], "blk_fc": [10, 20, 30]}
    # the phase timeline's columns are labelled by step
    timeline = drawn["plot_phase_timeline"]
    assert timeline["xlabel"] == "step" and timeline["xticks"] == ["10", "20", "30"]
    _check_images(index)
    # the CLI: report and compare of runs without epochs
    assert cli_main(["report", str(store_runs[1]), "-o", str(tmp_path / "r2"), "--dpi", "40"]) == 0
    assert cli_main(["compare", *map(str, store_runs), "-o", str(tmp_path / "cmp")]) == 0
    cmp_rows = re.findall(r"<tr><td", (tmp_path / "cmp" / "index.html").read_text(encoding="utf-8"))
    assert len(cmp_rows) >= 4  # 2 runs x 2 layers in the table


# ---------------------------------------------------------------- image file names


def test_report_image_names_are_unique_per_layer(tmp_path):
    run_dir = _store_run(tmp_path / "run", name="twins", epochs=(0, 1, 2))
    index = write_report(run_dir, tmp_path / "rep", n_esd_steps=2, dpi=40)
    html = index.read_text(encoding="utf-8")
    srcs = _check_images(index)
    gallery = [s for s in srcs if s.startswith("esd_")]
    diag = [s for s in srcs if s.startswith("diag_")]
    assert len(gallery) == 4 and len(set(gallery)) == 4, gallery  # 2 layers x 2 snapshots, no file shared
    assert len(diag) == 2 and len(set(diag)) == 2, diag
    on_disk = [p.name for pattern in ("esd_*.png", "diag_*.png") for p in index.parent.glob(pattern)]
    assert sorted(on_disk) == sorted(gallery + diag)
    # distinct pictures, each under its own layer's heading
    assert len({(index.parent / s).read_bytes() for s in gallery + diag}) == 6
    esd = _section(html, "esd")
    for layer in TWIN_LAYERS:
        block = esd.split(f"<h3>{layer}</h3>", 1)[1].split("<h3>", 1)[0]
        assert len(re.findall(r'<img src="esd_[^"]+"', block)) == 2, (layer, block)
    from wwmonitor.report.html import image_stem

    assert image_stem("blk/fc") != image_stem("blk_fc") and image_stem("FC") != image_stem("fc")
    assert re.fullmatch(r"[A-Za-z0-9._-]+", image_stem("a/b c:d?" * 40)) and len(image_stem("x" * 500)) < 120


# ---------------------------------------------------------------- damaged run stores


def _damage(kind: str, good: Path, tmp: Path) -> Path:
    folder = tmp / kind
    folder.mkdir()
    db = folder / "run.sqlite"
    if kind == "random":
        db.write_bytes(np.random.default_rng(0).integers(0, 256, 8192, dtype=np.uint8).tobytes())
    elif kind == "truncated":
        data = (good / "run.sqlite").read_bytes()
        db.write_bytes(data[: len(data) // 2])
    elif kind == "empty":
        db.write_bytes(b"")
    elif kind == "not_a_run":
        import sqlite3

        with sqlite3.connect(db) as c:
            c.execute("CREATE TABLE other (x INTEGER)")
        c.close()
    return folder  # "no_store": a folder without run.sqlite


@pytest.mark.parametrize(
    "kind, problem",
    [
        ("random", "not a readable SQLite database"),
        ("truncated", "not a readable SQLite database"),
        ("empty", "not a wwmonitor run store"),
        ("not_a_run", "not a wwmonitor run store"),
        ("no_store", "no run store"),
    ],
)
def test_load_run_damaged_store_names_file_and_problem(store_runs, tmp_path, kind, problem):
    folder = _damage(kind, store_runs[0], tmp_path)
    expected = FileNotFoundError if kind == "no_store" else ValueError
    with pytest.raises(expected) as ei:
        wwmonitor.load_run(folder)
    msg = str(ei.value)
    assert str(folder / "run.sqlite") in msg and problem in msg, msg


def test_corrupt_esd_blob_names_file_layer_and_step(store_runs, tmp_path):
    import sqlite3

    folder = _copy_run(store_runs[0], tmp_path / "r")
    with sqlite3.connect(folder / "run.sqlite") as c:
        c.execute("UPDATE esds SET data = X'00112233' WHERE layer = 'blk_fc' AND step = 30")
    c.close()
    run = wwmonitor.load_run(folder)
    with pytest.raises(ValueError) as ei:
        run.esd("blk_fc", 30)
    msg = str(ei.value)
    assert str(folder / "run.sqlite") in msg and "'blk_fc'" in msg and "step 30" in msg, msg


@pytest.mark.parametrize("kind", ["random", "truncated", "no_store"])
def test_cli_damaged_store_one_line_exit_2(store_runs, tmp_path, capsys, kind):
    bad = _damage(kind, store_runs[0], tmp_path)
    assert cli_main(["report", str(bad), "-o", str(tmp_path / "rep")]) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert line.startswith("wwmonitor report: ") and str(bad / "run.sqlite") in line
    assert not (tmp_path / "rep").exists()  # nothing written for a run that cannot be read
    argv = ["compare", str(store_runs[0]), str(bad), "-o", str(tmp_path / "cmp")]
    assert cli_main(argv) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert line.startswith("wwmonitor compare: ") and str(bad) in line


# ---------------------------------------------------------------- unwritable output


@pytest.mark.parametrize("where", ["under_a_file", "is_a_file"])
def test_cli_unwritable_output_one_line_exit_2(store_runs, tmp_path, capsys, where):
    blocker = tmp_path / "blocker"
    blocker.write_text("keep me", encoding="utf-8")
    target = blocker / "out" if where == "under_a_file" else blocker
    for argv in (
        ["report", str(store_runs[0]), "-o", str(target)],
        ["compare", *map(str, store_runs), "-o", str(target)],
    ):
        assert cli_main(argv) == 2, argv
        line = _one_error_line(capsys.readouterr().err)
        assert line.startswith(f"wwmonitor {argv[0]}: ") and str(target) in line, line
    assert blocker.read_text(encoding="utf-8") == "keep me"


def test_cli_write_failure_during_report_one_line_exit_2(store_runs, tmp_path, capsys, monkeypatch):
    """A folder that accepts the first file and then refuses (read-only, full disk) is reported with the file."""
    from matplotlib.figure import Figure

    def refuse(self, fname, *a, **k):
        raise PermissionError(13, "Permission denied", str(fname))

    monkeypatch.setattr(Figure, "savefig", refuse)
    for argv in (
        ["report", str(store_runs[0]), "-o", str(tmp_path / "rep")],
        ["compare", *map(str, store_runs), "-o", str(tmp_path / "cmp")],
    ):
        assert cli_main(argv) == 2, argv
        line = _one_error_line(capsys.readouterr().err)
        assert str(tmp_path / argv[-1].rsplit("/", 1)[-1]) in line and "Permission denied" in line, line


# ---------------------------------------------------------------- failures are shown, not swallowed


def _problem_list(html: str) -> list[str]:
    """The items of the problem list at the top of the page (before the summary)."""
    top = html.split('id="summary"', 1)[0]
    m = re.search(r'<div class="problems"[^>]*>(.*?)</div>', top, re.S)
    return re.findall(r"<li>(.*?)</li>", m.group(1), re.S) if m else []


def test_report_figure_failures_are_noted_and_counted(store_runs, tmp_path, monkeypatch, capsys):
    import sqlite3

    from wwmonitor.report import figures as F

    folder = _copy_run(store_runs[0], tmp_path / "r")
    with sqlite3.connect(folder / "run.sqlite") as c:  # blk_fc has no ESD at the last snapshot
        c.execute("DELETE FROM esds WHERE layer = 'blk_fc' AND step = 30")
    c.close()
    real_panel = F.plot_esd_panel

    def panel(ev, *, title=None, **k):
        if title.startswith("blk/fc at step 10"):
            raise RuntimeError("panel exploded")
        return real_panel(ev, title=title, **k)

    def curves(*a, **k):
        raise ValueError("curves exploded")

    monkeypatch.setattr(F, "plot_esd_panel", panel)
    monkeypatch.setattr(F, "plot_metric_curves", curves)
    problems: list[str] = []
    index = write_report(folder, tmp_path / "rep", n_esd_steps=2, dpi=40, problems=problems)
    html = index.read_text(encoding="utf-8")
    listed = _problem_list(html)
    assert len(listed) == len(problems) == 4, listed
    assert "4 problems" in html.split('id="summary"', 1)[0]
    # each failure is named where it happened: layer/figure and the error
    curves_sec = _section(html, "curves")
    assert 'class="problem"' in curves_sec and "curves exploded" in curves_sec and "metric curves" in curves_sec
    esd = _section(html, "esd")
    assert esd.count('class="problem"') == 2
    assert re.search(r"blk/fc at step 10.*RuntimeError: panel exploded", esd, re.S)
    assert re.search(r"blk_fc at step 30.*no ESD stored", esd, re.S)
    diag = _section(html, "diagnostics")
    assert diag.count('class="problem"') == 1 and "blk_fc" in diag and "no ESD stored" in diag
    # what could be drawn still is
    assert len([s for s in _check_images(index) if s.startswith("esd_")]) == 2
    # the CLI says so too
    assert cli_main(["report", str(folder), "-o", str(tmp_path / "rep2"), "--n-steps", "2", "--dpi", "40"]) == 0
    err = capsys.readouterr().err
    assert "4 problems" in err and "panel exploded" in err


def test_comparison_failures_are_noted_and_counted(store_runs, tmp_path, monkeypatch):
    import sqlite3

    from wwmonitor.report import figures as F

    runs = [_copy_run(r, tmp_path / r.name) for r in store_runs]
    with sqlite3.connect(runs[1] / "run.sqlite") as c:  # the run bs64 lost its final ESDs
        c.execute("DELETE FROM esds WHERE step = 30")
    c.close()

    def sweep(*a, **k):
        raise ValueError("sweep exploded")

    monkeypatch.setattr(F, "plot_sweep", sweep)
    problems: list[str] = []
    index = write_comparison(runs, tmp_path / "cmp", esd_layer="blk/fc", dpi=40, problems=problems)
    html = index.read_text(encoding="utf-8")
    listed = _problem_list(html)
    assert len(listed) == len(problems) == 2, listed
    assert "sweep exploded" in _section(html, "sweep") and 'class="problem"' in _section(html, "sweep")
    esds = _section(html, "esds")
    assert 'class="problem"' in esds and "bs64" in esds and "no ESD stored" in esds
    assert any(s.startswith("esd_grid_") for s in _check_images(index))  # bs8's ESD is still drawn


def test_report_lists_when_each_layer_changed_phase(tmp_path):
    """The per-run report names every phase change (layer, snapshot, before -> after), as stored."""
    from wwmonitor.report.compare import phase_changes, phase_history

    rng = np.random.default_rng(3)
    noise = rng.standard_normal((600, 300))
    U, _ = np.linalg.qr(rng.standard_normal((600, 3)))
    V, _ = np.linalg.qr(rng.standard_normal((300, 3)))
    spikes = U @ np.diag([120.0, 100.0, 80.0]) @ V.T  # far above the bulk edge (~35)
    heavy = rng.standard_t(1.7, (600, 300))
    with wwmonitor.Monitor(None, tmp_path, run_name="phases", every_n_epochs=None) as mon:
        for epoch, W in enumerate([noise, noise + spikes, heavy]):
            mon.snapshot(step=10 * (epoch + 1), epoch=epoch, matrices={"a": W, "steady": noise})
    run = wwmonitor.load_run(mon.run_dir)
    changes = phase_changes(phase_history([run]))
    assert len(changes) >= 1 and set(changes.layer) == {"a"}  # "steady" never changes
    out = write_report(mon.run_dir, tmp_path / "report")
    page = (out / "index.html").read_text() if out.is_dir() else Path(out).read_text()
    assert f"{len(changes)} phase change(s)" in page
    for r in changes.itertuples():
        assert f"epoch {int(r.epoch)} (step {int(r.step)})" in page and r.after in page
