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
    model = torch.nn.Sequential(torch.nn.Linear(64, 256), torch.nn.ReLU(), torch.nn.Linear(256, 128), torch.nn.ReLU(),
                                torch.nn.Linear(128, 10))
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    rules = AlertRules(alpha_high=2.5, warmup=1, warn=False, log_alerts=False)  # makes alerts fire for the table
    mon = wwmonitor.Monitor(model, run_dir=run_root, run_name=f"bs{batch_size}", alerts=rules,
                            config={"batch_size": batch_size, "seed": seed, "lr": 0.05, "model": "mlp"})
    step = 0
    g = torch.Generator().manual_seed(seed)
    for epoch in range(EPOCHS):
        perm = torch.randperm(len(xt), generator=g)
        for i in range(0, len(xt), batch_size):
            b = perm[i:i + batch_size]
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
    return [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage",
            f"--user-data-dir={tmp / 'chromium-profile'}"]


def _render(index: Path, tmp: Path, shot: Path) -> dict:
    """Screenshot the page, and load a copy with a probe script that records each image's naturalWidth."""
    args = _chromium_args(tmp)
    r = subprocess.run(args + ["--hide-scrollbars", f"--screenshot={shot}", "--window-size=1280,2000",
                               index.resolve().as_uri()], capture_output=True, text=True, timeout=180)
    assert shot.is_file(), r.stderr[-2000:]
    probe = index.parent / "_probe.html"
    script = ("<script>window.addEventListener('load', function () {"
              "var r = Array.from(document.images).map(function (i) {"
              "return {src: i.getAttribute('src'), ok: i.complete && i.naturalWidth > 0, w: i.naturalWidth}; });"
              "var p = document.createElement('pre'); p.id = 'imgcheck'; p.textContent = JSON.stringify(r);"
              "document.body.appendChild(p); });</script>")
    probe.write_text(index.read_text(encoding="utf-8").replace("</body>", script + "</body>"), encoding="utf-8")
    r = subprocess.run(args + ["--virtual-time-budget=10000", "--dump-dom", probe.resolve().as_uri()],
                       capture_output=True, text=True, timeout=180)
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
    assert pick_steps(list(range(10)), 3) == [0, 4, 9] or pick_steps(list(range(10)), 3) == [0, 5, 9]
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
    # the trend of the seeds: smaller batch -> lower stable rank in the hidden layers
    assert rho["all"]["0"]["stable_rank"] > 0 or rho["all"]["2"]["stable_rank"] > 0
    index = write_comparison(runs, tmp_path / "cmp")
    html = index.read_text(encoding="utf-8")
    assert "Phase diagram" in html and "comparison.csv" in html
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
    assert (tmp_path / "r" / "index.html").is_file()
    # a folder of run folders expands to its runs
    assert cli_main(["compare", str(runs[0].parent), "-o", str(tmp_path / "c"), "--param", "batch_size"]) == 0
    out = capsys.readouterr().out
    assert "comparison of 3 runs" in out
    assert cli_main(["compare", str(runs[0]), "-o", str(tmp_path / "c2")]) == 2
    assert cli_main(["report", str(tmp_path / "missing")]) == 2
    assert "no run store" in capsys.readouterr().err
