"""A real bulk rebuild of every user, run as a child process that test_bulk_crash.py kills.

Usage: python tests/bulk_child.py URL NOW_ISO BATCH_SIZE WORKERS. Prints "ready" once
connected, then "done OPID" if it lives to the end.
"""

from __future__ import annotations

import sys
from datetime import datetime

from potato_ops import BulkConfig, Storage
from potato_ops.domain.dates import fixed_clock
from potato_ops.ops.bulk.api import bulk_rebuild_users


def main(argv: list[str]) -> int:
    """Run the bulk rebuild the arguments describe."""
    url, now, batch_size, workers = argv[1], datetime.fromisoformat(argv[2]), int(argv[3]), int(argv[4])
    storage = Storage.connect(url, clock=fixed_clock(now))
    storage.get_feature_flag()  # connect before saying ready
    print("ready", flush=True)
    config = BulkConfig(batch_size=batch_size, max_workers=workers, dry_run=False, ignore_feature_flag=True)
    result = bulk_rebuild_users(storage.database, None, config)
    print("done", result.operation_id, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
