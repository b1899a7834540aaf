"""SIGTERM stops a bulk command as Ctrl-C does: its batch finished, the operation interrupted, resumable.

A scheduler or service manager stops a job with SIGTERM (then SIGKILL after a grace period); the
command must not die mid-operation with its ledger saying it still runs.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from typer.testing import CliRunner

from potato_ops import Storage
from potato_ops.cli import app
from potato_ops.demo.synth import seed
from tests.conftest import NOW
from tests.test_throttle import until

ROOT = Path(__file__).parents[1]
# The real command line, held at its second look at the throttle gate (after its first batch)
# until a file exists: the test's known point to send SIGTERM.
HELD_CLI = (
    "import sys; from pathlib import Path; from tests.bulk_child import _install_hold_hook; "
    "_install_hold_hook(2, Path(sys.argv.pop(1))); from potato_ops.cli import main; "
    "sys.argv[0] = 'potato-ops'; main()"
)


def test_sigterm_interrupts_the_bulk_after_its_batch_and_resume_finishes_it(
    storage: Storage, db_url: str, tmp_path: Path
) -> None:
    storage.set_feature_flag("ff.potato.runs_v2", True)
    seed(storage.engine, users_count=40, days=40, corrupt=0.5, now=NOW)
    go_on = tmp_path / "go-on"
    command = [sys.executable, "-c", HELD_CLI, str(go_on), "bulk-rebuild", "--all", "--execute", "-q"]
    command += ["--batch-size", "5", "--workers", "1", "--database-url", db_url]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    child = subprocess.Popen(command, cwd=ROOT, env=env, stderr=subprocess.PIPE, text=True)
    try:
        until(lambda: bool(storage.list_operations(limit=1)), "the command's operation")
        operation_id = storage.list_operations(limit=1)[0].operation_id
        until(lambda: storage.get_rebuild_progress(operation_id).processed_users == 5, "its first batch")
        child.send_signal(signal.SIGTERM)
        go_on.touch()  # the worker, let go, finds the operation stopping
        _, err = child.communicate(timeout=120)
    finally:
        if child.poll() is None:
            child.kill()
    assert child.returncode == 143, err
    assert "terminated (SIGTERM)" in err
    progress = storage.get_rebuild_progress(operation_id)
    assert (progress.status, progress.processed_users) == ("interrupted", 5)
    got = CliRunner().invoke(app, ["resume", operation_id, "-q", "--database-url", db_url])
    assert got.exit_code in (0, 3), got.output
    progress = storage.get_rebuild_progress(operation_id)
    assert (progress.status, progress.processed_users) == ("completed", 40)
