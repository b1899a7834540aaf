"""Every statement a bulk batch issues looks rows up by the batch's users: no whole-table scan.

The bulk's worker threads' statements are captured as they run (a ``before_cursor_execute``
hook) and explained on the same connection, in the same transaction, with the same
parameters: PostgreSQL's ``EXPLAIN`` and SQLite's ``EXPLAIN QUERY PLAN`` must show no
sequential scan of ``day_marks``, ``runs`` or the ledger's items and batches.

What makes this meaningful: a batch holds 1% of the users (so a scan of the table costs the
planner far more than the batch's index lookups, and it picks a scan only when its statistics
mislead it), the ledger holds an earlier operation, and the PostgreSQL statistics are in one of
three states a bulk meets:

* fresh: ANALYZE after the data was written;
* rewritten: analyzed once, then every run deleted and inserted again by one set-based
  statement and nothing analyzed since (what a mass repair or an incident leaves);
* never analyzed: written and never analyzed (a new database, autovacuum off or behind).

With stale statistics PostgreSQL's planner takes a batch's ``user_id IN (...)`` for most of the
table and scans it; the bulk must notice and ANALYZE before its first batch.
"""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import create_engine, event, insert, text

from potato_ops import BulkConfig, Storage, fixed_clock
from potato_ops.db.schema import RUNS_V2_FLAG, ops_operation_batches, ops_operation_items
from potato_ops.demo.synth import seed
from potato_ops.ops.bulk.api import bulk_rebuild_users
from tests.conftest import NOW, drop_pg_database, fresh_pg_database

USERS = 5000
DAYS = 60
BATCH = 100  # 2% of the users, an IN list of 100 ids
WATCHED = ("day_marks", "runs", "ops_operation_items", "ops_operation_batches")
_PG_SCAN = re.compile(rf"Seq Scan on ({'|'.join(WATCHED)})\b")
_KEYWORDS = {"WHERE", "SET", "VALUES", "ON", "JOIN", "LEFT", "INNER", "CROSS", "GROUP", "ORDER", "UNION"}
_KEYWORDS |= {"EXCEPT", "LIMIT", "FOR", "RETURNING", "AND", "OR", "USING"}
_DML = re.compile(r"^\s*(SELECT|WITH|INSERT|UPDATE|DELETE)\b", re.IGNORECASE)


class PlanLog:
    """The plans of the statements the bulk's worker threads issued."""

    def __init__(self) -> None:
        self.plans: list[tuple[str, str]] = []  # (statement, plan text)
        self._lock = threading.Lock()

    def add(self, statement: str, plan: str) -> None:
        with self._lock:
            self.plans.append((statement, plan))

    def scans(self, dialect: str) -> list[tuple[str, str]]:
        """Return (statement, plan) of each plan that scans a watched table whole."""
        return [(s, p) for s, p in self.plans if _scans_whole(dialect, s, p)]


def _scans_whole(dialect: str, statement: str, plan: str) -> bool:
    if dialect == "postgresql":
        return bool(_PG_SCAN.search(plan))
    # SQLite names a table by its alias in a plan: SCAN (no SEARCH) of a watched table is whole.
    names = set(WATCHED)
    for alias in re.findall(rf"\b(?:{'|'.join(WATCHED)})\s+(?:AS\s+)?(\w+)", statement, re.IGNORECASE):
        if alias.upper() not in _KEYWORDS:
            names.add(alias)
    return any(re.match(rf"SCAN ({'|'.join(names)})\b", line) for line in plan.splitlines())


def _explain(cursor: Any, dialect: str, statement: str, parameters: Any) -> str:
    explain = cursor.connection.cursor()
    try:
        if dialect == "postgresql":
            explain.execute("EXPLAIN " + statement, parameters)
            return "\n".join(row[0] for row in explain.fetchall())
        explain.execute("EXPLAIN QUERY PLAN " + statement, parameters)
        return "\n".join(row[3] for row in explain.fetchall())
    finally:
        explain.close()


