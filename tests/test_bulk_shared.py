"""One bulk operation, several runners: fencing a runner that lost it, and workers sharing it.

PostgreSQL (and the Citus coordinator) only: SQLite is one host, which the last test checks.
Every test computes what must have happened from the data itself (the marks, the runs stored
before) and compares the ledger, the history and the backups with it: every user processed
exactly once, the ledger's figures equal to the changes actually made.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
from collections import Counter, defaultdict
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import typer
from sqlalchemy import func, select, text
from typer.testing import CliRunner

from potato_ops import BulkConfig, Storage, group_consecutive_dates
from potato_ops.cli.bulk import register
from potato_ops.db import claims, ledger
from potato_ops.db.engine import LOCK_NS_OPERATION
from potato_ops.db.schema import (
    day_marks,
    ops_backups,
    ops_operation_batches,
    ops_operation_items,
    ops_rebuild_history,
    runs,
    users,
)
from potato_ops.demo.synth import seed
from potato_ops.errors import ConfigError
from potato_ops.ops.bulk import api, executor, ownership
from tests.conftest import NOW, POSTGRES_AND_CITUS

CHILD = Path(__file__).with_name("bulk_child.py")
HANG_GUARD_S = 900  # only a hang gets this far; every check is on counts and events
ROOT = Path(__file__).parents[1]
Row = tuple[date, date, int, bool]


def expected_runs(storage: Storage, now: datetime = NOW) -> dict[str, set[Row]]:
    """Return each user's runs as the marks and the active rule at ``now`` give them (computed here)."""
    with storage.engine.connect() as conn:
        zones = dict(conn.execute(select(users.c.id, users.c.timezone)).all())
        marks: dict[str, list[date]] = defaultdict(list)
        for uid, d in conn.execute(select(day_marks.c.user_id, day_marks.c.date).where(day_marks.c.value)):
            marks[uid].append(d)
    out: dict[str, set[Row]] = {}
    for uid, tz in zones.items():
        today = now.astimezone(ZoneInfo(tz)).date()
        out[uid] = {
            (s, e, (e - s).days + 1, s <= today and e >= today - timedelta(days=1))
            for s, e in group_consecutive_dates(marks[uid])
        }
    return out


def stored_runs(storage: Storage) -> dict[str, set[Row]]:
    """Return each user's stored runs."""
    out: dict[str, set[Row]] = defaultdict(set)
    with storage.engine.connect() as conn:
        for uid, s, e, n, a in conn.execute(
            select(runs.c.user_id, runs.c.start_date, runs.c.end_date, runs.c.day_count, runs.c.active)
        ):
            out[uid].add((s, e, n, bool(a)))
    return out


def wrong_users(storage: Storage, now: datetime = NOW, *, dates_only: bool = False) -> set[str]:
    """Return the users whose stored runs differ from what their marks give at ``now``.

    ``dates_only``: compare the runs' dates and lengths, not their active flags.
    """
    want, have = expected_runs(storage, now), stored_runs(storage)

    def shape(rows: set[Row]) -> set[Any]:
        return {r[:3] for r in rows} if dates_only else rows

    return {uid for uid in want if shape(want[uid]) != shape(have.get(uid, set()))}


def check_processed_once(storage: Storage, operation_id: str, user_ids: list[str], changed: set[str]) -> None:
    """Every user's runs are right, processed once, and the ledger says exactly what changed."""
    assert wrong_users(storage) == set()
    with storage.engine.connect() as conn:
        i = ops_operation_items
        items = {
            uid: (status, attempts, bool(ch))
            for uid, status, attempts, ch in conn.execute(
                select(i.c.user_id, i.c.status, i.c.attempts, i.c.changed).where(
                    i.c.operation_id == operation_id
                )
            )
        }
        h = ops_rebuild_history
        history = Counter(conn.execute(select(h.c.user_id).where(h.c.operation_id == operation_id)).scalars())
        backed_up = Counter(
            conn.execute(
                select(ops_backups.c.user_id).where(ops_backups.c.operation_id == operation_id)
            ).scalars()
        )
        batches_left = conn.execute(
            select(func.count())
            .select_from(ops_operation_batches)
            .where(
                ops_operation_batches.c.operation_id == operation_id, ops_operation_batches.c.status != "done"
            )
        ).scalar_one()
    assert items == {uid: ("completed", 1, uid in changed) for uid in user_ids}
    assert history == Counter({uid: 1 for uid in user_ids})  # one history row each: processed once
    assert backed_up == Counter({uid: 1 for uid in changed})  # a changed user backed up once
    assert batches_left == 0
    progress = storage.get_rebuild_progress(operation_id)
    assert (progress.status, progress.completed_users, progress.users_changed) == (
        "completed",
        len(user_ids),
        len(changed),
    )


