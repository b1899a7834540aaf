"""The archived HTML report opens in headless Chromium with its charts drawn.

Skipped, with the reason, where no Chromium is installed; under CI (CI=true) that is a failure.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from matplotlib.image import imread

from tests.test_notebooks import SeededDatabase, run, seed_database

pytestmark = pytest.mark.notebook

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
IMAGE = re.compile(r'<img[^>]*src="data:image/png;base64,[A-Za-z0-9+/=]{1000,}"[^>]*>')
CHARTS_IN_AUDIT = 6


@pytest.fixture
def db(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> SeededDatabase:
    found = seed_database(f"sqlite:///{tmp_path / 'seeded.sqlite3'}")
    monkeypatch.setenv("POTATO_DATABASE_URL", found.url)
    return found


def _chromium() -> str:
    for name in BROWSERS:
        found = shutil.which(name)
        if found:
            return found
    message = "no Chromium found (looked for " + ", ".join(BROWSERS) + "): HTML report rendering NOT checked"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(message + " - required under CI=true")
    pytest.skip(message)


def screenshot(browser: str, page: Path, png: Path, profile: Path) -> np.ndarray:
    """Return the RGB pixels of a headless screenshot of the page (1280 x 4000)."""
    done = subprocess.run(
        [
            browser,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={profile}",
            f"--screenshot={png}",
            "--window-size=1280,4000",
            page.resolve().as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert png.exists(), f"Chromium wrote no screenshot (exit {done.returncode}): {done.stderr[-2000:]}"
    pixels = np.asarray(imread(str(png)))
    return pixels[..., :3]


def chart_pixels(rgb: np.ndarray) -> float:
    """Return the share of strongly coloured pixels (bars, lines): text and code are near grey."""
    chroma = rgb.max(axis=-1) - rgb.min(axis=-1)
    return float((chroma > 0.35).mean())


def distinct_colours(rgb: np.ndarray) -> int:
    """Return how many distinct colours the image holds (quantized to 6 bits per channel)."""
    quantized = (rgb * 63).round().astype(np.int64)
    codes = (quantized[..., 0] << 12) | (quantized[..., 1] << 6) | quantized[..., 2]
    return len(np.unique(codes))


def test_audit_report_renders_its_charts_in_chromium(db: SeededDatabase, tmp_path: Path) -> None:
    browser = _chromium()
    for uid in db.seeded.user_ids[: len(db.seeded.user_ids) // 2]:
        db.storage.rebuild_user_runs(uid)  # some history, so the rebuild charts have data
    record, _result = run("07_monitoring_audit", {"since": "7d"}, tmp_path / "reports")
    page = record.html_path.read_text(encoding="utf-8")
    assert len(IMAGE.findall(page)) >= CHARTS_IN_AUDIT
    assert 'alt="chart: violations by kind"' in page

    # The summary report (outputs only, as an on-call reader opens it) puts every chart in view.
    assert record.summary_path is not None
    summary = record.summary_path.read_text(encoding="utf-8")
    assert len(IMAGE.findall(summary)) >= CHARTS_IN_AUDIT
    rgb = screenshot(browser, record.summary_path, tmp_path / "report.png", tmp_path / "profile")
    assert rgb.shape[:2] == (4000, 1280)
    non_white = float((rgb.min(axis=-1) < 0.95).mean())
    assert non_white > 0.05, f"the page is mostly blank ({non_white:.1%} non-white)"
    colours = distinct_colours(rgb)
    with_charts = chart_pixels(rgb)

    # The same page without its images: what the colour measure gives when no chart is drawn.
    bare = tmp_path / "bare.html"
    bare.write_text(IMAGE.sub("", summary), encoding="utf-8")
    bare_rgb = screenshot(browser, bare, tmp_path / "bare.png", tmp_path / "profile-bare")
    without = chart_pixels(bare_rgb)
    assert with_charts > 0.01, f"charts cover only {with_charts:.2%} of the screenshot"
    assert with_charts > 10 * without, (with_charts, without)
    assert non_white > 2 * float((bare_rgb.min(axis=-1) < 0.95).mean())
    assert colours > 300 and colours > distinct_colours(bare_rgb)
