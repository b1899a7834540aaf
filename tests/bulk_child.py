"""A bulk rebuild run as a child process that the crash and worker tests kill or run side by side.

Usage:
  python tests/bulk_child.py URL NOW_ISO BATCH_SIZE WORKERS         run a bulk rebuild of everyone
  python tests/bulk_child.py worker URL NOW_ISO OPID WORKERS        join operation OPID as a worker

Prints "ready" once connected, then "done OPID STATUS" if it lives to the end. With
POTATO_TEST_KILL_AT_BATCH=N in the environment the process kills itself with SIGKILL inside its
Nth batch: after the batch's users were rebuilt and their ledger rows written, before commit.
With POTATO_TEST_HOLD_AT_GATE=N and POTATO_TEST_HOLD_UNTIL=PATH the runner stops at its Nth look
at the throttle gate (between batches, outside any transaction) until PATH exists, so a test can
act on the operation at a known point.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from potato_ops import BulkConfig, Storage
from potato_ops.db import claims
from potato_ops.domain.dates import fixed_clock
from potato_ops.ops.bulk import api
from potato_ops.ops.bulk.throttle import Gate

KILL_AT_BATCH = "POTATO_TEST_KILL_AT_BATCH"
HOLD_AT_GATE = "POTATO_TEST_HOLD_AT_GATE"
HOLD_UNTIL = "POTATO_TEST_HOLD_UNTIL"


def _install_kill_hook(at_batch: int) -> None:
    """Make the at_batch-th fence (inside a batch's own transaction, before commit) kill us."""
    real_fence = claims.fence
    calls = 0

    def fence(*args: Any, **kwargs: Any) -> None:
        nonlocal calls
        calls += 1
        if calls == at_batch:
            os.kill(os.getpid(), signal.SIGKILL)
        real_fence(*args, **kwargs)

    claims.fence = fence


def _install_hold_hook(at_look: int, until: Path) -> None:
    """Make the at_look-th look at the gate wait until the file ``until`` exists (at most 120 s)."""
    real_wait = Gate.wait_until_open
    looks = 0

    def wait_until_open(self: Gate, *args: Any, **kwargs: Any) -> bool:
        nonlocal looks
        looks += 1
        if looks == at_look:
            deadline = time.monotonic() + 120
            while not until.exists() and time.monotonic() < deadline:
                time.sleep(0.02)
        return real_wait(self, *args, **kwargs)

    Gate.wait_until_open = wait_until_open  # type: ignore[method-assign]


def main(argv: list[str]) -> int:
    """Run the bulk rebuild, or the worker, the arguments describe."""
    if os.environ.get(KILL_AT_BATCH):
        _install_kill_hook(int(os.environ[KILL_AT_BATCH]))
    if os.environ.get(HOLD_AT_GATE):
        _install_hold_hook(int(os.environ[HOLD_AT_GATE]), Path(os.environ[HOLD_UNTIL]))
    worker = argv[1] == "worker"
    args = argv[2:] if worker else argv[1:]
    url, now = args[0], datetime.fromisoformat(args[1])
    storage = Storage.connect(url, clock=fixed_clock(now))
    storage.get_feature_flag()  # connect before saying ready
    print("ready", flush=True)
    if worker:
        result = api.join_bulk_operation(storage.database, args[2], max_workers=int(args[3]))
    else:
        config = BulkConfig(
            batch_size=int(args[2]), max_workers=int(args[3]), dry_run=False, ignore_feature_flag=True
        )
        result = api.bulk_rebuild_users(storage.database, None, config)
    print("done", result.operation_id, result.status, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