@pytest.fixture
def corrupted(storage: Storage) -> tuple[Storage, list[str], set[str]]:
    """Seed users, a third of them corrupted; return storage, the ids, and who is wrong."""
    storage.set_feature_flag("ff.potato.runs_v2", True)
    seeded = seed(storage.engine, users_count=60, days=60, corrupt=0.35, now=NOW)
    changed = wrong_users(storage)
    assert changed  # the test means something only if there is work to do
    return storage, list(seeded.user_ids), changed


def terminate_owner_lock(storage: Storage, operation_id: str) -> int:
    """Cut the connection holding the operation's owner lock (as a network blip would); return its pid."""
    with storage.engine.connect() as conn:
        pids = conn.execute(
            text(
                "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND classid = CAST(:ns AS oid) "
                "AND objid = CAST(CAST(hashtext(:op) AS bigint) & 4294967295 AS oid) AND objsubid = 2"
            ),
            {"ns": LOCK_NS_OPERATION, "op": operation_id},
        ).scalars()
        [pid] = list(pids)
        assert conn.execute(
            text("SELECT pg_terminate_backend(CAST(:p AS integer), CAST(5000 AS bigint))"), {"p": pid}
        ).scalar_one()
    return int(pid)


# ---------------------------------------------------------------------------- fencing


@POSTGRES_AND_CITUS
def test_a_runner_whose_lock_connection_was_cut_stops_when_resume_takes_over(
    corrupted: tuple[Storage, list[str], set[str]],
) -> None:
    storage, ids, changed = corrupted
    resumed: list[Any] = []

    def take_over_after_two_batches(p: Any) -> None:
        if p.processed_users == 10 and not resumed:
            terminate_owner_lock(storage, p.operation_id)
            resumed.append(storage.resume_bulk_rebuild(p.operation_id))

    first = storage.bulk_rebuild_users(
        ids, BulkConfig(batch_size=5, max_workers=1, dry_run=False), progress=take_over_after_two_batches
    )

    assert resumed and resumed[0].status == "completed"
    assert first.status == "completed"  # as the new owner left it: the old one wrote no status
    check_processed_once(storage, first.operation_id, ids, changed)


