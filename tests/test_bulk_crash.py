"""A bulk rebuild killed with SIGKILL at random moments, then resumed, ends as a clean run does.

Each trial corrupts some users, starts ``bulk_child.py`` (a real bulk rebuild of everyone) in a
child process, kills it at a random moment of its run, then resumes the operation it left
(or, killed before it wrote one, starts afresh). Afterwards every user's runs equal the pure
grouping of their marks, the whole database passes validation, and no run, backup or
history row is duplicated.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter, defaultdict
from datetime import date
from pathlib import Path

import pytest
from sqlalchemy import func, select

from potato_ops import BulkConfig, Storage, group_consecutive_dates
from potato_ops.db.schema import day_marks, ops_backups, ops_operation_items, ops_rebuild_history, runs
from potato_ops.demo.synth import CORRUPTIONS_POSTGRES, CORRUPTIONS_SQLITE, inject_corruption, seed
from potato_ops.domain.models import ViolationKind
from potato_ops.ops.bulk.api import bulk_rebuild_users
from tests.conftest import NOW

USERS = 250
DAYS = 120
TRIALS = 5
BATCH, WORKERS = 5, 2
CHILD = Path(__file__).with_name("bulk_child.py")
ROOT = Path(__file__).parents[1]


def start_child(url: str) -> tuple[subprocess.Popen[str], float]:
    """Start the child; return it and the instant it said ready (connected, about to run)."""
    child = subprocess.Popen(
        [sys.executable, str(CHILD), url, NOW.isoformat(), str(BATCH), str(WORKERS)],
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert child.stdout is not None
    assert child.stdout.readline().strip() == "ready"
    return child, time.monotonic()


def settled_status(storage: Storage, operation_id: str) -> str:
    """Return the operation's status once the killed runner's session is gone."""
    deadline = time.monotonic() + 10
    while True:
        status = storage.get_rebuild_progress(operation_id).status
        if status != "running" or time.monotonic() > deadline:
            return status
        time.sleep(0.05)  # PostgreSQL ends the dead client's session (and lock) in a moment


def check_clean(storage: Storage, user_ids: list[str], operation_id: str) -> None:
    """Every user's runs are the grouping of their marks; nothing is duplicated."""
    with storage.engine.connect() as conn:
        marks: dict[str, list[date]] = defaultdict(list)
        for uid, d in conn.execute(select(day_marks.c.user_id, day_marks.c.date).where(day_marks.c.value)):
            marks[uid].append(d)
        stored: dict[str, list[tuple[date, date, int]]] = defaultdict(list)
        for uid, s, e, n in conn.execute(
            select(runs.c.user_id, runs.c.start_date, runs.c.end_date, runs.c.day_count)
        ):
            stored[uid].append((s, e, n))
        h = ops_rebuild_history
        history = Counter(
            conn.execute(
                select(h.c.user_id).where(h.c.operation_id == operation_id, h.c.success.is_(True))
            ).scalars()
        )
        backups = Counter(
            conn.execute(
                select(ops_backups.c.user_id).where(ops_backups.c.operation_id == operation_id)
            ).scalars()
        )
        i = ops_operation_items
        statuses: dict[str, int] = dict(
            conn.execute(
                select(i.c.status, func.count()).where(i.c.operation_id == operation_id).group_by(i.c.status)
            ).all()
        )
    for uid in user_ids:
        expected = [(s, e, (e - s).days + 1) for s, e in group_consecutive_dates(marks[uid])]
        assert sorted(stored[uid]) == expected, uid
    assert set(stored) <= set(user_ids)
    assert storage.validate_invariants().violations == []
    assert statuses == {"completed": len(user_ids)}
    assert set(history) == set(user_ids) and max(history.values()) == 1  # one success each
    assert not backups or max(backups.values()) == 1  # a user is backed up once per operation


@pytest.mark.slow
def test_killed_bulk_runs_resume_to_the_clean_result(storage: Storage, db_url: str) -> None:
    rng = random.Random(2024)
    seeded = seed(storage.engine, users_count=USERS, days=DAYS, now=NOW)
    ids = list(seeded.user_ids)
    kinds = CORRUPTIONS_POSTGRES if storage.dialect == "postgresql" else CORRUPTIONS_SQLITE
    kinds = tuple(k for k in kinds if k != ViolationKind.ORPHAN)  # a rebuild cannot remove runs of no user

    # A run that is not killed tells how long a run lasts, so the kills land inside one.
    inject_corruption(storage.engine, ids, USERS // 3, kinds, rng, NOW)
    child, ready = start_child(db_url)
    assert child.stdout is not None
    done = child.stdout.readline().split()
    duration = time.monotonic() - ready
    assert child.wait() == 0 and done[0] == "done"
    check_clean(storage, ids, done[1])

    outcomes: list[tuple[str, int]] = []  # (status when found, users processed by then)
    for trial in range(TRIALS):
        inject_corruption(storage.engine, ids, USERS // 3, kinds, rng, NOW)
        known = {p.operation_id for p in storage.list_operations(limit=100)}
        child, ready = start_child(db_url)
        # Spread the kills over the run: early (creating the ledger) to late (last batches).
        delay = duration * (trial + rng.random()) / TRIALS
        time.sleep(max(0.0, ready + delay - time.monotonic()))
        child.send_signal(signal.SIGKILL)
        child.wait()

        left = [p for p in storage.list_operations(limit=100) if p.operation_id not in known]
        if not left:  # killed before its operation was written: start afresh
            outcomes.append(("not written", 0))
            config = BulkConfig(
                batch_size=BATCH, max_workers=WORKERS, dry_run=False, ignore_feature_flag=True
            )
            operation_id = bulk_rebuild_users(storage.database, None, config).operation_id
        else:
            [op] = left
            status = settled_status(storage, op.operation_id)
            progress = storage.get_rebuild_progress(op.operation_id)
            outcomes.append((status, progress.processed_users))
            assert status in ("interrupted", "completed")
            result = storage.resume_bulk_rebuild(op.operation_id)
            assert (result.status, result.completed_users, result.failed_users) == ("completed", USERS, 0)
            operation_id = op.operation_id
        check_clean(storage, ids, operation_id)

    mid_run = [o for o in outcomes if o[0] == "interrupted" and 0 < o[1] < USERS]
    assert mid_run, f"no kill landed in the middle of a run: {outcomes}"
