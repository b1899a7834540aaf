"""Synthetic Project Potato data: streaky marks over many timezones, and injected corruption.

``seed`` writes users, day marks (marked and un-marked rows) and correct runs, then corrupts a
fraction of users with one invariant kind each and says which, so detection can be tested for
zero misses and zero false alarms. Kinds the database's constraints refuse (overlap and a
second active run on PostgreSQL, a second active run on SQLite) are skipped on that database.
"""

from __future__ import annotations

import logging
import random
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from itertools import pairwise
from typing import Any

from sqlalchemy import Connection, Engine, Table, delete, insert, select, update

from potato_ops.db.engine import is_postgres
from potato_ops.db.schema import day_marks, runs, users
from potato_ops.domain.dates import local_today
from potato_ops.domain.models import Run, ViolationKind
from potato_ops.domain.runs import expected_runs

log = logging.getLogger("potato_ops")

ZONES: tuple[str, ...] = (
    "Pacific/Kiritimati",
    "Pacific/Pago_Pago",
    "Asia/Kolkata",
    "Australia/Lord_Howe",
    "America/New_York",
    "Europe/London",
    "UTC",
    "Asia/Tokyo",
    "America/Los_Angeles",
    "Europe/Berlin",
    "America/St_Johns",
    "Asia/Kathmandu",
)
# What each database can hold; the others are refused by its constraints.
CORRUPTIONS_POSTGRES: tuple[str, ...] = (
    ViolationKind.MALFORMED,
    ViolationKind.ADJACENT,
    ViolationKind.PHANTOM_DAY,
    ViolationKind.UNCOVERED_DAY,
    ViolationKind.STALE_ACTIVE,
    ViolationKind.ORPHAN,
)
CORRUPTIONS_SQLITE: tuple[str, ...] = (*CORRUPTIONS_POSTGRES, ViolationKind.OVERLAP)


@dataclass(frozen=True)
class SeedResult:
    """What ``seed`` wrote."""

    user_ids: list[str]
    marks_written: int
    runs_written: int
    corrupted: dict[str, str]  # user id -> the invariant kind injected
    end_date: date
    skipped_kinds: list[str] = field(default_factory=list)

    @property
    def corrupted_users(self) -> set[str]:
        """Return the ids of every corrupted user (orphans included)."""
        return set(self.corrupted)


def streaky_days(rng: random.Random, days: int, end: date, density: float = 0.66) -> list[date]:
    """Return marked dates over the days ending at ``end``: streaks, as people keep habits."""
    stay = 0.86  # P(mark tomorrow | marked today): streaks of about a week
    # Chosen so that the long-run share of marked days is ``density``.
    start_again = min(max((1 - stay) * density / (1 - density), 0.05), 0.95)
    marked: list[date] = []
    on = rng.random() < density
    first = end - timedelta(days=days - 1)
    for i in range(days):
        if on:
            marked.append(first + timedelta(days=i))
        on = rng.random() < (stay if on else start_again)
    return marked


