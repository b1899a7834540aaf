"""The runbook as an on-call engineer meets it: JupyterLab in headless Chromium, driven by selenium.

The test makes an incident folder as ``potato-ops lab`` does, starts JupyterLab on a free port
(its settings, data and runtime folders temporary), and opens ``01_single_user_recovery.py``,
which a double click opens as a notebook (jupytext). It types a damaged user into the
parameters cell, runs Run All (``runmenu:run-all``) and reads the green verdict; then, in the
same kernel, clears the user and runs Run All again: nothing is written and no output shows
the first user. Chromium and Debian's chromedriver (``/usr/bin/chromedriver``) must be
installed: without them the test is skipped, and under CI=true it fails.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from potato_ops.notebook_runs.lab import LabFolder, prepare_lab
from tests.kernel_session import database_name
from tests.test_notebooks import SeededDatabase, seed_database
from tests.test_stale_kernel import records, written

pytestmark = [pytest.mark.notebook, pytest.mark.slow]

CHROMEDRIVER = "/usr/bin/chromedriver"
BROWSERS = ("chromium", "chromium-browser")
SERVER_START_S = 90
RUN_ALL_S = 120
T = TypeVar("T")


def _missing(message: str) -> None:
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(message + " - required under CI=true")
    pytest.skip(message)


def _browser() -> tuple[str, str]:
    browser = next((found for name in BROWSERS if (found := shutil.which(name))), None)
    driver = CHROMEDRIVER if os.access(CHROMEDRIVER, os.X_OK) else shutil.which("chromedriver")
    if browser is None or driver is None:
        _missing("Chromium or chromedriver missing (apt-get install chromium chromium-driver): NOT tested")
        raise AssertionError("unreachable")
    return browser, driver


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _until(what: str, seconds: float, probe: Callable[[], T | None]) -> T:
    """Return the first truthy answer of probe, polling; fail naming what never happened."""
    deadline = time.monotonic() + seconds
    while True:
        found = probe()
        if found:
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not happen within {seconds} s")
        time.sleep(0.25)


@pytest.fixture
def seeded(db_url: str) -> Iterator[SeededDatabase]:
    found = seed_database(db_url)
    yield found
    found.storage.close()


@pytest.fixture
def lab(
    seeded: SeededDatabase, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[LabFolder, str]]:
    """Yield the incident folder and the URL of a JupyterLab serving it (token included)."""
    monkeypatch.setenv("POTATO_DATABASE_URL", seeded.url)
    folder = prepare_lab(ticket="INC-24", operator="night-shift", folder=tmp_path / "INC-24")
    port, token = _free_port(), secrets.token_hex(16)
    jupyter = tmp_path / "jupyter"
    env = folder.environment()
    env.update(
        JUPYTER_CONFIG_DIR=str(jupyter / "config"),
        JUPYTER_DATA_DIR=str(jupyter / "data"),
        JUPYTER_RUNTIME_DIR=str(jupyter / "runtime"),
        JUPYTER_PLATFORM_DIRS="1",
    )
    command = [
        *(sys.executable, "-m", "jupyterlab", "--no-browser", "--expose-app-in-browser"),
        *(f"--ServerApp.port={port}", "--ServerApp.ip=127.0.0.1", f"--IdentityProvider.token={token}"),
        *(f"--ServerApp.root_dir={folder.notebooks}", "--ServerApp.port_retries=0"),
        "--LabApp.news_url=",
        "--allow-root",  # CI runs as root
        "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
    ]
    log = (tmp_path / "jupyterlab.log").open("w")
    server = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=folder.notebooks)
    base = f"http://127.0.0.1:{port}"

    def answers() -> bool:
        if server.poll() is not None:
            raise AssertionError(f"JupyterLab exited: {(tmp_path / 'jupyterlab.log').read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(f"{base}/api/status?token={token}", timeout=2) as reply:
                return bool(reply.status == 200)
        except OSError:
            return False

    try:
        _until("JupyterLab answering", SERVER_START_S, answers)
        yield folder, f"{base}/lab/tree/01_single_user_recovery.py?token={token}"
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()


@pytest.fixture
def browser() -> Iterator[Any]:
    chromium, chromedriver = _browser()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,1000"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(chromedriver), options=options)
    try:
        yield driver
    finally:
        driver.quit()


# What the page is asked, through the application object JupyterLab exposes.
_NOTEBOOK = "const panel = window.jupyterapp && window.jupyterapp.shell.currentWidget;"
_READY = (
    _NOTEBOOK + "if (!panel || !panel.content || !panel.content.model || !panel.sessionContext) return null;"
    "const kernel = panel.sessionContext.session && panel.sessionContext.session.kernel;"
    "return kernel && kernel.status === 'idle' && panel.context.isReady ? panel.title.label : null;"
)
_SET_PARAMETERS = (
    _NOTEBOOK + "const cell = panel.content.model.sharedModel.cells.find("
    "c => c.cell_type === 'code' && c.getSource().includes('user_email: str'));"
    "let text = cell.getSource();"
    "for (const [name, value] of Object.entries(arguments[0])) {"
    "  text = text.replace(new RegExp('^(' + name + ': \\\\w+ = ).*?(  #)', 'm'), '$1' + value + '$2');"
    "}"
    "cell.setSource(text); return text;"
)
_RUN_ALL = "window.jupyterapp.commands.execute('runmenu:run-all'); return true;"
# Shift+Enter on past the failed check: from the cell after it, run it and everything below.
_RUN_BELOW_THE_CHECK = (
    _NOTEBOOK + "panel.content.activeCellIndex = panel.content.widgets.findIndex("
    "w => w.model.type === 'code' && w.model.sharedModel.getSource().includes('open_session(params'));"
    "window.jupyterapp.commands.execute('notebook:run-all-below'); return true;"
)
_STATE = (
    _NOTEBOOK + "const kernel = panel.sessionContext.session.kernel;"
    "const cells = panel.content.model.sharedModel.cells.filter(c => c.cell_type === 'code');"
    "return JSON.stringify({kernel: kernel.status, cells: cells.map(c => ({"
    "  count: c.execution_count, source: c.getSource(), outputs: c.outputs}))});"
)


def _state(driver: Any) -> dict[str, Any]:
    found: dict[str, Any] = json.loads(driver.execute_script(_STATE))
    return found


def _run_all(driver: Any, parameters: dict[str, str]) -> list[dict[str, Any]]:
    """Set the parameters, Run All, and return the code cells once the kernel is done."""
    driver.execute_script(_SET_PARAMETERS, parameters)
    return _run(driver, _RUN_ALL, watched=1)


def _run(driver: Any, command: str, *, watched: int) -> list[dict[str, Any]]:
    """Run a command; return the code cells once the cell ``watched`` ran and the kernel is done."""
    before = _state(driver)["cells"][watched]["count"]
    driver.execute_script(command)

    def finished() -> list[dict[str, Any]] | None:
        now = _state(driver)
        count = now["cells"][watched]["count"]
        started = count is not None and count != before
        return now["cells"] if started and now["kernel"] == "idle" and _settled(driver, now) else None

    return _until("the cells finishing", RUN_ALL_S, finished)


def _settled(driver: Any, now: dict[str, Any]) -> bool:
    time.sleep(0.5)  # the kernel goes idle between cells: idle twice, and no count moved
    again = _state(driver)
    return bool(again["kernel"] == "idle" and again["cells"] == now["cells"])


def _shown(cells: list[dict[str, Any]]) -> str:
    return json.dumps([c["outputs"] for c in cells])


def test_run_all_in_jupyterlab_repairs_the_user_then_a_cleared_user_writes_and_shows_nothing(
    seeded: SeededDatabase, lab: tuple[LabFolder, str], browser: Any
) -> None:
    folder, url = lab
    user = seeded.corrupted_user()
    browser.get(url)
    title = _until(
        "the notebook open with its kernel idle", SERVER_START_S, lambda: browser.execute_script(_READY)
    )
    assert title == "01_single_user_recovery.py"
    assert _state(browser)["cells"][1]["source"].startswith("from potato_ops.runbook.params import")

    live = {
        "user_email": json.dumps(user.email),
        "dry_run": "False",
        "confirm": json.dumps(database_name(seeded.url)),
    }
    cells = _run_all(browser, live)
    shown = _shown(cells)
    assert f"rebuilt {user.email}" in shown
    assert "\\u2714 rebuilt" in shown or "✔ rebuilt" in shown
    assert "Error" not in json.dumps(
        [o for c in cells for o in c["outputs"] if o.get("output_type") == "error"]
    )
    [row] = records(seeded.storage.engine)
    assert (row["status"], row["operator"]) == ("ok", "night-shift")
    assert json.loads(row["parameters"])["ticket"] == "INC-24"
    assert (folder.records / row["run_id"] / "01_single_user_recovery.summary.html").is_file()
    before = written(seeded.storage.engine)

    cells = _run_all(browser, {"user_email": '""'})
    assert "RunbookParameterError" in _shown(cells[1:2])
    after_check = _shown(cells[2:])
    assert str(user.email) not in after_check and user.id not in after_check
    assert "rebuilt" not in after_check
    assert written(seeded.storage.engine) == before

    cells = _run(browser, _RUN_BELOW_THE_CHECK, watched=2)
    assert "StaleStateError" in _shown(cells[2:3])
    after_check = _shown(cells[2:])
    assert str(user.email) not in after_check and user.id not in after_check
    assert written(seeded.storage.engine) == before
