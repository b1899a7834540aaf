"""Seeding with several workers: chunks written at once on PostgreSQL, the same rows, flat memory."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from sqlalchemy import Engine, event, func, insert, select
from typer.testing import CliRunner

import potato_ops.demo.synth as synth
from potato_ops import Storage
from potato_ops.cli import app
from potato_ops.db.schema import day_marks, users
from potato_ops.db.seed_sink import SeedChunk
from potato_ops.demo.synth import SeedResult, seed
from tests.conftest import MutableClock
from tests.test_seed import Dump, _dump, _empty

USERS, DAYS, CHUNK_ROWS = 60, 40, 90  # a chunk every few users: many chunks


def _rows(storage: Storage) -> Dump:
    """Return the seeded rows sorted, runs without their ids (commit order assigns those)."""
    return _dump(storage, run_ids=False)


def _seed(
    storage: Storage, clock: MutableClock, workers: int, progress: list[int] | None = None
) -> SeedResult:
    return seed(
        storage.engine,
        users_count=USERS,
        days=DAYS,
        corrupt=0.2,
        seed_value=11,
        now=clock(),
        chunk_rows=CHUNK_ROWS,
        workers=workers,
        progress=progress.append if progress is not None else None,
    )


class _Overlap:
    """Counts the writing transactions open at once; each commit lingers so that they can overlap."""

    def __init__(self, engine: Engine, linger: float = 0.02) -> None:
        self.lock = threading.Lock()
        self.open = self.most = self.commits = 0
        self.engine, self.linger = engine, linger

    def begin(self, conn: Any) -> None:
        with self.lock:
            self.open += 1
            self.most = max(self.most, self.open)

    def commit(self, conn: Any) -> None:
        time.sleep(self.linger)
        with self.lock:
            self.open -= 1
            self.commits += 1

    def __enter__(self) -> _Overlap:
        event.listen(self.engine, "begin", self.begin)
        event.listen(self.engine, "commit", self.commit)
        event.listen(self.engine, "rollback", self.rollback)
        return self

    def rollback(self, conn: Any) -> None:
        with self.lock:
            self.open -= 1

    def __exit__(self, *exc: object) -> None:
        event.remove(self.engine, "begin", self.begin)
        event.remove(self.engine, "commit", self.commit)
        event.remove(self.engine, "rollback", self.rollback)


def test_workers_write_the_same_rows_at_once(storage: Storage, clock: MutableClock) -> None:
    if storage.dialect != "postgresql":
        with pytest.raises(ValueError, match="needs PostgreSQL"):
            _seed(storage, clock, workers=2)
        assert _rows(storage) == {"users": [], "day_marks": [], "runs": []}
        return
    with _Overlap(storage.engine) as one_at_a_time:
        one = _seed(storage, clock, workers=1)
    expected = _rows(storage)
    _empty(storage)
    progress: list[int] = []
    with _Overlap(storage.engine) as three:
        many = _seed(storage, clock, workers=3, progress=progress)

    assert _rows(storage) == expected
    assert len(expected["users"]) == USERS and len(expected["day_marks"]) == one.marks_written
    assert (many.marks_written, many.runs_written) == (one.marks_written, one.runs_written)
    assert many.corrupted == one.corrupted and len(many.corrupted) == 12
    assert sum(progress) == USERS and len(progress) == three.commits > 5
    assert one_at_a_time.most == 1
    assert three.most >= 2  # chunks really were written at once


@pytest.mark.parametrize("backend", ["postgres"], indirect=True)  # SQLite refuses workers (above)
def test_workers_hold_a_bounded_window_of_chunks(
    storage: Storage, clock: MutableClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    made = synth.generate
    ahead: list[int] = []
    overlap = _Overlap(storage.engine, linger=0.01)

    def counting(plan: synth.SeedPlan, corrupted: dict[str, str]) -> Iterator[SeedChunk]:
        for n, chunk in enumerate(made(plan, corrupted), start=1):
            with overlap.lock:
                ahead.append(n - overlap.commits)  # chunks made and not yet committed
            yield chunk

    monkeypatch.setattr(synth, "generate", counting)
    with overlap:
        _seed(storage, clock, workers=2)
    assert len(ahead) > 5
    assert max(ahead) <= 2 * 2 + 1  # the window of two per worker, plus the chunk just made


@pytest.mark.parametrize("backend", ["postgres"], indirect=True)
def test_a_failing_chunk_stops_the_seed_and_leaves_whole_users(storage: Storage, clock: MutableClock) -> None:
    _seed(storage, clock, workers=1)
    reference = _rows(storage)
    marks_of: dict[object, int] = {}
    for uid, *_ in reference["day_marks"]:
        marks_of[uid] = marks_of.get(uid, 0) + 1
    clash = reference["users"][USERS // 2]
    _empty(storage)
    with storage.engine.begin() as conn:  # a user already there: its chunk's COPY fails
        conn.execute(insert(users).values(id=clash[0], email="taken@example.com", timezone="UTC"))

    with pytest.raises(psycopg.errors.UniqueViolation):  # the COPY's own error, as with one worker
        _seed(storage, clock, workers=3)

    after = _rows(storage)
    stored = {uid for uid, *_ in after["users"]} - {clash[0]}
    assert 0 < len(stored) < USERS - 1
    got: dict[object, int] = {}
    for uid, *_ in after["day_marks"]:
        got[uid] = got.get(uid, 0) + 1
    assert got == {uid: marks_of[uid] for uid in stored}  # every user written is whole
    with storage.engine.connect() as conn:  # nothing goes on writing after the error
        before = conn.execute(select(func.count()).select_from(day_marks)).scalar_one()
    time.sleep(0.2)
    with storage.engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(day_marks)).scalar_one() == before


def test_the_command_refuses_workers_on_sqlite_and_writes_nothing(tmp_path: Path) -> None:
    path = tmp_path / "seed.sqlite3"
    result = CliRunner().invoke(
        app, ["seed", "--users", "10", "--workers", "2", "--database-url", f"sqlite:///{path}"]
    )
    assert result.exit_code == 2, result.output
    assert "needs PostgreSQL" in result.output
    assert not path.exists() or path.stat().st_size == 0


@pytest.mark.parametrize("backend", ["postgres"], indirect=True)
def test_the_command_seeds_with_workers_on_postgres(storage: Storage, db_url: str) -> None:
    result = CliRunner().invoke(
        app, ["seed", "--users", "30", "--days", "20", "--workers", "2", "--database-url", db_url]
    )
    assert result.exit_code == 0, result.output
    with storage.engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(users)).scalar_one() == 30
        per_user = conn.execute(
            select(func.count(func.distinct(day_marks.c.user_id))).select_from(day_marks)
        ).scalar_one()
    assert per_user == 30