@POSTGRES_AND_CITUS
@pytest.mark.timeout(HANG_GUARD_S)
def test_a_paused_runner_s_batch_rolls_back_at_its_fence(
    corrupted: tuple[Storage, list[str], set[str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    storage, ids, changed = corrupted
    paused, taken_over, go = threading.Event(), threading.Event(), threading.Event()
    resume_read = threading.Event()
    real_users = claims.batch_user_ids
    fenced: list[str] = []
    real_fence, real_execute = claims.fence, executor.BulkExecutor.execute
    first_runner: list[str] = []

    def fence(conn: Any, operation_id: str, claim: claims.Claim, runner: Any, epoch: int) -> None:
        # The first runner's third batch stops here, inside its transaction, its users written:
        # what `kill -STOP` does to a runner; it goes on once the takeover committed.
        if runner.token == first_runner[0] and claim.batch_no == 2:
            paused.set()
            assert go.wait(60)
            try:
                real_fence(conn, operation_id, claim, runner, epoch)
            except claims.Fenced as exc:
                fenced.append(str(exc))
                raise
            return
        real_fence(conn, operation_id, claim, runner, epoch)

    def execute(self: executor.BulkExecutor, *args: Any, **kwargs: Any) -> Any:
        if not first_runner:
            first_runner.append(self.worker.token)
        else:
            taken_over.set()  # the takeover transaction (epoch bump) has committed
        return real_execute(self, *args, **kwargs)

    def batch_user_ids(conn: Any, operation_id: str, claim: claims.Claim) -> list[str]:
        found = real_users(conn, operation_id, claim)
        if taken_over.is_set() and claim.batch_no == 2:
            resume_read.set()  # the new owner is on the paused batch's users too
        return found

    monkeypatch.setattr(claims, "fence", fence)
    monkeypatch.setattr(claims, "batch_user_ids", batch_user_ids)
    monkeypatch.setattr(executor.BulkExecutor, "execute", execute)
    outcome: dict[str, Any] = {}

    def run_first() -> None:
        outcome["first"] = storage.bulk_rebuild_users(
            ids, BulkConfig(batch_size=5, max_workers=1, dry_run=False)
        )

    first = threading.Thread(target=run_first)
    first.start()
    assert paused.wait(60)
    operation_id = storage.list_operations(limit=1)[0].operation_id
    terminate_owner_lock(storage, operation_id)

    def run_resume() -> None:
        outcome["resumed"] = storage.resume_bulk_rebuild(operation_id)

    resume = threading.Thread(target=run_resume)
    resume.start()
    assert taken_over.wait(60) and resume_read.wait(60)
    go.set()  # the paused runner wakes up: its batch must roll back at the fence
    first.join()
    resume.join()

    assert outcome["resumed"].status == "completed"
    check_processed_once(storage, operation_id, ids, changed)
    assert fenced and "taken over" in fenced[0]


# ---------------------------------------------------------------------------- shared workers


def start_worker(
    url: str, operation_id: str, now: datetime, kill_at_batch: int | None = None, threads: int = 2
) -> subprocess.Popen[str]:
    """Start a worker process on the operation; it has said ready when this returns."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("POTATO_TEST_KILL_AT_BATCH", None)
    if kill_at_batch is not None:
        env["POTATO_TEST_KILL_AT_BATCH"] = str(kill_at_batch)
    child = subprocess.Popen(
        [sys.executable, str(CHILD), "worker", url, now.isoformat(), operation_id, str(threads)],
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env=env,
    )
    assert child.stdout is not None
    assert child.stdout.readline().strip() == "ready"
    return child


def probe_claim(storage: Storage, operation_id: str, now: datetime) -> claims.Claim | claims.NoClaim:
    """Return what a new worker's claim at ``now`` would get, rolled back (nothing kept)."""
    runner = ownership.new_owner()
    try:
        with storage.engine.connect() as conn, conn.begin() as probe:
            epoch = ledger.join(conn, operation_id, now)  # as a worker joins it
            assert epoch is not None
            found = claims.claim_batch(conn, operation_id, 5, runner, epoch, now)
            probe.rollback()
        return found
    finally:
        ownership.release_owner(runner)


@POSTGRES_AND_CITUS
@pytest.mark.timeout(HANG_GUARD_S)
def test_three_workers_share_one_operation_and_survive_a_sigkill_mid_batch(
    corrupted: tuple[Storage, list[str], set[str]], db_url: str
) -> None:
    storage, ids, changed = corrupted
    operation_id = api.open_bulk_operation(storage.database, ids, BulkConfig(batch_size=5, dry_run=False))

    # The first worker (one thread) dies inside its second batch: rebuilt and recorded, not committed.
    doomed = start_worker(db_url, operation_id, NOW, kill_at_batch=2, threads=1)
    assert doomed.wait(60) == -9
    with storage.engine.connect() as conn:
        b = ops_operation_batches
        held = conn.execute(
            select(b.c.batch_no, b.c.claim_pid, b.c.expires_at).where(
                b.c.operation_id == operation_id, b.c.status == "pending", b.c.claim_token.is_not(None)
            )
        ).all()
    assert [(n, pid) for n, pid, _ in held] == [(1, doomed.pid)]  # its first batch committed
    assert storage.get_rebuild_progress(operation_id).processed_users == 5

    # What a claim gets, tried and rolled back: while the dead worker's lease runs, the next
    # free batch; once it lapsed, the dead worker's batch. (Workers that could not take it
    # over would wait for it forever: this says so at once.)
    later = NOW + claims.LEASE + timedelta(minutes=1)
    assert [probe_claim(storage, operation_id, now) for now in (NOW, later)] == [
        claims.Claim(2, 11, 15),
        claims.Claim(1, 6, 10),
    ]

    # Two more hosts join later, their clocks past the dead worker's lease: they take its
    # batch over, share the rest, and the last one to finish completes the operation.
    others = [start_worker(db_url, operation_id, later) for _ in range(2)]
    outputs = [w.communicate()[0] for w in others]
    assert [w.returncode for w in others] == [0, 0], outputs
    check_processed_once(storage, operation_id, ids, changed)


def test_sqlite_is_one_host_and_says_so(storage: Storage) -> None:
    if storage.dialect != "sqlite":
        pytest.skip("the SQLite refusal")
    with pytest.raises(ConfigError, match="SQLite is one host"):
        api.open_bulk_operation(storage.database, [], BulkConfig())
    with pytest.raises(ConfigError, match="SQLite is one host"):
        api.join_bulk_operation(storage.database, "whatever")


@POSTGRES_AND_CITUS
def test_cancel_stops_every_worker_and_no_one_joins_afterwards(
    corrupted: tuple[Storage, list[str], set[str]],
) -> None:
    storage, ids, _ = corrupted
    operation_id = api.open_bulk_operation(storage.database, ids, BulkConfig(batch_size=5, dry_run=False))

    def cancel_after_first_batch(p: Any) -> None:
        if p.processed_users == 5:
            storage.cancel_bulk_rebuild(operation_id)

    worker = api.join_bulk_operation(
        storage.database, operation_id, max_workers=1, progress=cancel_after_first_batch
    )
    late = api.join_bulk_operation(storage.database, operation_id, max_workers=2)

    assert (worker.status, worker.completed_users, worker.pending_users) == ("cancelled", 5, len(ids) - 5)
    assert (late.status, late.completed_users) == ("cancelled", 5)  # it found the cancel and did nothing


def bulk_cli(db_url: str, *args: str) -> tuple[int, str, str]:
    app = typer.Typer()
    register(app)
    result = CliRunner().invoke(app, list(args), env={"POTATO_DATABASE_URL": db_url})
    return result.exit_code, result.stdout, result.stderr


@pytest.mark.parametrize("backend", [pytest.param("postgres", marks=pytest.mark.postgres)])
def test_detach_then_bulk_worker_from_the_command_line(
    corrupted: tuple[Storage, list[str], set[str]], db_url: str
) -> None:
    storage, ids, changed = corrupted

    code, out, err = bulk_cli(db_url, "bulk-rebuild", "--all", "--execute", "--batch-size", "7", "--detach")
    assert (code, err) == (0, "")
    operation_id = re.findall(r"bulk-worker ([0-9a-f]{32})", out)[0]
    assert storage.get_rebuild_progress(operation_id).processed_users == 0  # written, not run

    code, out, err = bulk_cli(db_url, "bulk-worker", operation_id, "--quiet", "--workers", "2")

    assert (code, err) == (0, ""), out
    assert f"operation {operation_id}: completed; completed {len(ids)}" in out
    progress = storage.get_rebuild_progress(operation_id)
    assert (progress.status, progress.completed_users) == ("completed", len(ids))
    # The command runs on the system clock, so only the dates are compared (not the active flags).
    want = {u: {r[:3] for r in rs} for u, rs in expected_runs(storage).items()}
    assert want == {u: {r[:3] for r in rs} for u, rs in stored_runs(storage).items() if u in want}
    assert changed


def test_bulk_worker_on_sqlite_is_one_line_and_exit_1(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'one.sqlite3'}"
    Storage.connect(url).create_schema()
    code, out, err = bulk_cli(url, "bulk-worker", "0" * 32)
    assert (code, out) == (1, "")
    assert (
        err.startswith("error: an operation shared by several hosts needs PostgreSQL")
        and err.count("\n") == 1
    )
