"""One chunk of seeded rows, held in the form its database loads fastest, and its writer.

Rows are tuples of the values SQLAlchemy itself stores on SQLite (ISO date strings, 0/1
booleans), which PostgreSQL's COPY accepts as they are: the driver's COPY or executemany takes
them with no per-row conversion layer in between.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date, timedelta
from typing import TYPE_CHECKING, Any

from potato_ops.db.capture import capture_paused
from potato_ops.db.engine import is_postgres

if TYPE_CHECKING:
    from sqlalchemy import Connection

# An orphan run: a missing user's three days ending 38 days before the seed's last day.
ORPHAN_START_DAYS_BACK = 40
ORPHAN_DAYS = 3


@dataclass
class SeedChunk:
    """Rows of whole users waiting to be written."""

    first: date
    days: int
    end: date
    users: list[tuple[str, str, str]] = field(default_factory=list)
    marks: list[tuple[str, str, int]] = field(default_factory=list)
    runs: list[tuple[str, str, str, int, int]] = field(default_factory=list)
    rows: int = 0  # marks held, whatever the form

    def __post_init__(self) -> None:
        self._day = [(self.first + timedelta(days=k)).isoformat() for k in range(self.days)]

    def add_user(
        self,
        uid: str,
        email: str,
        tz: str,
        marked: list[int],
        unmarked: list[int],
        user_runs: list[list[int]],
    ) -> None:
        """Hold one user's row, marks (marked, then un-marked rows) and runs."""
        day = self._day
        self.users.append((uid, email, tz))
        self.marks.extend([(uid, day[k], 1) for k in marked])
        self.marks.extend([(uid, day[k], 0) for k in unmarked])
        self.runs.extend([(uid, day[s], day[e], n, a) for s, e, n, a in user_runs])
        self.rows += len(marked) + len(unmarked)

    def add_orphan(self, ghost: str) -> None:
        """Hold a run whose user does not exist."""
        start = self.end - timedelta(days=ORPHAN_START_DAYS_BACK)
        stop = start + timedelta(days=ORPHAN_DAYS - 1)
        self.runs.append((ghost, start.isoformat(), stop.isoformat(), ORPHAN_DAYS, 0))


def write_chunk(conn: Connection, chunk: SeedChunk) -> tuple[int, int]:
    """Return (marks, runs) written: the chunk's users, marks and runs, in that order."""
    with capture_paused(conn):  # new users, written with their right runs: nothing to catch up
        return _write(conn, chunk)


def _write(conn: Connection, chunk: SeedChunk) -> tuple[int, int]:
    raw = conn.connection.driver_connection
    assert raw is not None
    if is_postgres(conn):
        with raw.cursor() as cur:
            _copy(cur, "users (id, email, timezone)", chunk.users)
            _copy(cur, "day_marks (user_id, date, value)", chunk.marks)
            _copy(cur, "runs (user_id, start_date, end_date, day_count, active)", chunk.runs)
    else:
        cur = raw.cursor()
        try:
            cur.executemany("INSERT INTO users (id, email, timezone) VALUES (?, ?, ?)", chunk.users)
            cur.executemany("INSERT INTO day_marks (user_id, date, value) VALUES (?, ?, ?)", chunk.marks)
            cur.executemany(
                "INSERT INTO runs (user_id, start_date, end_date, day_count, active) VALUES (?, ?, ?, ?, ?)",
                chunk.runs,
            )
        finally:
            cur.close()
    return len(chunk.marks), len(chunk.runs)


def _copy(cur: Any, target: str, rows: Sequence[tuple[object, ...]]) -> None:
    with cur.copy(f"COPY {target} FROM STDIN") as copy:
        for row in rows:
            copy.write_row(row)
