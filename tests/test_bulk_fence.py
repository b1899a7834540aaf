"""The bulk engine's fence, claims and fill, each caught in the act (PostgreSQL and Citus), and
the lines the bulk commands print about what this runner did."""

from __future__ import annotations

import re
import threading
from datetime import date, timedelta
from typing import Any

import pytest
from sqlalchemy import Connection, select, text

from potato_ops import BulkConfig, Storage
from potato_ops.cli.bulk import _print_result
from potato_ops.db import claims, grouping, ledger
from potato_ops.db.engine import write_transaction
from potato_ops.db.schema import ops_operation_items
from potato_ops.domain.operations import Owner
from potato_ops.errors import OperationRunningError
from potato_ops.ops.bulk import api, fill, ownership
from potato_ops.ops.bulk.results import BulkResult
from tests.conftest import NOW, POSTGRES_AND_CITUS, add_user, spans
from tests.test_bulk_shared import (
    bulk_cli,
    check_processed_once,
    corrupted,
    terminate_owner_lock,
    wrong_users,
)

__all__ = ["corrupted"]  # the fixture, shared with the multi-host tests


def _joined(storage: Storage, operation_id: str) -> tuple[Owner, int]:
    """Return a new worker identity and the epoch it joined the operation under."""
    runner = ownership.new_owner()
    with write_transaction(storage.engine) as conn:
        epoch = ledger.join(conn, operation_id, NOW)
    assert epoch is not None
    return runner, epoch


# -- the epoch in the fence ----------------------------------------------------------------------


@POSTGRES_AND_CITUS
def test_a_runner_from_before_a_takeover_is_fenced_even_while_it_still_holds_its_batch(
    corrupted: tuple[Storage, list[str], set[str]],
) -> None:
    storage, ids, _ = corrupted
    operation_id = api.open_bulk_operation(storage.database, ids, BulkConfig(batch_size=5, dry_run=False))
    old, epoch = _joined(storage, operation_id)
    with write_transaction(storage.engine) as conn:
        claim = claims.claim_batch(conn, operation_id, 5, old, epoch, NOW)
    assert isinstance(claim, claims.Claim)
    with write_transaction(storage.engine) as conn:  # a takeover that leaves the batches as cut
        assert claims.take_over(conn, operation_id) == epoch + 1

    with write_transaction(storage.engine) as conn:
        with pytest.raises(claims.Fenced) as fenced:
            claims.fence(conn, operation_id, claim, old, epoch)
        again = claims.claim_batch(conn, operation_id, 5, old, epoch, NOW)

    assert fenced.value.operation_lost  # the operation, not only the batch, is lost
    assert again == claims.NoClaim("fenced")
    ownership.release_owner(old)


# -- claims skip what others hold ----------------------------------------------------------------


@POSTGRES_AND_CITUS
def test_a_second_claim_takes_the_next_batch_without_waiting_for_the_first(
    corrupted: tuple[Storage, list[str], set[str]],
) -> None:
    storage, ids, _ = corrupted
    operation_id = api.open_bulk_operation(storage.database, ids, BulkConfig(batch_size=5, dry_run=False))
    first, epoch = _joined(storage, operation_id)
    second = ownership.new_owner()
    outcome: dict[str, Any] = {}
    started, done = threading.Event(), threading.Event()

    def claim_in_second_session() -> None:
        try:
            with write_transaction(storage.engine) as conn:
                outcome["pid"] = conn.execute(text("SELECT pg_backend_pid()")).scalar_one()
                started.set()
                outcome["claim"] = claims.claim_batch(conn, operation_id, 5, second, epoch, NOW)
        finally:
            started.set()
            done.set()

    with storage.engine.connect() as holder:
        holding = holder.begin()  # the first claim stays uncommitted: its batch row locked
        held = claims.claim_batch(holder, operation_id, 5, first, epoch, NOW)
        assert held == claims.Claim(0, 1, 5)
        thread = threading.Thread(target=claim_in_second_session)
        thread.start()
        assert started.wait(60)
        waited = False
        with storage.engine.connect() as watcher:
            while not done.wait(0.02):
                blocked = watcher.execute(
                    text("SELECT count(*) FROM pg_locks WHERE pid = :pid AND NOT granted"),
                    {"pid": outcome.get("pid", -1)},
                ).scalar_one()
                if blocked:  # the second claim waits on the first one's lock: record it, free it
                    waited = True
                    holding.rollback()
                    break
        thread.join()
        if holding.is_active:
            holding.rollback()

    assert not waited, "the second claim waited for the batch the first one holds"
    assert outcome["claim"] == claims.Claim(1, 6, 10)
    for runner in (first, second):
        ownership.release_owner(runner)


# -- a joined worker keeps the operation running -------------------------------------------------


class TakenOverWhileWorking(Exception):
    """resume took an operation over while one of its workers was inside a batch."""