def _copy_rows(conn: Connection, table: Table, columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> int:
    """Insert many rows fast: COPY on PostgreSQL, executemany on SQLite."""
    count = 0
    if is_postgres(conn):
        raw = conn.connection.driver_connection
        assert raw is not None
        with (
            raw.cursor() as cur,
            cur.copy(f"COPY {table.name} ({', '.join(columns)}) FROM STDIN") as copy,
        ):
            for row in rows:
                copy.write_row(row)
                count += 1
        return count
    batch = [dict(zip(columns, r, strict=True)) for r in rows]
    if batch:
        conn.execute(insert(table), batch)
    return len(batch)


def seed(
    engine: Engine,
    *,
    users_count: int,
    days: int = 365,
    corrupt: float = 0.0,
    seed_value: int = 42,
    now: datetime,
    unmarked_rows: float = 0.25,
    with_runs: bool = True,
    id_prefix: str = "",
    progress: Callable[[int], object] | None = None,
) -> SeedResult:
    """Write users with streaky marks and correct runs, then corrupt a fraction; say how."""
    if users_count < 0 or days < 1 or not 0 <= corrupt <= 1:
        raise ValueError("users_count >= 0, days >= 1 and 0 <= corrupt <= 1 are required")
    rng = random.Random(seed_value)
    end = now.date()
    ids: list[str] = []
    user_rows: list[tuple[str, str, str]] = []
    mark_rows: list[tuple[str, date, bool]] = []
    run_rows: list[tuple[str, date, date, int, bool]] = []
    for i in range(users_count):
        uid = id_prefix + str(uuid.UUID(int=rng.getrandbits(128), version=4))
        tz = ZONES[i % len(ZONES)] if i < len(ZONES) else rng.choice(ZONES)
        ids.append(uid)
        user_rows.append((uid, f"{id_prefix}user{i:06d}@example.com", tz))
        marked = streaky_days(rng, days, end)
        marked_set = set(marked)
        first = end - timedelta(days=days - 1)
        for k in range(days):
            d = first + timedelta(days=k)
            if d in marked_set:
                mark_rows.append((uid, d, True))
            elif rng.random() < unmarked_rows:
                mark_rows.append((uid, d, False))
        if with_runs:
            today = local_today(tz, now)
            run_rows.extend(
                (uid, r.start_date, r.end_date, r.day_count, r.active)
                for r in expected_runs(uid, marked, today)
            )
        if progress and (i + 1) % 1000 == 0:
            progress(1000)
    with engine.begin() as conn:
        _copy_rows(conn, users, ("id", "email", "timezone"), user_rows)
        marks_written = _copy_rows(conn, day_marks, ("user_id", "date", "value"), mark_rows)
        runs_written = _copy_rows(
            conn, runs, ("user_id", "start_date", "end_date", "day_count", "active"), run_rows
        )
    if progress and users_count % 1000:
        progress(users_count % 1000)
    kinds = CORRUPTIONS_POSTGRES if engine.dialect.name == "postgresql" else CORRUPTIONS_SQLITE
    skipped = sorted(set(CORRUPTIONS_SQLITE) - set(kinds))
    corrupted = inject_corruption(engine, ids, round(users_count * corrupt), kinds, rng, now)
    return SeedResult(ids, marks_written, runs_written, corrupted, end, skipped)


def inject_corruption(
    engine: Engine,
    user_ids: Sequence[str],
    how_many: int,
    kinds: Sequence[str],
    rng: random.Random,
    now: datetime,
) -> dict[str, str]:
    """Corrupt ``how_many`` users, cycling through kinds; return user id -> kind injected."""
    done: dict[str, str] = {}
    if how_many <= 0 or not kinds:
        return done
    candidates = list(user_ids)
    rng.shuffle(candidates)
    k = 0
    with engine.begin() as conn:
        for uid in candidates:
            if len(done) >= how_many:
                break
            kind = kinds[k % len(kinds)]
            if kind == ViolationKind.ORPHAN:
                ghost = str(uuid.UUID(int=rng.getrandbits(128), version=4))
                conn.execute(
                    insert(runs).values(
                        user_id=ghost,
                        start_date=now.date() - timedelta(days=40),
                        end_date=now.date() - timedelta(days=38),
                        day_count=3,
                        active=False,
                    )
                )
                done[ghost] = ViolationKind.ORPHAN
                k += 1
                continue
            if _corrupt_user(conn, uid, kind, now):
                done[uid] = kind
                k += 1
    return done


def _user_runs(conn: Connection, uid: str) -> list[Run]:
    rows = conn.execute(select(runs).where(runs.c.user_id == uid).order_by(runs.c.start_date)).mappings()
    return [
        Run(r["id"], uid, r["start_date"], r["end_date"], r["day_count"], bool(r["active"])) for r in rows
    ]


def _corrupt_user(conn: Connection, uid: str, kind: str, now: datetime) -> bool:
    """Inject one kind of corruption into one user's runs; False if this user can't hold it."""
    mine = _user_runs(conn, uid)
    if not mine:
        return False
    one = timedelta(days=1)
    by_id = runs.c.id
    if kind == ViolationKind.MALFORMED:
        r = mine[len(mine) // 2]
        conn.execute(
            update(runs).where(runs.c.user_id == uid, by_id == r.id).values(day_count=r.day_count + 1)
        )
        return True
    if kind == ViolationKind.UNCOVERED_DAY:
        gone = next((x for x in mine if not x.active), None)
        if gone is None:
            return False
        conn.execute(delete(runs).where(runs.c.user_id == uid, by_id == gone.id))
        return True
    if kind == ViolationKind.ADJACENT:
        split = next((x for x in mine if x.day_count >= 2 and not x.active), None)
        if split is None:
            return False
        conn.execute(
            update(runs)
            .where(runs.c.user_id == uid, by_id == split.id)
            .values(end_date=split.start_date, day_count=1)
        )
        conn.execute(
            insert(runs).values(
                user_id=uid,
                start_date=split.start_date + one,
                end_date=split.end_date,
                day_count=split.day_count - 1,
                active=False,
            )
        )
        return True
    if kind == ViolationKind.PHANTOM_DAY:
        # Stretch an early run one day into an unmarked day, away from its neighbour.
        for a, b in pairwise(mine):
            if b.start_date - a.end_date >= timedelta(days=3) and not a.active:
                conn.execute(
                    update(runs)
                    .where(runs.c.user_id == uid, by_id == a.id)
                    .values(end_date=a.end_date + one, day_count=a.day_count + 1)
                )
                return True
        return False
    if kind == ViolationKind.STALE_ACTIVE:
        tz = conn.execute(select(users.c.timezone).where(users.c.id == uid)).scalar_one()
        today = local_today(tz, now)
        flagged = [x for x in mine if x.active]
        if flagged:
            conn.execute(
                update(runs).where(runs.c.user_id == uid, by_id == flagged[0].id).values(active=False)
            )
            return True
        stale = next((x for x in mine if x.end_date < today - 2 * one), None)
        if stale is None:
            return False
        conn.execute(update(runs).where(runs.c.user_id == uid, by_id == stale.id).values(active=True))
        return True
    if kind == ViolationKind.OVERLAP:
        base = next((x for x in mine if x.day_count >= 2 and not x.active), None)
        if base is None:
            return False
        conn.execute(
            insert(runs).values(
                user_id=uid,
                start_date=base.start_date + one,
                end_date=base.end_date,
                day_count=base.day_count - 1,
                active=False,
            )
        )
        return True
    raise ValueError(f"unknown corruption kind {kind!r}")
