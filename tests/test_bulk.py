"""Bulk rebuilds on both databases: repairs, dry runs, the ledger, cancel, resume, bad input."""

from __future__ import annotations

import os
import random
import re
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from datetime import date, timedelta
from itertools import pairwise
from pathlib import Path
from typing import Any

import pytest
import typer
from sqlalchemy import select, text, update
from typer.testing import CliRunner

from potato_ops import (
    BulkConfig,
    ConfigError,
    FeatureFlagError,
    InvalidDateRangeError,
    OperationNotFoundError,
    OperationRunningError,
    SchemaError,
    Storage,
    group_consecutive_dates,
)
from potato_ops.cli.bulk import register
from potato_ops.db import claims, ledger
from potato_ops.db.engine import write_transaction
from potato_ops.db.schema import (
    RUNS_V2_FLAG,
    ops_backups,
    ops_operation_items,
    ops_operations,
    ops_rebuild_history,
    runs,
)
from potato_ops.demo.synth import seed
from potato_ops.domain import operations
from potato_ops.domain.models import ViolationKind
from potato_ops.domain.operations import Owner
from potato_ops.ops.bulk import ownership
from potato_ops.ops.bulk.results import Progress, UserError
from potato_ops.runbook.progress import ProgressBar
from tests.conftest import CITUS, NOW, MutableClock, add_runs, add_user, snapshot, spans

REAL = BulkConfig(batch_size=4, max_workers=3, dry_run=False)


def marked_spans(storage: Storage, user_id: str) -> list[tuple[str, str]]:
    """Return the runs the user's marks give, as ISO pairs."""
    marked = [m.date for m in storage.get_user_day_marks(user_id) if m.value]
    return [(s.isoformat(), e.isoformat()) for s, e in group_consecutive_dates(marked)]


def history_rows(storage: Storage, operation_id: str) -> list[tuple[str, bool]]:
    with storage.engine.connect() as conn:
        h = ops_rebuild_history
        rows = conn.execute(
            select(h.c.user_id, h.c.success).where(h.c.operation_id == operation_id).order_by(h.c.user_id)
        ).all()
    return [(u, bool(s)) for u, s in rows]


def items(storage: Storage, operation_id: str) -> dict[str, tuple[str, int]]:
    """Return user id -> (status, attempts) of the operation's ledger items."""
    i = ops_operation_items
    with storage.engine.connect() as conn:
        rows = conn.execute(
            select(i.c.user_id, i.c.status, i.c.attempts).where(i.c.operation_id == operation_id)
        )
        return {u: (s, int(a)) for u, s, a in rows}


