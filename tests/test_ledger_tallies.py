"""The ledger's tallies: after every kind of change of the items, the counts are exact.

``item_counts`` reads the tallies; each test recounts the items itself with plain SQL (a
``GROUP BY status`` over ``ops_operation_items``) and compares. A PostgreSQL test explains the
statements that count and time an operation: neither reads its items as a whole.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import pytest
from sqlalchemy import Connection, event, inspect, text

from potato_ops import BulkConfig, SchemaError, Storage
from potato_ops.db import capture, ledger
from potato_ops.db.engine import write_transaction
from potato_ops.db.schema import RUNS_V2_FLAG
from potato_ops.demo.synth import seed
from potato_ops.domain.dates import as_utc
from potato_ops.domain.operations import Owner
from potato_ops.ops.bulk.results import Progress
from tests.conftest import NOW, MutableClock, add_user

REAL = BulkConfig(batch_size=5, max_workers=1, dry_run=False)

_RECOUNT = text(
    "SELECT status, count(*), sum(CASE WHEN changed THEN 1 ELSE 0 END), "
    "coalesce(sum(runs_deleted), 0), coalesce(sum(runs_created), 0), coalesce(sum(duration_ms), 0) "
    "FROM ops_operation_items WHERE operation_id = :op GROUP BY status"
)


@pytest.fixture
def flag_on(storage: Storage) -> Storage:
    storage.set_feature_flag(RUNS_V2_FLAG, True)
    return storage


def recount(conn: Connection, operation_id: str) -> dict[str, Any]:
    """The operation's counts, from its items, by the test's own SQL."""
    by: dict[str, int] = {}
    changed = deleted = created = 0
    duration = 0.0
    for status, n, ch, rd, rc, ms in conn.execute(_RECOUNT, {"op": operation_id}):
        by[status] = int(n)
        changed, deleted, created = changed + int(ch or 0), deleted + int(rd), created + int(rc)
        duration += float(ms)
    return {
        "total": sum(by.values()),
        "pending": by.get("pending", 0),
        "completed": by.get("completed", 0),
        "failed": by.get("failed", 0),
        "changed": changed,
        "runs_deleted": deleted,
        "runs_created": created,
        "duration_ms": pytest.approx(duration, rel=1e-9, abs=1e-6),
    }


def tally_rows(conn: Connection, operation_id: str) -> int:
    return int(
        conn.execute(
            text("SELECT count(*) FROM ops_operation_tallies WHERE operation_id = :op"), {"op": operation_id}
        ).scalar_one()
    )


def assert_exact(storage: Storage, operation_id: str) -> dict[str, Any]:
    """item_counts (from the tallies, which must exist) equals the recount; return the recount."""
    with storage.engine.connect() as conn:
        assert tally_rows(conn, operation_id) > 0, "no tallies: item_counts counted the items"
        counts = ledger.item_counts(conn, operation_id)
        expected = recount(conn, operation_id)
    got = {name: getattr(counts, name) for name in expected}
    assert got == expected
    return expected


def checking(storage: Storage, seen: list[dict[str, Any]]) -> Any:
    """A progress callback checking the counts at each batch boundary (one worker: quiet there)."""

    def check(p: Progress) -> None:
        seen.append(assert_exact(storage, p.operation_id))

    return check


@pytest.fixture
def refuse_bad_users(storage: Storage) -> Iterator[None]:
    """A trigger refusing runs of users whose id starts with 'bad' (a database error)."""
    refuse_bad(storage)
    yield
    allow_bad(storage)


def refuse_bad(storage: Storage) -> None:
    if storage.dialect == "postgresql":
        statements = [
            "CREATE OR REPLACE FUNCTION refuse_bad() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
            "IF NEW.user_id LIKE 'bad%' THEN RAISE EXCEPTION 'boom: runs of % refused', NEW.user_id; "
            "END IF; RETURN NEW; END $$",
            "CREATE TRIGGER refuse_bad BEFORE INSERT ON runs FOR EACH ROW EXECUTE FUNCTION refuse_bad()",
        ]
    else:
        statements = [
            "CREATE TRIGGER refuse_bad BEFORE INSERT ON runs WHEN NEW.user_id LIKE 'bad%' "
            "BEGIN SELECT RAISE(ABORT, 'boom: runs refused'); END"
        ]
    with storage.engine.begin() as conn:
        for s in statements:
            conn.execute(text(s))


def allow_bad(storage: Storage) -> None:
    with storage.engine.begin() as conn:
        if storage.dialect == "postgresql":
            conn.execute(text("DROP TRIGGER IF EXISTS refuse_bad ON runs"))
        else:
            conn.execute(text("DROP TRIGGER IF EXISTS refuse_bad"))


# ---------------------------------------------------------------------------- transitions


def test_batches_keep_the_counts_exact_at_every_boundary(flag_on: Storage) -> None:
    seeded = seed(flag_on.engine, users_count=23, days=40, corrupt=0.5, now=NOW)
    seen: list[dict[str, Any]] = []

    result = flag_on.bulk_rebuild_users(seeded.user_ids, REAL, progress=checking(flag_on, seen))

    assert result.status == "completed"
    final = assert_exact(flag_on, result.operation_id)
    assert (final["completed"], final["pending"]) == (23, 0) and final["runs_created"] > 0
    assert [s["pending"] for s in seen][:3] == [23, 18, 13]  # the counts moved batch by batch


def test_concurrent_workers_keep_the_counts_exact(flag_on: Storage) -> None:
    seeded = seed(flag_on.engine, users_count=40, days=30, corrupt=0.5, now=NOW)
    result = flag_on.bulk_rebuild_users(
        seeded.user_ids, BulkConfig(batch_size=3, max_workers=4, dry_run=False)
    )
    assert result.status == "completed"
    assert assert_exact(flag_on, result.operation_id)["completed"] == 40


def test_a_failing_user_redone_alone_then_retried_with_failed_only(
    flag_on: Storage, refuse_bad_users: None
) -> None:
    for uid in ("a", "b", "bad-1", "c", "bad-2", "d"):
        add_user(flag_on, uid, ["2024-03-01", "2024-03-02", "2024-03-05"])

    result = flag_on.bulk_rebuild_users(["a", "b", "bad-1", "c", "bad-2", "d"], REAL)

    assert (result.completed_users, result.failed_users) == (4, 2)
    failed = assert_exact(flag_on, result.operation_id)
    assert (failed["completed"], failed["failed"]) == (4, 2) and failed["duration_ms"] != 0

    allow_bad(flag_on)
    seen: list[dict[str, Any]] = []
    retried = flag_on.resume_bulk_rebuild(
        result.operation_id, failed_only=True, progress=checking(flag_on, seen)
    )

    assert (retried.status, retried.completed_users, retried.failed_users) == ("completed", 6, 0)
    assert (seen[0]["pending"], seen[0]["failed"]) == (2, 0)  # reopened: counted pending at once
    assert assert_exact(flag_on, result.operation_id)["completed"] == 6


def test_a_dry_run(flag_on: Storage) -> None:
    seeded = seed(flag_on.engine, users_count=12, days=40, corrupt=0.5, now=NOW)
    seen: list[dict[str, Any]] = []

    result = flag_on.bulk_rebuild_users(
        seeded.user_ids,
        BulkConfig(batch_size=5, max_workers=1, dry_run=True),
        progress=checking(flag_on, seen),
    )

    assert result.status == "completed" and result.users_changed > 0
    assert assert_exact(flag_on, result.operation_id)["changed"] == result.users_changed


def test_users_not_found(flag_on: Storage) -> None:
    add_user(flag_on, "u1", ["2024-03-01"])
    add_user(flag_on, "u2", ["2024-03-02"])

    result = flag_on.bulk_rebuild_users(["ghost", "u1", "ghost-2", "u1", "u2"], REAL)

    assert (result.total_users, result.completed_users, result.failed_users) == (4, 2, 2)
    assert assert_exact(flag_on, result.operation_id)["failed"] == 2


def test_a_cancelled_run_then_resumed(flag_on: Storage) -> None:
    seeded = seed(flag_on.engine, users_count=20, days=40, corrupt=0.5, now=NOW)

    def cancel_after_first_batch(p: Progress) -> None:
        assert_exact(flag_on, p.operation_id)
        if p.processed_users == 5:
            flag_on.cancel_bulk_rebuild(p.operation_id)

    result = flag_on.bulk_rebuild_users(seeded.user_ids, REAL, progress=cancel_after_first_batch)

    assert (result.status, result.pending_users) == ("cancelled", 15)
    assert assert_exact(flag_on, result.operation_id)["pending"] == 15
    resumed = flag_on.resume_bulk_rebuild(result.operation_id)
    assert resumed.status == "completed"
    assert assert_exact(flag_on, result.operation_id)["completed"] == 20


def test_catch_up_and_its_failure(flag_on: Storage) -> None:
    for uid in ("bad-1", "u2", "u3", "u4"):
        add_user(flag_on, uid, ["2024-03-01", "2024-03-02"])
    done: list[bool] = []

    def after_first_batch(p: Progress) -> None:
        assert_exact(flag_on, p.operation_id)
        if p.processed_users >= 2 and not done:  # bad-1 and u2 are done: their marks change now
            done.append(True)
            refuse_bad(flag_on)
            with flag_on.engine.begin() as conn:
                for uid in ("bad-1", "u2"):
                    conn.execute(
                        text("INSERT INTO day_marks (user_id, date, value) VALUES (:u, :d, true)"),
                        {"u": uid, "d": datetime(2024, 2, 1).date()},
                    )

    try:
        result = flag_on.bulk_rebuild_users(
            ["bad-1", "u2", "u3", "u4"],
            BulkConfig(batch_size=2, max_workers=1, dry_run=False),
            progress=after_first_batch,
        )
    finally:
        allow_bad(flag_on)

    assert result.caught_up_users >= 1  # u2, rebuilt again
    assert (result.completed_users, result.failed_users) == (3, 1)  # bad-1: its catch-up failed
    assert [e.user_id for e in result.errors] == ["bad-1"]
    assert assert_exact(flag_on, result.operation_id)["failed"] == 1


def test_add_tallies_keeps_a_set_based_change_exact(flag_on: Storage) -> None:
    for i in range(8):
        add_user(flag_on, f"u{i}", ["2024-03-01"])
    owner = Owner("here", 1, "1/t")
    with write_transaction(flag_on.engine) as conn:
        ledger.create_operation(
            conn,
            "op1",
            kind="bulk_rebuild",
            dry_run=False,
            config={},
            user_ids=[f"u{i}" for i in range(8)],
            owner=owner,
            now=NOW,
        )
    with write_transaction(flag_on.engine) as conn:  # another change's set-based write
        moved = conn.execute(
            text(
                "UPDATE ops_operation_items SET status = 'completed', changed = true, runs_created = 2, "
                "duration_ms = 1.25, finished_at = :now WHERE operation_id = 'op1' AND position <= 3"
            ),
            {"now": NOW},
        ).rowcount
        ledger.add_tallies(
            conn,
            "op1",
            "pending",
            "completed",
            moved,
            changed=moved,
            runs_created=2 * moved,
            duration_ms=1.25 * moved,
            slot=0,
        )
    assert assert_exact(flag_on, "op1")["completed"] == 3


def test_an_operation_older_than_the_tallies(flag_on: Storage) -> None:
    seeded = seed(flag_on.engine, users_count=15, days=40, corrupt=0.5, now=NOW)

    def cancel(p: Progress) -> None:
        if p.processed_users == 5:
            flag_on.cancel_bulk_rebuild(p.operation_id)

    result = flag_on.bulk_rebuild_users(seeded.user_ids, REAL, progress=cancel)
    op = result.operation_id
    with flag_on.engine.begin() as conn:  # as a release without tallies left it
        conn.execute(text("DELETE FROM ops_operation_tallies WHERE operation_id = :op"), {"op": op})
    with flag_on.engine.connect() as conn:  # counted from its items meanwhile
        counts = ledger.item_counts(conn, op)
        assert (counts.pending, counts.completed) == (recount(conn, op)["pending"], 5) == (10, 5)

    resumed = flag_on.resume_bulk_rebuild(op)  # tallied once, at the takeover

    assert resumed.status == "completed"
    assert assert_exact(flag_on, op)["completed"] == 15


def test_an_older_database_gains_the_tallies_and_the_index(storage: Storage) -> None:
    with storage.engine.begin() as conn:
        conn.execute(text("DROP TABLE ops_operation_tallies"))
        conn.execute(text("DROP INDEX ix_ops_items_finished"))
    with pytest.raises(SchemaError, match="ops_operation_tallies"):
        storage.check_schema()

    storage.create_schema()

    names = {i["name"] for i in inspect(storage.engine).get_indexes("ops_operation_items")}
    assert "ix_ops_items_finished" in names
    add_user(storage, "u1", ["2024-03-01"])
    result = storage.bulk_rebuild_users(["u1"], BulkConfig(dry_run=False, ignore_feature_flag=True))
    assert assert_exact(storage, result.operation_id)["completed"] == 1


# ---------------------------------------------------------------------------- the ETA's window


def test_recent_finishes_match_a_full_grouping_when_the_window_cuts_a_batch(
    flag_on: Storage, clock: MutableClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    seeded = seed(flag_on.engine, users_count=23, days=20, now=NOW, with_runs=False)
    result = flag_on.bulk_rebuild_users(seeded.user_ids, REAL, progress=lambda _p: clock.advance(seconds=10))
    monkeypatch.setattr(ledger, "RATE_WINDOW_ITEMS", 7)  # 5 + 2 of the batch before: cut

    with flag_on.engine.connect() as conn:
        got = ledger.recent_finishes(conn, result.operation_id)
        every = conn.execute(
            text(
                "SELECT finished_at, count(*) FROM ops_operation_items WHERE operation_id = :op "
                "GROUP BY finished_at ORDER BY finished_at"
            ),
            {"op": result.operation_id},
        ).all()
    expected = [
        (as_utc(at if isinstance(at, datetime) else datetime.fromisoformat(at)), n) for at, n in every
    ]
    assert len(expected) == 5
    assert got == expected[-2:]  # the newest batch and the one the window cut, counted whole


# ---------------------------------------------------------------------------- plans


def _walk(plan: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield plan
    for child in plan.get("Plans", []):
        yield from _walk(child)


@pytest.mark.parametrize("backend", [pytest.param("postgres", marks=pytest.mark.postgres)], indirect=True)
def test_counting_and_the_eta_do_not_scan_the_items(
    flag_on: Storage, monkeypatch: pytest.MonkeyPatch
) -> None:
    users_count, batch = 4000, 100
    with flag_on.engine.begin() as conn:
        conn.execute(
            text("INSERT INTO users (id) SELECT 'u' || g FROM generate_series(1, :n) g"), {"n": users_count}
        )
    owner = Owner("here", 1, "1/t")
    for op in ("op-a", "op-b"):  # two operations: the items of one are half the table
        with write_transaction(flag_on.engine) as conn:
            ledger.create_operation(
                conn, op, kind="bulk_rebuild", dry_run=False, config={}, user_ids=None, owner=owner, now=NOW
            )
    with flag_on.engine.begin() as conn:  # op-a: every batch finished, a second apart
        conn.execute(
            text(
                "UPDATE ops_operation_items SET status = 'completed', changed = false, duration_ms = 1, "
                "finished_at = :now + make_interval(secs => (position - 1) / :batch) "
                "WHERE operation_id = 'op-a'"
            ),
            {"now": NOW, "batch": batch},
        )
        ledger.add_tallies(conn, "op-a", "pending", "completed", users_count, duration_ms=float(users_count))
    with flag_on.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text("VACUUM ANALYZE ops_operation_items"))
        conn.execute(text("VACUUM ANALYZE ops_operation_tallies"))
    monkeypatch.setattr(ledger, "RATE_WINDOW_ITEMS", 5 * batch)

    statements: list[tuple[str, Any]] = []

    def note(_conn: Any, _cursor: Any, statement: str, parameters: Any, _context: Any, _many: bool) -> None:
        statements.append((statement, parameters))

    with flag_on.engine.connect() as conn:
        event.listen(conn, "before_cursor_execute", note)
        counts = ledger.item_counts(conn, "op-a")
        finishes = ledger.recent_finishes(conn, "op-a")
        event.remove(conn, "before_cursor_execute", note)
        assert (counts.completed, counts.total) == (users_count, users_count)
        assert [n for _, n in finishes] == [batch] * 5
        assert len(statements) == 3  # the counts; the window; the cut batch counted whole
        for statement, parameters in statements:
            (plan,) = conn.exec_driver_sql("EXPLAIN (ANALYZE, FORMAT JSON) " + statement, parameters).one()
            nodes = list(_walk((json.loads(plan) if isinstance(plan, str) else plan)[0]["Plan"]))
            on_items = [n for n in nodes if n.get("Relation Name") == "ops_operation_items"]
            assert not any(n["Node Type"] == "Seq Scan" for n in on_items), statement
            # At most the window and one batch: never the operation's 4000 items.
            assert sum(n["Actual Rows"] * n.get("Actual Loops", 1) for n in on_items) <= 5 * batch, statement


@pytest.mark.parametrize("backend", [pytest.param("postgres", marks=pytest.mark.postgres)], indirect=True)
def test_the_catch_up_counts_read_only_the_users_they_count(flag_on: Storage) -> None:
    """Every progress read counts the caught-up and late users: not the row per rebuilt user."""
    rebuilt, caught, late = 4000, 7, 3
    with flag_on.engine.begin() as conn:
        for op in ("op-a", "op-b"):  # two operations: one's rows are half the table
            conn.execute(
                text(
                    "INSERT INTO ops_capture_seen (operation_id, user_id, position, caught_up) "
                    "SELECT :op, 'u' || g, g, CASE WHEN g <= :caught THEN 1 ELSE 0 END "
                    "FROM generate_series(1, :n) g"
                ),
                {"op": op, "n": rebuilt, "caught": caught},
            )
        conn.execute(
            text(
                "UPDATE ops_capture_seen SET late_position = position + 1, late_changed_at = :now "
                "WHERE operation_id = 'op-a' AND user_id IN ('u100', 'u200', 'u300')"
            ),
            {"now": NOW},
        )
    with flag_on.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text("VACUUM ANALYZE ops_capture_seen"))
        expected = conn.execute(
            text(
                "SELECT count(*) FILTER (WHERE caught_up > 0), "
                "count(*) FILTER (WHERE late_position IS NOT NULL) "
                "FROM ops_capture_seen WHERE operation_id = 'op-a'"
            )
        ).one()
        assert tuple(expected) == (caught, late)

    statements: list[tuple[str, Any]] = []

    def note(_conn: Any, _cursor: Any, statement: str, parameters: Any, _context: Any, _many: bool) -> None:
        statements.append((statement, parameters))

    with flag_on.engine.connect() as conn:
        event.listen(conn, "before_cursor_execute", note)
        counts = capture.catch_up_counts(conn, "op-a")
        event.remove(conn, "before_cursor_execute", note)
        assert (counts.caught_up_users, counts.late_users) == (caught, late)
        [(statement, parameters)] = statements
        (plan,) = conn.exec_driver_sql("EXPLAIN (ANALYZE, FORMAT JSON) " + statement, parameters).one()
        nodes = list(_walk((json.loads(plan) if isinstance(plan, str) else plan)[0]["Plan"]))
        on_seen = [n for n in nodes if n.get("Relation Name") == "ops_capture_seen"]
        assert on_seen and not any(n["Node Type"] == "Seq Scan" for n in on_seen)
        read = sum(n["Actual Rows"] * n.get("Actual Loops", 1) for n in on_seen)
        assert read <= caught + late  # the users counted, never the 4000 rebuilt


def test_the_result_lists_read_at_most_their_cap(flag_on: Storage, monkeypatch: pytest.MonkeyPatch) -> None:
    """A bulk that changes every user lists the first MAX_LISTED changes, read no further."""
    from potato_ops.ops.bulk import results

    seeded = seed(flag_on.engine, users_count=12, days=20, now=NOW)
    with flag_on.engine.begin() as conn:
        conn.execute(text("DELETE FROM runs"))  # every user's runs missing: all 12 change
    monkeypatch.setattr(results, "MAX_LISTED", 5)
    fetched: list[int] = []
    real = ledger._item_rows

    def counted(*args: Any, **kwargs: Any) -> list[Any]:
        rows = real(*args, **kwargs)
        fetched.append(len(rows))
        return rows

    monkeypatch.setattr(ledger, "_item_rows", counted)
    result = flag_on.bulk_rebuild_users(seeded.user_ids, REAL)
    assert (result.status, result.users_changed) == ("completed", 12)
    with flag_on.engine.connect() as conn:
        first = [
            uid
            for (uid,) in conn.execute(
                text(
                    "SELECT user_id FROM ops_operation_items WHERE operation_id = :op AND changed "
                    "ORDER BY position LIMIT 5"
                ),
                {"op": result.operation_id},
            )
        ]
    assert [c.user_id for c in result.changes] == first
    assert fetched and max(fetched) <= 5  # the rows read, not only the rows kept
