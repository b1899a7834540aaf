"""The whole-database comparison reads a key range of users per statement, each by index.

A statement over the whole database needs temporary storage of about a third of the database's
size for its sorts and differences (28 GB at a million users x 365 days on PostgreSQL). The scan
compares ``RANGE_USERS`` users at a time instead, so the storage is a range's; that is linear
only if each range's statement reads its own users by index, not the whole table again. Every
comparison statement is explained as it runs, with the statistics fresh, left stale by a mass
rewrite and never taken (the states of ``test_bulk_plans``), on a database of 5,000 users
compared 100 at a time.
"""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import event, text

from potato_ops import Storage
from potato_ops.db import grouping
from potato_ops.db.grouping import differing_users
from tests.test_bulk_plans import USERS, _explain, _prepare, _scans_whole, pg_fresh_url

__all__ = ["pg_fresh_url"]  # the fixture, used by name
RANGE = 100


def _compare_and_check(storage: Storage, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(grouping, "RANGE_USERS", RANGE)
    plans: list[tuple[str, str]] = []
    dialect = storage.dialect

    def _before(_conn: Any, cursor: Any, statement: str, parameters: Any, _ctx: Any, _many: bool) -> None:
        if "AS MATERIALIZED" in statement:
            plans.append((statement, _explain(cursor, dialect, statement, parameters)))

    event.listen(storage.engine, "before_cursor_execute", _before)
    try:
        with storage.engine.connect() as conn:
            found = differing_users(conn, None)
            ids = [uid for (uid,) in conn.execute(text("SELECT id FROM users ORDER BY id")).all()]
    finally:
        event.remove(storage.engine, "before_cursor_execute", _before)
    assert found == set(ids[::100])  # the users _prepare damaged: every hundredth
    assert len(plans) == USERS // RANGE + 1  # a statement per range, the last open-ended
    scans = [s[:200] + "\n" + p for s, p in plans if _scans_whole(dialect, s, p)]
    assert not scans, f"{len(scans)} of {len(plans)} range statements scan a whole table:\n{scans[0]}"


@pytest.mark.postgres
@pytest.mark.parametrize("state", ["fresh", "rewritten", "never analyzed"])
def test_postgres_ranges_read_their_users_by_index(
    pg_fresh_url: str, state: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    storage = _prepare(pg_fresh_url, state)
    try:
        _compare_and_check(storage, monkeypatch)
    finally:
        storage.close()


@pytest.mark.parametrize("state", ["fresh", "never analyzed"])
def test_sqlite_ranges_read_their_users_by_index(
    tmp_path: Any, state: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    storage = _prepare(f"sqlite:///{tmp_path / 'plans.sqlite3'}", state)
    try:
        _compare_and_check(storage, monkeypatch)
    finally:
        storage.close()