def dead_pid() -> int:
    """Return the pid of a process that has exited (and been reaped)."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


@pytest.fixture
def flag_on(storage: Storage) -> Storage:
    storage.set_feature_flag(RUNS_V2_FLAG, True)
    return storage


@pytest.fixture
def refuse_bad_users(storage: Storage) -> Iterator[None]:
    """A trigger refusing to store runs of users whose id starts with 'bad' (a database error)."""
    if storage.dialect == "postgresql":
        statements = [
            "CREATE OR REPLACE FUNCTION refuse_bad() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
            "IF NEW.user_id LIKE 'bad%' THEN RAISE EXCEPTION 'boom: runs of % refused', NEW.user_id; "
            "END IF; RETURN NEW; END $$",
            "CREATE TRIGGER refuse_bad BEFORE INSERT ON runs FOR EACH ROW EXECUTE FUNCTION refuse_bad()",
        ]
        undo = ["DROP TRIGGER IF EXISTS refuse_bad ON runs", "DROP FUNCTION IF EXISTS refuse_bad()"]
    else:
        statements = [
            "CREATE TRIGGER refuse_bad BEFORE INSERT ON runs WHEN NEW.user_id LIKE 'bad%' "
            "BEGIN SELECT RAISE(ABORT, 'boom: runs refused'); END"
        ]
        undo = ["DROP TRIGGER IF EXISTS refuse_bad"]
    with storage.engine.begin() as conn:
        for s in statements:
            conn.execute(text(s))
    try:
        yield
    finally:
        with storage.engine.begin() as conn:
            for s in undo:
                conn.execute(text(s))


def drop_refusal(storage: Storage) -> None:
    with storage.engine.begin() as conn:
        if storage.dialect == "postgresql":
            conn.execute(text("DROP TRIGGER IF EXISTS refuse_bad ON runs"))
        else:
            conn.execute(text("DROP TRIGGER IF EXISTS refuse_bad"))


# ---------------------------------------------------------------------------- repairs


def test_bulk_repairs_exactly_the_corrupted_users(flag_on: Storage) -> None:
    storage = flag_on
    seeded = seed(storage.engine, users_count=40, days=90, corrupt=0.3, now=NOW)
    broken = {u for u, kind in seeded.corrupted.items() if kind != ViolationKind.ORPHAN}
    ghosts = {u for u, kind in seeded.corrupted.items() if kind == ViolationKind.ORPHAN}
    assert broken and ghosts

    result = storage.bulk_rebuild_users(seeded.user_ids, REAL)

    assert (result.status, result.total_users, result.completed_users, result.failed_users) == (
        "completed",
        40,
        40,
        0,
    )
    assert {c.user_id for c in result.changes} == broken
    assert result.users_changed == len(broken)
    for uid in seeded.user_ids:
        assert spans(storage, uid) == marked_spans(storage, uid), uid
    # Orphan runs belong to no user, so no user's rebuild can touch them: all that is left.
    left = storage.validate_invariants()
    assert {v.user_id for v in left.violations} == ghosts

    # The ledger says the same as the result, from any process.
    progress = storage.get_rebuild_progress(result.operation_id)
    assert (
        progress.status,
        progress.total_users,
        progress.processed_users,
        progress.completed_users,
        progress.failed_users,
        progress.users_changed,
        progress.dry_run,
    ) == ("completed", 40, 40, 40, 0, len(broken), False)
    assert set(items(storage, result.operation_id).values()) == {("completed", 1)}
    # One history row per user; one backup per changed user, tagged with the operation.
    assert history_rows(storage, result.operation_id) == [(u, True) for u in sorted(seeded.user_ids)]
    with storage.engine.connect() as conn:
        backed_up = conn.execute(
            select(ops_backups.c.user_id).where(ops_backups.c.operation_id == result.operation_id)
        ).scalars()
        assert sorted(backed_up) == sorted(broken)
    assert sum(c.runs_to_delete for c in result.changes) == result.runs_deleted


def test_dry_run_writes_only_its_ledger_rows_and_tells_what_would_change(flag_on: Storage) -> None:
    storage = flag_on
    seeded = seed(storage.engine, users_count=30, days=90, corrupt=0.3, now=NOW)
    before = snapshot(storage)

    dry = storage.bulk_rebuild_users(seeded.user_ids, BulkConfig(batch_size=4, max_workers=3))

    after = snapshot(storage)
    for table in before:
        if table not in (
            "ops_operations",
            "ops_operation_items",
            "ops_operation_tallies",
            "ops_operation_batches",
        ):
            assert after[table] == before[table], table
    assert len(after["ops_operations"]) == 1
    assert len(after["ops_operation_items"]) == 30
    assert dry.dry_run and dry.status == "completed" and dry.completed_users == 30
    would = {(c.user_id, c.runs_to_delete, c.runs_to_create, c.active_flags_changed) for c in dry.changes}
    assert {c[0] for c in would} == {u for u, k in seeded.corrupted.items() if k != ViolationKind.ORPHAN}

    real = storage.bulk_rebuild_users(seeded.user_ids, REAL)
    did = {(c.user_id, c.runs_to_delete, c.runs_to_create, c.active_flags_changed) for c in real.changes}
    assert did == would
    assert (real.runs_deleted, real.runs_created) == (dry.runs_deleted, dry.runs_created)


def test_partial_bulk_leaves_runs_outside_the_window_alone(flag_on: Storage) -> None:
    storage = flag_on
    add_user(storage, "u1", ["2024-01-01", "2024-01-02", "2024-02-01", "2024-02-02", "2024-02-03"])
    add_runs(storage, "u1", [("2024-01-01", "2024-01-02"), ("2024-02-01", "2024-02-02")])  # 2nd is short
    outside = storage.get_user_runs("u1")[0]

    result = storage.bulk_rebuild_users(
        ["u1"], BulkConfig(dry_run=False, from_date="2024-01-25", to_date=date(2024, 2, 5))
    )

    assert result.users_changed == 1
    assert spans(storage, "u1") == [("2024-01-01", "2024-01-02"), ("2024-02-01", "2024-02-03")]
    assert storage.get_user_runs("u1")[0] == outside


# ---------------------------------------------------------------------------- failures


def test_one_bad_user_fails_alone_and_can_be_retried(flag_on: Storage, refuse_bad_users: None) -> None:
    storage = flag_on
    for uid in ("a", "b", "bad-1", "c"):
        add_user(storage, uid, ["2024-03-01", "2024-03-02", "2024-03-05"])  # no runs: all to create

    result = storage.bulk_rebuild_users(["a", "b", "bad-1", "c"], BulkConfig(batch_size=10, dry_run=False))

    assert (result.status, result.completed_users, result.failed_users) == ("completed", 3, 1)
    [error] = result.errors
    assert error.user_id == "bad-1"
    assert "boom" in error.message and error.error_class  # the database's error, by class
    for uid in ("a", "b", "c"):
        assert spans(storage, uid) == [("2024-03-01", "2024-03-02"), ("2024-03-05", "2024-03-05")]
    assert spans(storage, "bad-1") == []
    # Tried in the batch, then alone: the neighbours committed alone, the bad one failed alone.
    assert items(storage, result.operation_id) == {
        "a": ("completed", 2),
        "b": ("completed", 2),
        "bad-1": ("failed", 2),
        "c": ("completed", 2),
    }
    assert ("bad-1", False) in history_rows(storage, result.operation_id)
    assert storage.resume_bulk_rebuild(result.operation_id).failed_users == 1  # completed: no-op

    drop_refusal(storage)
    retried = storage.resume_bulk_rebuild(result.operation_id, failed_only=True)

    assert (retried.status, retried.completed_users, retried.failed_users, retried.errors) == (
        "completed",
        4,
        0,
        [],
    )
    assert spans(storage, "bad-1") == [("2024-03-01", "2024-03-02"), ("2024-03-05", "2024-03-05")]
    assert items(storage, result.operation_id)["bad-1"] == ("completed", 3)
    assert history_rows(storage, result.operation_id).count(("a", True)) == 1


def test_failure_rate_aborts_the_run(flag_on: Storage, refuse_bad_users: None) -> None:
    storage = flag_on
    good = seed(storage.engine, users_count=120, days=30, now=NOW, with_runs=False, id_prefix="ok-")
    bad = seed(
        storage.engine, users_count=8, days=30, now=NOW, with_runs=False, id_prefix="bad-", seed_value=1
    )
    order = good.user_ids[:]
    for i, uid in enumerate(bad.user_ids):
        order.insert(i * 11, uid)

    result = storage.bulk_rebuild_users(
        order, BulkConfig(batch_size=10, max_workers=1, dry_run=False, max_failure_rate=0.05)
    )

    assert result.status == "failed"
    assert result.error is not None and "aborted" in result.error
    assert result.pending_users > 0 and result.failed_users == 8
    assert result.completed_users + result.failed_users == 100  # judged first after 100 users

    drop_refusal(storage)
    resumed = storage.resume_bulk_rebuild(result.operation_id)
    assert (resumed.status, resumed.completed_users, resumed.failed_users) == ("completed", 128, 0)


def test_unknown_user_ids_fail_in_the_ledger_and_the_rest_go_on(flag_on: Storage) -> None:
    add_user(flag_on, "u1", ["2024-03-01"])
    result = flag_on.bulk_rebuild_users(["u1", "ghost", "u1"], BulkConfig(dry_run=False))
    assert (result.total_users, result.completed_users, result.failed_users) == (2, 1, 1)
    assert result.errors == [UserError("ghost", "UserNotFoundError", "no user with this id")]
    assert spans(flag_on, "u1") == [("2024-03-01", "2024-03-01")]


# ---------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("kwargs", "error", "words"),
    [
        ({"batch_size": 0}, ConfigError, "batch_size"),
        ({"max_workers": 0}, ConfigError, "max_workers"),
        ({"max_workers": 99}, ConfigError, "max_workers"),
        ({"max_failure_rate": 1.5}, ConfigError, "max_failure_rate"),
        ({"from_date": "2024-03-02", "to_date": "2024-03-01"}, InvalidDateRangeError, "after"),
        ({"from_date": "yesterday"}, InvalidDateRangeError, "not a date"),
    ],
    ids=["batch-size-0", "no-workers", "too-many-workers", "rate-above-1", "from-after-to", "bad-date"],
)
def test_bad_config_is_refused_when_made(
    kwargs: dict[str, object], error: type[Exception], words: str
) -> None:
    with pytest.raises(error, match=words):
        BulkConfig(**kwargs)  # type: ignore[arg-type]


def test_bad_input_raises_before_anything_is_written(storage: Storage) -> None:
    add_user(storage, "u1", ["2024-03-01"])
    with pytest.raises(FeatureFlagError, match=r"ff\.potato\.runs_v2"):
        storage.bulk_rebuild_users(["u1"], BulkConfig(dry_run=False))
    with pytest.raises(ConfigError, match="list of ids"):
        storage.bulk_rebuild_users("u1", BulkConfig())
    assert storage.list_operations() == []
    for call in (storage.get_rebuild_progress, storage.resume_bulk_rebuild, storage.cancel_bulk_rebuild):
        with pytest.raises(OperationNotFoundError, match="no bulk operation with id 'nope'"):
            call("nope")
    with pytest.raises(ConfigError, match="status"):
        storage.list_operations("sleeping")
    # A dry run, and a real run told to ignore the flag, go ahead with the flag off.
    assert storage.bulk_rebuild_users(["u1"]).status == "completed"
    forced = storage.bulk_rebuild_users(["u1"], BulkConfig(dry_run=False, ignore_feature_flag=True))
    assert forced.users_changed == 1


# ---------------------------------------------------------------------------- cancel, resume


def test_cancel_stops_at_the_batch_boundary_and_resume_finishes(flag_on: Storage) -> None:
    storage = flag_on
    seeded = seed(storage.engine, users_count=30, days=60, now=NOW, with_runs=False)
    seen: list[Progress] = []

    def cancel_after_first_batch(p: Progress) -> None:
        seen.append(p)
        if p.processed_users == 5:
            storage.cancel_bulk_rebuild(p.operation_id)

    result = storage.bulk_rebuild_users(
        seeded.user_ids,
        BulkConfig(batch_size=5, max_workers=1, dry_run=False),
        progress=cancel_after_first_batch,
    )

    assert (result.status, result.completed_users, result.pending_users) == ("cancelled", 5, 25)
    assert [p.processed_users for p in seen] == [0, 5]
    assert storage.get_rebuild_progress(result.operation_id).status == "cancelled"
    assert storage.list_operations(status="cancelled")[0].operation_id == result.operation_id

    resumed = storage.resume_bulk_rebuild(result.operation_id)

    assert (resumed.status, resumed.completed_users, resumed.failed_users) == ("completed", 30, 0)
    assert history_rows(storage, result.operation_id) == [(u, True) for u in sorted(seeded.user_ids)]
    for uid in seeded.user_ids:
        assert spans(storage, uid) == marked_spans(storage, uid)


def test_resume_of_a_completed_operation_is_a_no_op(flag_on: Storage) -> None:
    storage = flag_on
    seeded = seed(storage.engine, users_count=6, days=30, corrupt=0.5, now=NOW)
    done = storage.bulk_rebuild_users(seeded.user_ids, REAL)
    before = snapshot(storage)

    again = storage.resume_bulk_rebuild(done.operation_id)

    assert snapshot(storage) == before
    assert (again.operation_id, again.status, again.completed_users, again.users_changed) == (
        done.operation_id,
        "completed",
        done.completed_users,
        done.users_changed,
    )
    assert storage.cancel_bulk_rebuild(done.operation_id).status == "completed"


def test_a_live_runner_cannot_be_taken_over(flag_on: Storage) -> None:
    storage = flag_on
    seeded = seed(storage.engine, users_count=12, days=30, now=NOW, with_runs=False)
    seen: list[tuple[str, str]] = []

    def meddle(p: Progress) -> None:
        if p.processed_users == 4:
            seen.append(("status", storage.get_rebuild_progress(p.operation_id).status))
            with pytest.raises(OperationRunningError, match="live runner"):
                storage.resume_bulk_rebuild(p.operation_id)
            seen.append(("resume", "refused"))
            listed = storage.list_operations()
            seen.append(("listed", listed[0].status))

    result = storage.bulk_rebuild_users(
        seeded.user_ids, BulkConfig(batch_size=4, max_workers=1, dry_run=False), progress=meddle
    )

    assert seen == [("status", "running"), ("resume", "refused"), ("listed", "running")]
    assert (result.status, result.completed_users) == ("completed", 12)


def fabricate_dead_run(storage: Storage, user_ids: list[str], runner: Owner) -> str:
    """Write an operation claimed by a runner that does not exist (as a crash leaves it)."""
    config = BulkConfig(batch_size=3, max_workers=2, dry_run=False).to_json()
    with write_transaction(storage.engine) as conn:
        ledger.create_operation(
            conn,
            "op-dead",
            kind="bulk_rebuild",
            dry_run=False,
            config=config,
            user_ids=user_ids,
            owner=runner,
            now=NOW,
        )
        ledger.claim(conn, "op-dead", runner, NOW, previous=runner.token)
    return "op-dead"


def test_an_operation_whose_runner_died_is_interrupted_and_resumable(flag_on: Storage) -> None:
    storage = flag_on
    seeded = seed(storage.engine, users_count=9, days=30, now=NOW, with_runs=False)
    op = fabricate_dead_run(storage, list(seeded.user_ids), Owner(socket.gethostname(), dead_pid(), "1/x"))

    progress = storage.get_rebuild_progress(op)

    assert (progress.status, progress.processed_users, progress.total_users) == ("interrupted", 0, 9)
    assert [p.operation_id for p in storage.list_operations(status="interrupted")] == [op]
    resumed = storage.resume_bulk_rebuild(op)
    assert (resumed.status, resumed.completed_users) == ("completed", 9)
    for uid in seeded.user_ids:
        assert spans(storage, uid) == marked_spans(storage, uid)


def test_cancel_of_an_operation_whose_runner_died_cancels_at_once(flag_on: Storage) -> None:
    seeded = seed(flag_on.engine, users_count=3, days=10, now=NOW, with_runs=False)
    op = fabricate_dead_run(flag_on, list(seeded.user_ids), Owner("elsewhere", 1, "1/x"))
    with flag_on.engine.begin() as conn:  # another host's runner: only its heartbeat tells
        conn.execute(
            update(ops_operations).values(heartbeat_at=NOW - ownership.STALE_AFTER - timedelta(seconds=1))
        )
    assert flag_on.cancel_bulk_rebuild(op).status == "cancelled"


def _op_run_by(pid: int, token: str, host: str | None = None) -> operations.OperationRow:
    host = host or socket.gethostname()
    return operations.OperationRow(
        "x", "bulk_rebuild", "running", False, {}, 0, NOW, NOW, NOW, None, host, pid, token, False, None
    )


def test_runner_liveness_by_process_start_time() -> None:
    """SQLite's way: pid and start time; a reused pid (other start time) is not the runner."""
    op = _op_run_by
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        started = ownership._process_start(child.pid)
        assert started is not None
        assert ownership._process_owner_alive(op(child.pid, f"{started}/t"), NOW)
        assert not ownership._process_owner_alive(op(child.pid, "12345/t"), NOW)  # pid reused
        assert not ownership._process_owner_alive(op(os.getpid(), "1/unknown-token"), NOW)
        assert ownership._process_owner_alive(op(1, "1/x", host="elsewhere"), NOW + timedelta(minutes=1))
        assert not ownership._process_owner_alive(op(1, "1/x", host="elsewhere"), NOW + timedelta(hours=1))
    finally:
        child.kill()
        child.wait()
    assert not ownership._process_owner_alive(op(child.pid, f"{started}/t"), NOW)


