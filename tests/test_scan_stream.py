"""The whole-database scan reads the active-flag candidates as a stream, not a list.

Over a whole database there is about one candidate per user (each user's latest run), so a
list of them grows with the user count: about 600 MB at a million users. The candidates are
read a window at a time: on PostgreSQL through a server-side cursor, seen open in
``pg_cursors`` while the first candidates are being used. What they hold is checked against
the test's own SQL.
"""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import insert, text

from potato_ops import Storage
from potato_ops.db import active_flags
from potato_ops.db.schema import runs
from potato_ops.ops.scan import count_wrong_flags, flag_rows
from tests.conftest import NOW, add_user

TODAY = NOW.date()
USERS = 40


def _populate(storage: Storage) -> int:
    """Users with one old run and one recent run (flagged wrong for every third); return the wrong."""
    wrong = 0
    for i in range(USERS):
        uid = f"u{i:03d}"
        add_user(storage, uid)
        recent_active = i % 3 != 0  # every third user's current run is flagged inactive: wrong
        wrong += 0 if recent_active else 1
        with storage.engine.begin() as conn:
            old = TODAY - timedelta(days=100)
            conn.execute(
                insert(runs).values(user_id=uid, start_date=old, end_date=old, day_count=1, active=False)
            )
            conn.execute(
                insert(runs).values(
                    user_id=uid, start_date=TODAY, end_date=TODAY, day_count=1, active=recent_active
                )
            )
    return wrong


def test_flag_rows_stream_and_hold_every_candidate(
    storage: Storage, backend: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    wrong = _populate(storage)
    monkeypatch.setattr(active_flags, "STREAM_ROWS", 7)
    with storage.engine.connect() as conn:
        with conn.begin():
            stream = flag_rows(conn, None, NOW)
            first = next(stream)
            if backend == "postgres":
                cursors = conn.execute(text("SELECT count(*) FROM pg_cursors")).scalar_one()
                assert cursors == 1, "the candidates are not read through a server-side cursor"
            rows = [first, *stream]
        expected = conn.execute(
            text("SELECT id FROM runs WHERE active OR end_date >= :d"), {"d": TODAY - timedelta(days=3)}
        ).scalars()
        assert sorted(r.id for r in rows) == sorted(expected)
        assert len(rows) == USERS
        assert sum(1 for r in rows if r.wrong) == wrong
        assert count_wrong_flags(conn, NOW) == wrong
