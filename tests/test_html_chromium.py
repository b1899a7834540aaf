"""The archived HTML report opens in headless Chromium with its charts drawn, and reads as a report.

The summary page has every chart, no empty section, the verdict once, plain tables, and no
character that no installed font can draw (Chromium would show a missing-glyph box for it).
Skipped, with the reason, where no Chromium (or no fontconfig) is installed; under CI (CI=true)
that is a failure.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import nbformat
import numpy as np
import pytest
from bs4 import BeautifulSoup, Tag
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


def _missing(message: str) -> None:
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(message + " - required under CI=true")
    pytest.skip(message)


def _chromium() -> str:
    for name in BROWSERS:
        found = shutil.which(name)
        if found:
            return found
    _missing("no Chromium found (looked for " + ", ".join(BROWSERS) + "): HTML report rendering NOT checked")
    raise AssertionError("unreachable")


def fonts_without(chars: set[str]) -> list[str]:
    """Return the characters no installed font has a glyph for (asked of fontconfig, as Chromium does)."""
    fc_list = shutil.which("fc-list")
    if fc_list is None:
        _missing("no fc-list (fontconfig) found: glyph coverage of the report NOT checked")
        raise AssertionError("unreachable")
    missing = []
    for char in sorted(chars):
        if char.isascii():
            continue  # every font Chromium falls back to has ASCII
        found = subprocess.run(
            [fc_list, f":charset={ord(char):x}", "family"], capture_output=True, text=True, check=True
        )
        if not found.stdout.strip():
            missing.append(f"U+{ord(char):04X} {char!r}")
    return missing


def visible_text(page: str) -> str:
    """Return the text a reader sees on the page (no styles, no scripts, no attributes)."""
    soup = BeautifulSoup(page, "html.parser")
    for hidden in soup(["style", "script", "head"]):
        hidden.decompose()
    return soup.get_text(" ")


def empty_sections(page: str) -> list[str]:
    """Return the headings of the page's sections that hold nothing but their heading."""
    empty = []
    for section in BeautifulSoup(page, "html.parser").find_all("section"):
        heading = section.find(["h2", "h3"])
        title = heading.get_text(strip=True) if isinstance(heading, Tag) else "(no heading)"
        if isinstance(heading, Tag):
            heading.extract()
        if not section.get_text(strip=True) and not section.find("img"):
            empty.append(title)
    return empty


def screenshot(browser: str, page: Path, png: Path, profile: Path) -> np.ndarray:
    """Return the RGB pixels of a headless screenshot of the whole page.

    The window is 1280 x 10000 CSS pixels (the summary's header, tables and every chart)
    drawn at half scale, so the image is 640 x 5000.
    """
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
            "--force-device-scale-factor=0.5",
            "--window-size=1280,10000",
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
    parameters = {"since": "7d", "operator": "ana", "ticket": "INC-7"}
    record, result = run("07_monitoring_audit", parameters, tmp_path / "reports")
    page = record.html_path.read_text(encoding="utf-8")
    assert len(IMAGE.findall(page)) >= CHARTS_IN_AUDIT
    # Charts are image/png outputs of the notebook (what nbconvert and PDF export pick up).
    executed = nbformat.read(str(record.notebook_path), as_version=4)  # type: ignore[no-untyped-call]
    alts = [
        o.get("metadata", {}).get("image/png", {}).get("alt")
        for c in executed.cells
        for o in c.get("outputs", [])
        if "image/png" in o.get("data", {})
    ]
    assert len(alts) >= CHARTS_IN_AUDIT and "chart: violations by kind" in alts

    # The summary report (outputs only, as an on-call reader opens it) puts every chart in view.
    assert record.summary_path is not None
    summary = record.summary_path.read_text(encoding="utf-8")
    assert len(IMAGE.findall(summary)) >= CHARTS_IN_AUDIT
    assert 'alt="chart: violations by kind"' in summary
    # A report, not the notebook minus its code.
    text = visible_text(summary)

    assert fonts_without(set(text)) == []
    assert empty_sections(summary) == []
    assert text.count(result["verdict"]) == 1, "the verdict is shown once, at the top"
    soup = BeautifulSoup(summary, "html.parser")
    assert soup.find("h1") is not None and soup.find("h1").get_text() == "07 Monitoring audit"  # type: ignore[union-attr]
    header = " ".join(soup.find("header").get_text(" ").split())  # type: ignore[union-attr]
    assert "Operator ana" in header and "Ticket INC-7" in header
    assert result["verdict"] in header
    # Every declared parameter is listed, the ones this run set marked so.
    rows = {
        tds[0].get_text(): (tds[1].get_text(), tds[2].get_text())
        for tr in soup.find_all("tr")
        if len(tds := tr.find_all("td")) == 4
    }
    assert rows["since"] == ("7d", "this run") and rows["scan"] == ("yes", "default")
    # Plain tables: no polars shape line, no dtype row, no quoted strings; no dataclass repr.
    assert "shape:" not in text
    cells = [td.get_text() for td in soup.find_all("td")]
    assert not [c for c in cells if c.startswith('"') and c.endswith('"')]
    assert not {"str", "f64", "i64"} & set(cells)
    assert not re.search(r"\b[A-Z][A-Za-z]+\([a-z_]+=", text), "a repr reached the report"

    # The glyph check has teeth: an unassigned code point has no glyph in any font.
    assert fonts_without({"\u0378"}) == ["U+0378 '\\u0378'"]

    # Drawn by Chromium, the charts are in view.
    rgb = screenshot(browser, record.summary_path, tmp_path / "report.png", tmp_path / "profile")
    assert rgb.shape[:2] == (5000, 640)
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
    bare_non_white = float((bare_rgb.min(axis=-1) < 0.95).mean())
    # The report's tables are ink too (about 4% of the page at half scale), the charts add as much.
    assert non_white > 1.5 * bare_non_white
    assert colours > 300 and colours > distinct_colours(bare_rgb)