def test_progress_eta_comes_from_the_recent_rate(flag_on: Storage, clock: MutableClock) -> None:
    storage = flag_on
    seeded = seed(storage.engine, users_count=25, days=20, now=NOW, with_runs=False)
    etas: list[float | None] = []

    def tick(p: Progress) -> None:
        if p.processed_users:
            etas.append(storage.get_rebuild_progress(p.operation_id).eta_seconds)
        clock.advance(seconds=10)  # each batch of 5 takes "10 s": 0.5 user/s

    result = storage.bulk_rebuild_users(
        seeded.user_ids, BulkConfig(batch_size=5, max_workers=1, dry_run=False), progress=tick
    )

    assert result.status == "completed"
    assert etas == [pytest.approx(40), pytest.approx(30), pytest.approx(20), pytest.approx(10), 0.0]


# ---------------------------------------------------------------------------- concurrency


def in_flight(monkeypatch: pytest.MonkeyPatch, hook: Callable[[list[str]], None]) -> None:
    """Call hook(batch's users) inside every batch's own transaction: written, not committed."""
    users_of: dict[int, list[str]] = {}
    real_users, real_fence = claims.batch_user_ids, claims.fence

    def batch_user_ids(conn: Any, operation_id: str, claim: claims.Claim) -> list[str]:
        users_of[claim.batch_no] = real_users(conn, operation_id, claim)
        return users_of[claim.batch_no]

    def fence(conn: Any, operation_id: str, claim: claims.Claim, runner: Any, epoch: int) -> None:
        hook(users_of[claim.batch_no])
        real_fence(conn, operation_id, claim, runner, epoch)

    monkeypatch.setattr(claims, "batch_user_ids", batch_user_ids)
    monkeypatch.setattr(claims, "fence", fence)