@POSTGRES_AND_CITUS
def test_a_joined_worker_mid_batch_keeps_the_operation_running(
    corrupted: tuple[Storage, list[str], set[str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    storage, ids, changed = corrupted
    operation_id = api.open_bulk_operation(storage.database, ids, BulkConfig(batch_size=5, dry_run=False))
    inside, go = threading.Event(), threading.Event()
    real_fence = claims.fence

    def fence(conn: Connection, op: str, claim: claims.Claim, runner: Any, epoch: int) -> None:
        if claim.batch_no == 1 and not go.is_set():  # the worker is inside its second batch
            inside.set()
            assert go.wait(60)
        real_fence(conn, op, claim, runner, epoch)

    real_take_over = claims.take_over

    def take_over(conn: Connection, op: str) -> int:
        if inside.is_set() and not go.is_set():
            # A takeover now would wait on the paused batch's rows: fail at once instead.
            raise TakenOverWhileWorking(op)
        return real_take_over(conn, op)

    monkeypatch.setattr(claims, "fence", fence)
    monkeypatch.setattr(claims, "take_over", take_over)
    outcome: dict[str, Any] = {}

    def work() -> None:
        outcome["worker"] = api.join_bulk_operation(storage.database, operation_id, max_workers=1)

    worker = threading.Thread(target=work)
    worker.start()
    try:
        assert inside.wait(60)
        seen = storage.get_rebuild_progress(operation_id).status
        listed = {p.operation_id: p.status for p in storage.list_operations()}[operation_id]
        with pytest.raises(OperationRunningError, match="still being run by a live runner"):
            storage.resume_bulk_rebuild(operation_id)
    finally:
        go.set()
        worker.join()

    assert (seen, listed) == ("running", "running")
    assert outcome["worker"].status == "completed"
    check_processed_once(storage, operation_id, ids, changed)


# -- the set-based fill is checked ---------------------------------------------------------------


@POSTGRES_AND_CITUS
def test_runs_the_fill_got_wrong_are_caught_and_each_user_redone_alone(
    storage: Storage, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Users with marks and no runs at all: the set-based fill's case.
    first = date(2024, 3, 1)
    marks: list[date | str] = [first + timedelta(days=k) for k in (0, 1, 2, 5, 6, 9)]
    ids = [f"u{i}" for i in range(4)]
    for uid in ids:
        add_user(storage, uid, marks)
    real_fill = grouping.fill_grouped_runs
    wrong: list[str] = []

    def one_day_short(conn: Connection, todays: dict[str, date]) -> None:
        # The fill's runs of two days or more lose their last day: wrong, yet never overlapping.
        real_fill(conn, todays)
        wrong.extend(todays)
        conn.execute(
            text(
                "UPDATE runs SET end_date = end_date - 1, day_count = day_count - 1 "
                "WHERE user_id = ANY(:uids) AND day_count > 1"
            ),
            {"uids": list(todays)},
        )

    monkeypatch.setattr(fill, "fill_grouped_runs", one_day_short)

    result = storage.bulk_rebuild_users(
        ids, BulkConfig(batch_size=4, max_workers=1, dry_run=False, ignore_feature_flag=True)
    )

    assert wrong  # the fill ran, and got them wrong
    assert (result.status, result.completed_users, result.failed_users) == ("completed", 4, 0)
    expected = [("2024-03-01", "2024-03-03"), ("2024-03-06", "2024-03-07"), ("2024-03-10", "2024-03-10")]
    assert {uid: spans(storage, uid) for uid in ids} == {uid: expected for uid in ids}
    with storage.engine.connect() as conn:
        tries = dict(
            conn.execute(
                select(ops_operation_items.c.user_id, ops_operation_items.c.attempts).where(
                    ops_operation_items.c.operation_id == result.operation_id
                )
            ).all()
        )
    assert tries == {uid: 2 for uid in ids}  # redone alone: the second try of each


# -- what the bulk commands print about this runner ----------------------------------------------


def _result(**changes: Any) -> BulkResult:
    base: dict[str, Any] = {
        "operation_id": "op",
        "total_users": 100_000,
        "completed_users": 100_000,
        "failed_users": 0,
        "total_duration_ms": 36_000.0,
        "average_duration_ms": 1.0,
        "errors": [],
        "status": "completed",
        "dry_run": False,
    }
    return BulkResult(**{**base, **changes})


def test_the_rate_counts_only_the_users_this_run_processed(capsys: pytest.CaptureFixture[str]) -> None:
    # A resume that finished the last 60 users of 100,000 in 36 s: 6,000 users an hour.
    _print_result(_result(processed_here=60))
    out = capsys.readouterr().out

    assert "60 users processed here in 36.0 s (6,000 users/hour)" in out
    assert "operation op: completed; completed 100000, failed 0, pending 0 of 100000\n" in out


def test_a_worker_s_totals_are_the_operation_s_and_a_fenced_runner_says_so(
    capsys: pytest.CaptureFixture[str],
) -> None:
    _print_result(_result(processed_here=25, status="running", taken_over=True), worker=True)
    out = capsys.readouterr().out

    assert out.splitlines()[1] == (
        "operation op: taken over by another runner (now running); this runner stopped; "
        "completed 100000, failed 0, pending 0 of 100000 (all hosts)"
    )
    assert "25 users processed here in 36.0 s" in out


@POSTGRES_AND_CITUS
def test_resume_and_a_taken_over_runner_report_their_own_share(
    corrupted: tuple[Storage, list[str], set[str]], db_url: str
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

    [second] = resumed
    assert (first.taken_over, second.taken_over) == (True, False)
    assert (first.processed_here, second.processed_here) == (10, len(ids) - 10)
    check_processed_once(storage, first.operation_id, ids, changed)
    assert wrong_users(storage) == set()

    code, out, _ = bulk_cli(db_url, "bulk-worker", first.operation_id, "--quiet")  # nothing left
    assert code == 0 and re.search(r"completed; completed \d+", out)
