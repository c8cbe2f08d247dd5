"""`fedsim report`: one self-contained HTML page, checked as a file and in a real headless browser."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

import fedsim
from fedsim.scenario import Scenario

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def runs(tmp_path_factory, small_scenario) -> list[Path]:
    root = tmp_path_factory.mktemp("runs")
    small = small_scenario(run__rounds=2)
    dirs = [fedsim.run(small.with_overrides({"run.seed": s}), out=root / f"small-{s}").run_dir for s in (0, 1)]
    dirs.append(fedsim.run(Scenario.load("client-dp", ["run.rounds=2"]), out=root / "dp").run_dir)
    dirs.append(fedsim.run(Scenario.load("unlearn-client", [
        "run.rounds=3", "unlearning.requests.0.at_round=2", 'unlearning.requests.0.method=["retrain", "finetune"]']),
        out=root / "ul").run_dir)
    return dirs


def test_the_report_holds_every_part_and_needs_nothing_else(cli, runs, tmp_path):
    out = tmp_path / "report.html"
    code, stdout, _ = cli("report", *map(str, runs), "--out", str(out))
    assert code == 0 and f"report: {out}" in stdout
    page = out.read_text()
    for part in ("<h2>comparison</h2>", "metrics per round", "partitions", "privacy ledger", "<h3>unlearning</h3>",
                 "finetune", "<h3>runtime</h3>", "<h3>scenario</h3>", "seeds"):
        assert part in page, part
    sources = re.findall(r'(?:src|href)="([^"]*)"', page)
    assert len(sources) >= 1 + 2 * len(runs)  # the comparison, then curves and partitions per run
    assert all(s.startswith("data:image/png;base64,") for s in sources)  # embedded, nothing fetched


def _browse(page: Path, screenshot: Path) -> list[str]:
    """Open `page` in headless chromium, screenshot it; returns the page's console messages."""
    proc = subprocess.run([CHROMIUM, "--headless=new", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                           "--window-size=1200,2400", f"--screenshot={screenshot}", "--enable-logging=stderr", "--v=0",
                           page.resolve().as_uri()], capture_output=True, text=True, timeout=120, check=False)
    assert screenshot.is_file(), proc.stderr[-2000:]
    return [line for line in proc.stderr.splitlines() if ":CONSOLE" in line]


@pytest.mark.skipif(CHROMIUM is None and not os.environ.get("FEDSIM_REQUIRE_BROWSER"),
                    reason="needs Debian's chromium (.ci/run installs it and sets FEDSIM_REQUIRE_BROWSER)")
def test_the_report_loads_in_a_browser_without_errors_and_shows_its_plots(runs, tmp_path):
    from PIL import Image

    from fedsim.report import write_report

    broken = tmp_path / "broken.html"
    broken.write_text("<!DOCTYPE html><html><body><script>undefined_function();</script></body></html>")
    assert _browse(broken, tmp_path / "broken.png")  # the check sees a console error when there is one

    page = write_report(runs, tmp_path / "report.html")
    assert _browse(page, tmp_path / "shot.png") == []
    pixels = np.asarray(Image.open(tmp_path / "shot.png").convert("RGB")).reshape(-1, 3).astype(int)
    blue = np.abs(pixels - [31, 119, 180]).sum(axis=1) < 30  # matplotlib's first line colour: the curves
    green = (pixels[:, 1] > pixels[:, 0] + 40) & (pixels[:, 1] > pixels[:, 2] + 20)  # the partition heatmap
    assert blue.sum() > 500 and green.sum() > 5000