def test_readers_see_old_runs_or_new_runs_never_a_mix(
    flag_on: Storage, monkeypatch: pytest.MonkeyPatch
) -> None:
    storage = flag_on
    seeded = seed(storage.engine, users_count=40, days=60, now=NOW)
    with storage.engine.begin() as conn:  # make every user's runs wrong, in different ways
        conn.execute(update(runs).where(runs.c.id % 2 == 0).values(day_count=runs.c.day_count + 1))
        conn.execute(runs.delete().where(runs.c.id % 3 == 0))

    def state(uid: str) -> list[tuple[date, date, int]]:
        return [(r.start_date, r.end_date, r.day_count) for r in storage.get_user_runs(uid)]

    old = {u: state(u) for u in seeded.user_ids}
    new = {
        u: [
            (s, e, (e - s).days + 1)
            for s, e in group_consecutive_dates(m.date for m in storage.get_user_day_marks(u) if m.value)
        ]
        for u in seeded.user_ids
    }
    assert all(old[u] != new[u] for u in seeded.user_ids)
    seen = {"old": 0, "new": 0}
    problems: list[str] = []

    def read_everyone(writing: list[str]) -> None:
        # A reader on its own connection, while this batch's writes are made and not committed.
        for uid in seeded.user_ids:
            found = state(uid)
            if uid in writing and found != old[uid]:
                problems.append(f"{uid}: uncommitted runs seen: {found}")
            if found == new[uid]:
                seen["new"] += 1
            elif found == old[uid]:
                seen["old"] += 1
            else:
                problems.append(f"{uid}: neither old nor new: {found}")
            for a, b in pairwise(found):
                if b[0] <= a[1]:
                    problems.append(f"{uid}: {a} overlaps {b}")

    in_flight(monkeypatch, read_everyone)
    result = storage.bulk_rebuild_users(
        seeded.user_ids, BulkConfig(batch_size=2, max_workers=2, dry_run=False)
    )

    assert problems == []
    assert result.users_changed == 40
    assert seen["old"] > 0 and seen["new"] > 0  # the first batch saw only old runs, the last mostly new
    assert all(state(u) == new[u] for u in seeded.user_ids)