def capture_plans(storage: Storage) -> PlanLog:
    """Explain every statement a bulk worker thread issues on ``storage``'s engine."""
    found = PlanLog()
    dialect = storage.dialect

    @event.listens_for(storage.engine, "before_cursor_execute")
    def _before(_conn: Any, cursor: Any, statement: str, parameters: Any, _ctx: Any, many: bool) -> None:
        if not threading.current_thread().name.startswith("potato-bulk-") or not _DML.match(statement):
            return
        params = parameters[0] if many and parameters else parameters
        found.add(statement, _explain(cursor, dialect, statement, params))

    return found


@pytest.fixture
def pg_fresh_url() -> Iterator[str]:
    """A database of its own: its statistics start from nothing, whatever other tests did."""
    url, admin = fresh_pg_database()
    yield url
    drop_pg_database(url, admin)


def _analyze(storage: Storage) -> None:
    if storage.dialect == "postgresql":
        with storage.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(text("VACUUM ANALYZE"))
    else:
        with storage.engine.begin() as conn:
            conn.execute(text("ANALYZE"))


def _rewrite_runs(storage: Storage) -> None:
    """Delete every run and insert them again in one statement, as a mass repair would."""
    cols = "user_id, start_date, end_date, day_count, active"
    with storage.engine.begin() as conn:
        conn.execute(text(f"CREATE TEMPORARY TABLE kept AS SELECT {cols} FROM runs"))
        conn.execute(text("DELETE FROM runs"))
        # In no particular order, as a hash aggregate's output would come.
        conn.execute(text(f"INSERT INTO runs ({cols}) SELECT {cols} FROM kept ORDER BY user_id, start_date"))
        conn.execute(text("DROP TABLE kept"))
        # This session's counts of changed rows reach pg_stat_user_tables as it commits.
        conn.execute(text("SELECT pg_stat_force_next_flush()"))


def _damage(storage: Storage, share: int = 100) -> int:
    """Give every ``share``-th user's first run a wrong day_count; return how many users."""
    with storage.engine.begin() as conn:
        ids = [uid for (uid,) in conn.execute(text("SELECT id FROM users ORDER BY id")).all()][::share]
        for uid in ids:
            conn.execute(
                text(
                    "UPDATE runs SET day_count = day_count + 1 WHERE user_id = :u AND start_date = "
                    "(SELECT min(start_date) FROM runs WHERE user_id = :u)"
                ),
                {"u": uid},
            )
    return len(ids)


def _past_operations(storage: Storage, operations: int = 4, batches: int = 5000) -> None:
    """Add earlier operations' finished items and batches to the ledger, as a database that has
    seen a few holds: the running operation's rows are then not the whole of either table.
    """
    with storage.engine.begin() as conn:
        ids = [uid for (uid,) in conn.execute(text("SELECT id FROM users ORDER BY id")).all()]
        for k in range(operations):
            op = f"past-{k}"
            conn.execute(
                insert(ops_operation_items),
                [
                    {"operation_id": op, "user_id": u, "position": n, "status": "completed", "attempts": 1}
                    for n, u in enumerate(ids, start=1)
                ],
            )
            conn.execute(
                insert(ops_operation_batches),
                [{"operation_id": op, "batch_no": n, "status": "done"} for n in range(batches)],
            )


def _prepare(url: str, state: str) -> Storage:
    storage = Storage.connect(url, clock=fixed_clock(NOW))
    storage.create_schema()
    seed(storage.engine, users_count=USERS, days=DAYS, now=NOW)
    storage.set_feature_flag(RUNS_V2_FLAG, True)
    _past_operations(storage)
    if state == "rewritten":
        _analyze(storage)
        _rewrite_runs(storage)
    damaged = _damage(storage)
    assert damaged == USERS // 100
    if state == "fresh":
        _analyze(storage)
    return storage


