"""Stale planner statistics are found as a mass change leaves them, and the bulk refreshes them."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy import text

from potato_ops import BulkConfig, Storage, fixed_clock
from potato_ops.db.schema import RUNS_V2_FLAG
from potato_ops.db.statistics import stale_tables
from potato_ops.ops.bulk.statistics import freshen_statistics
from tests.conftest import NOW, add_runs, add_user, drop_pg_database, fresh_pg_database


@pytest.fixture
def own_storage(backend: str, tmp_path: object) -> Iterator[Storage]:
    """Storage on a database of its own (its statistics owe nothing to other tests)."""
    if backend == "postgres":
        url, admin = fresh_pg_database()
    else:
        url, admin = f"sqlite:///{tmp_path}/stats.sqlite3", None
    storage = Storage.connect(url, clock=fixed_clock(NOW))
    storage.create_schema()
    yield storage
    storage.close()
    if admin is not None:
        drop_pg_database(url, admin)


def _users(storage: Storage, count: int) -> None:
    for n in range(count):
        uid = f"u{n:03d}"
        add_user(storage, uid, ["2024-03-01", "2024-03-02", "2024-03-04"])
        add_runs(storage, uid, [("2024-03-01", "2024-03-02"), ("2024-03-04", "2024-03-04")])


def _flush(storage: Storage) -> None:
    """Make the counts of changed rows visible in pg_stat_user_tables now.

    A session reports its counts as it goes idle, at most once a second unless forced; the
    writes above ran one after another on the pool's one connection, which this forces.
    """
    with storage.engine.begin() as conn:
        conn.execute(text("SELECT pg_stat_force_next_flush()"))


def _analyze(storage: Storage) -> None:
    with storage.engine.begin() as conn:
        conn.execute(text("ANALYZE"))


def _stale(storage: Storage) -> list[str]:
    with storage.engine.connect() as conn:
        return [t for t in stale_tables(conn) if t in ("users", "day_marks", "runs")]


def test_stale_after_writes_fresh_after_analyze_stale_after_a_mass_rewrite(own_storage: Storage) -> None:
    storage = own_storage
    _users(storage, 60)
    if storage.dialect == "sqlite":
        assert _stale(storage) == []  # SQLite's planner needs none for keyed lookups
        assert freshen_statistics(storage.engine) == []
        return
    _flush(storage)
    assert _stale(storage) == ["day_marks", "runs", "users"]  # written, never analyzed
    _analyze(storage)
    _flush(storage)
    assert _stale(storage) == []
    with storage.engine.begin() as conn:  # a few runs changed: under the threshold
        conn.execute(text("UPDATE runs SET active = false WHERE user_id IN ('u001', 'u002')"))
    _flush(storage)
    assert _stale(storage) == []
    with storage.engine.begin() as conn:  # every run deleted and inserted again
        conn.execute(text("CREATE TEMPORARY TABLE kept AS SELECT * FROM runs"))
        conn.execute(text("DELETE FROM runs"))
        conn.execute(
            text(
                "INSERT INTO runs (user_id, start_date, end_date, day_count, active) "
                "SELECT user_id, start_date, end_date, day_count, active FROM kept"
            )
        )
    _flush(storage)
    assert _stale(storage) == ["runs"]


@pytest.mark.postgres
@pytest.mark.parametrize("backend", ["postgres"])
def test_a_bulk_run_analyzes_what_is_stale_before_its_first_batch(own_storage: Storage) -> None:
    storage = own_storage
    _users(storage, 60)
    storage.set_feature_flag(RUNS_V2_FLAG, True)
    _flush(storage)
    assert _stale(storage) == ["day_marks", "runs", "users"]
    ids = [u.id for u in storage.get_all_users()]
    result = storage.bulk_rebuild_users(ids, BulkConfig(batch_size=20, max_workers=2, dry_run=True))
    assert result.status == "completed"
    with storage.engine.connect() as conn:
        analyzed = conn.execute(
            text(
                "SELECT relname FROM pg_stat_user_tables WHERE last_analyze IS NOT NULL "
                "AND relname IN ('users', 'day_marks', 'runs') ORDER BY relname"
            )
        ).scalars()
        assert list(analyzed) == ["day_marks", "runs", "users"]