@pytest.mark.parametrize("backend", ["postgres", CITUS], indirect=True)
def test_app_writing_marks_during_a_bulk_run(flag_on: Storage, monkeypatch: pytest.MonkeyPatch) -> None:
    storage = flag_on
    seeded = seed(storage.engine, users_count=60, days=60, corrupt=0.3, now=NOW)
    ghosts = {u for u, k in seeded.corrupted.items() if k == ViolationKind.ORPHAN}
    with storage.engine.begin() as conn:
        conn.execute(runs.delete().where(runs.c.user_id.in_(ghosts)))
    rng = random.Random(7)
    first = NOW.date() - timedelta(days=70)
    during: set[str] = set()  # a mark written while the user's batch was in flight
    before: set[str] = set()  # a mark written before the user's batch started
    order = list(seeded.user_ids)

    def toggle(uid: str) -> None:
        with storage.engine.begin() as conn:  # the app, on a connection of its own
            conn.execute(
                text(
                    "INSERT INTO day_marks (user_id, date, value) VALUES (:u, :d, true) "
                    "ON CONFLICT (user_id, date) DO UPDATE SET value = NOT day_marks.value"
                ),
                {"u": uid, "d": first + timedelta(days=rng.randrange(75))},
            )

    def app_writes(writing: list[str]) -> None:
        uid = writing[0]
        toggle(uid)
        during.add(uid)
        later = order[order.index(writing[-1]) + 1 :]
        waiting = [u for u in later if u not in during and u not in before]
        if waiting:
            toggle(waiting[-1])
            before.add(waiting[-1])

    in_flight(monkeypatch, app_writes)
    result = storage.bulk_rebuild_users(
        seeded.user_ids, BulkConfig(batch_size=3, max_workers=1, dry_run=False)
    )

    assert (result.status, result.failed_users) == ("completed", 0)
    # A batch works from one read of the marks; a mark written during it moves the user's
    # capture position, so catch-up rebuilds exactly those users again before completing.
    assert during and before
    assert result.caught_up_users == len(during)
    assert storage.validate_invariants().violations == []


