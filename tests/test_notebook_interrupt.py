"""A notebook run stopped by Ctrl-C or SIGTERM is archived as interrupted, its kernel stopped cleanly.

The kernel runs in a session of its own, so the signal reaches only ``potato-ops run``: the
kernel's cell must be interrupted (an operation in it then stops as on Ctrl-C) and given time to
end its work, the run archived, and the command exit 130 (Ctrl-C) or 143 (SIGTERM). Before, the
command exited with the status but archived nothing, and the kernel was killed 5 s after its
interrupt, whatever its cell was finishing.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from potato_ops.notebook_runs.archive import list_executions, verify_reports
from tests.test_throttle import until

ROOT = Path(__file__).parents[1]
FIXTURES = ROOT / "tests" / "fixtures" / "notebooks"


def _pid_written(held: Path) -> bool:
    return held.exists() and held.read_text().strip().isdigit()


def _gone(pid: int) -> bool:
    """True when the process has exited (a zombie counts: it runs nothing)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return True
    return state in ("Z", "X")


@pytest.mark.notebook
@pytest.mark.parametrize(
    ("signum", "exit_status", "said", "ename", "how"),
    [
        (signal.SIGINT, 130, "interrupted", "KeyboardInterrupt", "Ctrl-C (SIGINT)"),
        (signal.SIGTERM, 143, "terminated (SIGTERM)", "Terminated", "SIGTERM"),
    ],
)
def test_a_stopped_run_is_archived_interrupted_and_its_kernel_interrupted_then_gone(
    tmp_path: Path, signum: int, exit_status: int, said: str, ename: str, how: str
) -> None:
    reports = tmp_path / "reports"
    held = tmp_path / "held"
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "POTATO_OPS_NOTEBOOKS_DIR": str(FIXTURES),
        "POTATO_TEST_HELD_FILE": str(held),
        # Longer than Jupyter's 5 s before it kills a kernel that has not exited.
        "POTATO_TEST_STOP_WORK_S": "8",
    }
    command = [sys.executable, "-m", "potato_ops", "run", "01_outcomes", "-p", "outcome", "block"]
    command += ["--reports-dir", str(reports), "--timeout", "600"]
    child = subprocess.Popen(
        command, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        until(lambda: _pid_written(held) or child.poll() is not None, "the blocking cell", limit=6000)
        assert child.poll() is None, child.communicate()
        kernel_pid = int(held.read_text())
        child.send_signal(signum)
        out, err = child.communicate(timeout=120)
    finally:
        if child.poll() is None:
            child.kill()

    assert child.returncode == exit_status, err
    assert said in err
    # The kernel's cell saw the interrupt and had the time to end its work (it was not killed
    # first), and the kernel is gone.
    assert held.read_text() == f"{kernel_pid} interrupted"
    deadline = time.monotonic() + 30
    while not _gone(kernel_pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _gone(kernel_pid), f"kernel {kernel_pid} still runs"

    runs = list_executions(reports)
    assert [r.status for r in runs] == ["interrupted"]
    run_dir = reports / runs[0].dir
    assert f"archived in {run_dir}" in err  # the stderr line says where the record is
    result = json.loads((run_dir / "01_outcomes.result.json").read_text())
    # Cell 4 of the executed notebook (parameters, injected parameters, the markdown title first)
    # is the one that blocks.
    assert result["status"] == "interrupted"
    assert result["exit_code"] == exit_status
    assert result["error"] == {"cell_index": 3, "ename": ename, "evalue": f"stopped by {how}"}
    assert result["verdict"] == f"stopped by {how} in cell 4, before the notebook finished"
    assert "INTERRUPTED" in (run_dir / "01_outcomes.summary.html").read_text()
    executed = json.loads((run_dir / "01_outcomes.ipynb").read_text())
    assert executed["cells"][0]["metadata"]["tags"] == ["potato-ops-interrupted"]
    assert verify_reports(reports).ok
    assert out == ""