def _run_and_check(storage: Storage) -> None:
    plans = capture_plans(storage)
    config = BulkConfig(batch_size=BATCH, max_workers=2, dry_run=False)
    result = bulk_rebuild_users(storage.database, None, config)
    assert (result.status, result.completed_users, result.users_changed) == ("completed", USERS, USERS // 100)
    assert len(plans.plans) > USERS // BATCH  # every batch's statements were explained
    scans = plans.scans(storage.dialect)
    shown = "\n\n".join(f"{s[:300]}\n{p}" for s, p in {s[:200]: (s, p) for s, p in scans}.values())
    assert not scans, f"{len(scans)} of {len(plans.plans)} batch statements scan a whole table:\n{shown}"


@pytest.mark.postgres
@pytest.mark.parametrize("state", ["fresh", "rewritten", "never analyzed"])
def test_postgres_batches_look_up_by_user(pg_fresh_url: str, state: str) -> None:
    storage = _prepare(pg_fresh_url, state)
    try:
        _run_and_check(storage)
    finally:
        storage.close()


@pytest.mark.parametrize("state", ["fresh", "never analyzed"])
def test_sqlite_batches_look_up_by_user(tmp_path: Any, state: str) -> None:
    storage = _prepare(f"sqlite:///{tmp_path / 'plans.sqlite3'}", state)
    try:
        _run_and_check(storage)
    finally:
        storage.close()


@pytest.mark.postgres
def test_postgres_batches_compile_nothing(pg_fresh_url: str) -> None:
    """No batch statement is JIT-compiled, even where PostgreSQL would compile every statement.

    With ``jit_above_cost`` at 0 the server compiles any statement JIT may compile; stale
    statistics make a batch's estimates that large in service. A batch's statements each touch
    its users alone, so compiling one costs more than running it: the bulk turns JIT off in its
    batches' transactions, and no plan it runs says ``JIT:``.
    """
    storage = _prepare(pg_fresh_url, "never analyzed")
    database = storage.engine.url.database
    admin = create_engine(storage.engine.url.set(database="postgres"), isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f'ALTER DATABASE "{database}" SET jit_above_cost = 0'))
        storage.engine.dispose()  # new connections take the setting
        with storage.engine.connect() as conn:  # the control: JIT is there, and would be used
            plan = conn.execute(text("EXPLAIN SELECT count(*) FROM runs WHERE user_id = 'x'")).all()
            if not any(row[0].startswith("JIT:") for row in plan):
                why = "this PostgreSQL server has no JIT (its LLVM module is not installed)"
                pytest.fail(why) if os.environ.get("CI") == "true" else pytest.skip(why)
        plans = capture_plans(storage)
        result = bulk_rebuild_users(storage.database, None, BulkConfig(batch_size=BATCH, max_workers=2))
        assert result.status == "completed"
        assert len(plans.plans) > USERS // BATCH
        # The batches' reads and writes of the app's tables; the claims and gate checks around
        # them (a row by key, estimated at next to nothing) are compiled only at a cost of 0.
        data = [(s, p) for s, p in plans.plans if re.search(r"\b(day_marks|runs)\b", s)]
        assert len(data) > USERS // BATCH
        compiled = [s[:200] for s, p in data if "JIT:" in p]
        assert not compiled, f"{len(compiled)} batch statements JIT-compiled, e.g. {compiled[0]}"
    finally:
        admin.dispose()
        storage.close()


def test_sqlite_scan_is_seen_through_an_alias() -> None:
    plan = "SEARCH d USING INDEX x (user_id=?)\nSCAN r"
    assert _scans_whole("sqlite", "SELECT * FROM day_marks AS d JOIN runs r ON 1", plan)
    assert not _scans_whole("sqlite", "WITH r AS (SELECT 1) SELECT * FROM r", "SCAN r")


def test_postgres_seq_scan_is_recognised() -> None:
    assert _scans_whole("postgresql", "", "Hash Join\n  ->  Seq Scan on runs  (cost=0.00..1.00)")
    assert not _scans_whole("postgresql", "", "Seq Scan on runs_archive\nIndex Scan using ix on runs")