# ---------------------------------------------------------------------------- command line

cli_runner = CliRunner()


def cli(db_url: str, *args: str) -> tuple[int, str, str]:
    app = typer.Typer()
    register(app)
    result = cli_runner.invoke(app, list(args), env={"POTATO_DATABASE_URL": db_url})
    return result.exit_code, result.stdout, result.stderr


def test_bulk_commands_end_to_end(storage: Storage, db_url: str, tmp_path: Path) -> None:
    seeded = seed(storage.engine, users_count=20, days=40, corrupt=0.3, now=NOW)
    # The command runs on the system clock: put the flags right for it, then count who is wrong.
    live = Storage.connect(db_url)
    live.refresh_active_runs()
    ghosts = {u for u, k in seeded.corrupted.items() if k == ViolationKind.ORPHAN}
    broken = len(set(live.validate_invariants().users_with_violations) - ghosts)
    live.close()
    assert broken > 0

    code, out, _ = cli(db_url, "bulk-rebuild", "--all", "-q")
    assert code == 0
    assert f"[DRY RUN] would change {broken} of 20 users" in out

    code, out, err = cli(db_url, "bulk-rebuild", "--all", "--execute", "-q")
    assert (code, out) == (1, "")
    assert err.startswith("error: feature flag ff.potato.runs_v2 is off") and err.count("\n") == 1

    args = ["--all", "--execute", "--ignore-feature-flag", "--batch-size", "3", "--workers", "2", "-q"]
    code, out, _ = cli(db_url, "bulk-rebuild", *args)
    assert code == 0
    assert f"changed {broken} users" in out
    match = re.search(r"operation ([0-9a-f]{32}): completed; completed 20, failed 0", out)
    assert match
    opid = match[1]

    code, out, _ = cli(db_url, "progress", opid)
    assert code == 0 and f"{opid}  completed   real run  20/20 processed" in out
    code, out, _ = cli(db_url, "operations")
    assert [line.split()[1:3] for line in out.splitlines()] == [["completed", "real"], ["completed", "dry"]]
    assert cli(db_url, "operations", "--status", "failed")[1] == "no operations\n"
    code, out, _ = cli(db_url, "resume", opid, "-q")
    assert code == 0 and "completed 20, failed 0" in out
    assert "completed" in cli(db_url, "cancel", opid)[1]

    ids = tmp_path / "ids.txt"
    ids.write_text(f"# users to retry\n{seeded.user_ids[0]}  # the first\n\nghost\n")
    args = ["--user-ids-file", str(ids), "--execute", "--ignore-feature-flag"]
    code, out, _ = cli(db_url, "bulk-rebuild", *args)
    assert code == 3  # a user failed
    assert "completed 1, failed 1" in out and "failed ghost: UserNotFoundError" in out

    assert cli(db_url, "prune-backups", "--older-than", "0", "--keep-latest", "0")[1] == (
        f"deleted {broken} backups older than 0 days (kept each user's newest 0)\n"
    )


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["progress", "nope"], 1, "error: no bulk operation with id 'nope'"),
        (["resume", "nope"], 1, "error: no bulk operation with id 'nope'"),
        (["bulk-rebuild"], 2, "error: give exactly one of --all or --user-ids-file"),
        (["bulk-rebuild", "--all", "--user-ids-file", "x"], 2, "error: give exactly one of"),
        (
            ["bulk-rebuild", "--user-ids-file", "/nonexistent/ids"],
            1,
            "error: --user-ids-file /nonexistent/ids: cannot read",
        ),
        (["bulk-rebuild", "--all", "--batch-size", "0"], 1, "error: --batch-size must be"),
        (
            ["bulk-rebuild", "--all", "--from", "2024-03-02", "--to", "2024-03-01"],
            1,
            "error: --from 2024-03-02 is",
        ),
    ],
    ids=["progress-unknown", "resume-unknown", "no-users", "both", "unreadable", "batch-0", "from>to"],
)
@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
def test_bulk_command_errors_are_one_line(
    storage: Storage, db_url: str, args: list[str], code: int, message: str
) -> None:
    got, out, err = cli(db_url, *args)
    assert (got, out) == (code, "")
    assert err.startswith(message) and err.count("\n") == 1


