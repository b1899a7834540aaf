"""Stale planner statistics are found as a mass change leaves them, and the bulk refreshes them."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import create_engine, event, text

from potato_ops import BulkConfig, Storage, fixed_clock
from potato_ops.db.schema import RUNS_V2_FLAG
from potato_ops.db.statistics import stale_tables, vacuum_memory_kb, vacuum_tables
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


def _vacuums_of_runs(storage: Storage) -> int:
    with storage.engine.connect() as conn:
        return int(
            conn.execute(
                text("SELECT vacuum_count FROM pg_stat_user_tables WHERE relname = 'runs'")
            ).scalar_one()
        )


def _runs_by_user(storage: Storage) -> list[tuple[str, str, str]]:
    with storage.engine.connect() as conn:
        rows = conn.execute(
            text("SELECT user_id, start_date, end_date FROM runs ORDER BY user_id, start_date")
        )
        return [(u, str(s), str(e)) for u, s, e in rows]


def test_after_every_run_is_deleted_the_bulk_vacuums_runs_then_fills_them(
    own_storage: Storage, caplog: pytest.LogCaptureFixture
) -> None:
    storage = own_storage
    _users(storage, 60)
    storage.set_feature_flag(RUNS_V2_FLAG, True)
    # The runs each user's marks make (2024-03-01..02 and 2024-03-04), written out here.
    expected = sorted(
        (f"u{n:03d}", s, e)
        for n in range(60)
        for s, e in [("2024-03-01", "2024-03-02"), ("2024-03-04", "2024-03-04")]
    )
    with storage.engine.begin() as conn:
        if storage.dialect == "postgresql":  # only the bulk may vacuum it in this test
            conn.execute(text("ALTER TABLE runs SET (autovacuum_enabled = false)"))
        conn.execute(text("DELETE FROM runs"))
    ids = [u.id for u in storage.get_all_users()]
    if storage.dialect == "sqlite":  # no dead rows to speak of: nothing to do but the rebuild
        result = storage.bulk_rebuild_users(ids, BulkConfig(batch_size=20, max_workers=2, dry_run=False))
        assert result.status == "completed"
        assert _runs_by_user(storage) == expected
        return
    _flush(storage)
    before = _vacuums_of_runs(storage)
    with caplog.at_level("WARNING", logger="potato_ops"):
        dry = storage.bulk_rebuild_users(ids, BulkConfig(batch_size=20, max_workers=2, dry_run=True))
    assert dry.status == "completed"
    assert _vacuums_of_runs(storage) == before  # a dry run vacuums nothing, and says so
    assert any("runs" in r.getMessage() and "VACUUM" in r.getMessage() for r in caplog.records)
    result = storage.bulk_rebuild_users(ids, BulkConfig(batch_size=20, max_workers=2, dry_run=False))
    assert result.status == "completed"
    assert _vacuums_of_runs(storage) == before + 1
    assert _runs_by_user(storage) == expected


def test_vacuum_memory_holds_every_dead_row_address_once_never_less_than_now_at_most_1gb() -> None:
    assert vacuum_memory_kb(0, 65536) == 65536
    assert vacuum_memory_kb(1_000_000, 65536) == 65536  # 6 MB of addresses: the default holds them
    big = vacuum_memory_kb(34_294_608, 65536)  # the million-user wipe's dead runs
    assert 34_294_608 * 6 <= big * 1024 <= 34_294_608 * 6 * 1.2
    assert vacuum_memory_kb(10**9, 65536) == 1024 * 1024


@pytest.mark.postgres
@pytest.mark.parametrize("backend", ["postgres"])
def test_vacuum_goes_at_autovacuums_pace_in_one_pass_and_leaves_the_connection_as_it_found_it(
    own_storage: Storage,
) -> None:
    storage = own_storage
    url = storage.engine.url.render_as_string(hide_password=False)
    # One connection (VACUUM's is the next one's), its memory for VACUUM 1 MB: 174,762 addresses.
    one = create_engine(
        url, pool_size=1, max_overflow=0, connect_args={"options": "-c maintenance_work_mem=1MB"}
    )
    seen: list[tuple[str, int]] = []

    @event.listens_for(one, "before_cursor_execute")
    def _settings(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if statement.startswith("VACUUM"):
            cursor.execute(
                "SELECT current_setting('vacuum_cost_delay'), "
                "(SELECT setting FROM pg_settings WHERE name = 'maintenance_work_mem')"
            )
            pace, memory_kb = cursor.fetchone()
            seen.append((pace, int(memory_kb)))

    try:
        with one.begin() as conn:
            autovacuum = conn.execute(text("SHOW autovacuum_vacuum_cost_delay")).scalar_one()
            conn.execute(text("CREATE TABLE scratch (n integer) WITH (autovacuum_enabled = false)"))
            conn.execute(text("INSERT INTO scratch SELECT generate_series(1, 300000)"))
            conn.execute(text("DELETE FROM scratch"))
        with one.begin() as conn:
            conn.execute(text("SELECT pg_stat_force_next_flush()"))
        with one.connect() as conn:
            dead = conn.execute(
                text("SELECT n_dead_tup FROM pg_stat_user_tables WHERE relname = 'scratch'")
            ).scalar_one()
        assert dead == 300000
        assert vacuum_tables(one, ["scratch"]) == ["scratch"]
        ((pace, memory_kb),) = seen
        assert pace == autovacuum
        assert memory_kb * 1024 >= dead * 6 > 1024 * 1024  # every address at once, more than the 1 MB
        with one.connect() as conn:
            assert conn.execute(text("SHOW vacuum_cost_delay")).scalar_one() == "0"
            assert conn.execute(text("SHOW maintenance_work_mem")).scalar_one() == "1MB"
            left = conn.execute(
                text("SELECT n_dead_tup FROM pg_stat_user_tables WHERE relname = 'scratch'")
            ).scalar_one()
        assert left == 0
    finally:
        one.dispose()
