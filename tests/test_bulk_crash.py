"""A bulk rebuild killed with SIGKILL in the middle of a batch, then resumed, ends as a clean run does.

Each trial corrupts some users, starts ``bulk_child.py`` (a real bulk rebuild of everyone) in a
child process that kills itself inside its Nth batch (the batch's users rebuilt and recorded,
not committed; N differs by trial, from the first batch to the last), then resumes the
operation it left. No timer decides where the kill lands. Afterwards every user's runs equal
the pure grouping of their marks, the whole database passes validation, and no run, backup or
history row is duplicated.
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
import time
from collections import Counter, defaultdict
from datetime import date
from pathlib import Path

import pytest
from sqlalchemy import func, select

from potato_ops import Storage, group_consecutive_dates
from potato_ops.db.schema import day_marks, ops_backups, ops_operation_items, ops_rebuild_history, runs
from potato_ops.demo.synth import CORRUPTIONS_POSTGRES, CORRUPTIONS_SQLITE, inject_corruption, seed
from potato_ops.domain.models import ViolationKind
from tests.conftest import NOW, with_citus

USERS = 250
DAYS = 120
BATCH, WORKERS = 5, 2
KILL_AT_BATCHES = (1, 9, 26, 50)  # of 50 batches: the first, early, middle, the last
CHILD = Path(__file__).with_name("bulk_child.py")
ROOT = Path(__file__).parents[1]


def run_child(url: str, kill_at_batch: int) -> subprocess.CompletedProcess[str]:
    """Run the child until it kills itself inside its kill_at_batch-th batch."""
    return subprocess.run(
        [sys.executable, str(CHILD), url, NOW.isoformat(), str(BATCH), str(WORKERS)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT), "POTATO_TEST_KILL_AT_BATCH": str(kill_at_batch)},
        timeout=300,
        check=False,
    )


def settled_status(storage: Storage, operation_id: str) -> str:
    """Return the operation's status once the server has ended the dead child's session.

    PostgreSQL notices the closed socket and drops the session (and its lock) in a moment;
    this waits for that event (a condition, with a generous bound), it races no timer.
    """
    deadline = time.monotonic() + 30
    while (status := storage.get_rebuild_progress(operation_id).status) == "running":
        if time.monotonic() > deadline:
            break
        time.sleep(0.05)
    return status


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
@with_citus
def test_killed_bulk_runs_resume_to_the_clean_result(storage: Storage, db_url: str) -> None:
    rng = random.Random(2024)
    seeded = seed(storage.engine, users_count=USERS, days=DAYS, now=NOW)
    ids = list(seeded.user_ids)
    kinds = CORRUPTIONS_POSTGRES if storage.dialect == "postgresql" else CORRUPTIONS_SQLITE
    kinds = tuple(k for k in kinds if k != ViolationKind.ORPHAN)  # a rebuild cannot remove runs of no user

    for kill_at in KILL_AT_BATCHES:
        inject_corruption(storage.engine, ids, USERS // 3, kinds, rng, NOW)
        known = {p.operation_id for p in storage.list_operations(limit=100)}
        child = run_child(db_url, kill_at)
        assert child.returncode == -9, child.stderr[-2000:]

        [op] = [p for p in storage.list_operations(limit=100) if p.operation_id not in known]
        assert settled_status(storage, op.operation_id) == "interrupted"
        progress = storage.get_rebuild_progress(op.operation_id)
        # Killed inside its Nth batch: at most N-1 batches (and never the Nth) committed, and
        # with two threads at least N-2 did.
        assert BATCH * max(kill_at - 2, 0) <= progress.processed_users < BATCH * kill_at
        result = storage.resume_bulk_rebuild(op.operation_id)
        assert (result.status, result.completed_users, result.failed_users) == ("completed", USERS, 0)
        check_clean(storage, ids, op.operation_id)