def test_every_bulk_command_and_option_has_help() -> None:
    app = typer.Typer()
    register(app)
    commands: dict[str, Any] = getattr(typer.main.get_command(app), "commands", {})
    assert sorted(commands) == [
        "bulk-rebuild",
        "bulk-worker",
        "cancel",
        "operations",
        "pause",
        "progress",
        "prune-backups",
        "resume",
    ]
    undocumented = [
        f"{name} {param.name}"
        for name, command in commands.items()
        for param in command.params
        if not (getattr(param, "help", None) or "").strip()
    ]
    assert undocumented == []
    assert all((command.help or "").strip() for command in commands.values())


def test_progress_bar_follows_the_callbacks() -> None:
    def at(processed: int, failed: int = 0) -> Progress:
        return Progress("op", "running", processed, 10, processed - failed, failed, None, None, None)

    with ProgressBar() as bar:
        for p in (at(0), at(4), at(10, failed=1)):
            bar(p)
        assert bar._bar is not None and bar._bar.n == 10


def test_a_ledger_made_by_an_older_release_gains_the_epoch_column(storage: Storage) -> None:
    with storage.engine.begin() as conn:
        conn.execute(text("ALTER TABLE ops_operations DROP COLUMN epoch"))
    with pytest.raises(SchemaError, match=r"ops_operations\.epoch"):
        storage.check_schema()

    storage.create_schema()

    add_user(storage, "u1", ["2024-03-01"])
    result = storage.bulk_rebuild_users(["u1"], BulkConfig(dry_run=False, ignore_feature_flag=True))
    assert (result.status, result.completed_users) == ("completed", 1)


def test_each_user_s_duration_is_its_own_work_plus_a_share_of_the_batch(flag_on: Storage) -> None:
    # One user with wrong runs among correct ones, all in one batch: the correct ones are
    # settled by the batch's comparison alone (no work of their own), the wrong one is rebuilt.
    clean = [f"c{i}" for i in range(5)]
    for uid in clean:
        add_user(flag_on, uid, ["2024-01-01", "2024-01-02", "2024-02-10"])
        add_runs(flag_on, uid, [("2024-01-01", "2024-01-02"), ("2024-02-10", "2024-02-10")])
    add_user(flag_on, "w", ["2024-01-01", "2024-01-02", "2024-01-03"])
    add_runs(flag_on, "w", [("2024-01-01", "2024-01-01")])
    result = flag_on.bulk_rebuild_users(
        [*clean, "w"], BulkConfig(batch_size=10, max_workers=1, dry_run=False)
    )
    assert result.completed_users == 6
    i = ops_operation_items
    with flag_on.engine.connect() as conn:
        took = dict(
            conn.execute(
                select(i.c.user_id, i.c.duration_ms).where(i.c.operation_id == result.operation_id)
            ).all()
        )
    shares = {took[uid] for uid in clean}
    assert len(shares) == 1  # an equal share of the batch's statements, nothing of their own
    assert took["w"] > shares.pop()  # the rebuilt user's own work is on top of that share
