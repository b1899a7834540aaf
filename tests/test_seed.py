"""Seeding streams in chunks: the chunk size never changes the data, and the report stays exact."""

from __future__ import annotations

import random
import uuid
from collections import defaultdict
from datetime import date, timedelta
from itertools import pairwise

from sqlalchemy import Connection, select, text

from potato_ops import Storage
from potato_ops.db.schema import day_marks, runs, users
from potato_ops.demo.synth import (
    CORRUPTIONS_POSTGRES,
    CORRUPTIONS_SQLITE,
    SeededUserIds,
    SeedResult,
    inject_corruption,
    seed,
)
from potato_ops.domain.dates import local_today
from potato_ops.domain.models import ViolationKind
from tests.conftest import MutableClock

Dump = dict[str, list[tuple[object, ...]]]


def _dump(storage: Storage, *, run_ids: bool = True) -> Dump:
    """Return the seeded tables' rows sorted, without the insert-time stamps the database sets.

    ``run_ids=False`` leaves out the runs' ids too (the order of commits assigns them).
    """
    run_columns = [runs.c.id] if run_ids else []
    with storage.engine.connect() as conn:
        return {
            "users": sorted(
                tuple(r) for r in conn.execute(select(users.c.id, users.c.email, users.c.timezone))
            ),
            "day_marks": sorted(
                tuple(r)
                for r in conn.execute(select(day_marks.c.user_id, day_marks.c.date, day_marks.c.value))
            ),
            "runs": sorted(
                tuple(r)
                for r in conn.execute(
                    select(
                        *run_columns,
                        runs.c.user_id,
                        runs.c.start_date,
                        runs.c.end_date,
                        runs.c.day_count,
                        runs.c.active,
                    )
                )
            ),
        }


def _empty(storage: Storage) -> None:
    """Delete the seeded rows and restart the runs' ids, as on a fresh database."""
    with storage.engine.begin() as conn:
        if storage.dialect == "postgresql":
            conn.execute(text("TRUNCATE users, day_marks, runs RESTART IDENTITY"))
        else:
            for table in ("users", "day_marks", "runs"):
                conn.execute(text(f"DELETE FROM {table}"))
            conn.execute(text("DELETE FROM sqlite_sequence WHERE name = 'runs'"))


def test_chunk_size_never_changes_the_data(storage: Storage, clock: MutableClock) -> None:
    def run(chunk_rows: int) -> tuple[SeedResult, Dump, list[int]]:
        _empty(storage)  # each seeding starts on empty tables with the runs' ids restarted
        reported: list[int] = []
        result = seed(
            storage.engine,
            users_count=70,
            days=60,
            corrupt=0.3,
            seed_value=7,
            now=clock(),
            chunk_rows=chunk_rows,
            progress=reported.append,
        )
        return result, _dump(storage), reported

    one, one_dump, one_progress = run(10**9)
    many, many_dump, many_progress = run(100)  # a chunk every few users

    assert one_progress == [70]
    assert len(many_progress) > 10 and sum(many_progress) == 70
    assert many_dump == one_dump
    assert len(one_dump["users"]) == 70 and len(one_dump["day_marks"]) == one.marks_written
    assert len(one_dump["runs"]) == one.runs_written
    assert many.corrupted == one.corrupted and len(one.corrupted) == 21
    assert list(many.user_ids) == list(one.user_ids)
    assert {u for u, *_ in one_dump["users"]} == set(one.user_ids)


def test_other_seed_values_give_other_data(storage: Storage, clock: MutableClock) -> None:
    seed(storage.engine, users_count=5, days=30, seed_value=1, now=clock())
    first = _dump(storage)
    _empty(storage)
    seed(storage.engine, users_count=5, days=30, seed_value=2, now=clock())
    assert _dump(storage)["day_marks"] != first["day_marks"]


def _kinds_found(conn: Connection, now_date_of: dict[str, date]) -> dict[str, set[str]]:
    """Return user id -> the invariant kinds its stored runs break, judged from the rows alone."""
    marked: dict[str, set[date]] = defaultdict(set)
    for uid, d in conn.execute(select(day_marks.c.user_id, day_marks.c.date).where(day_marks.c.value)):
        marked[uid].add(d)
    stored: dict[str, list[tuple[date, date, int, bool]]] = defaultdict(list)
    for uid, s, e, n, a in conn.execute(
        select(runs.c.user_id, runs.c.start_date, runs.c.end_date, runs.c.day_count, runs.c.active)
    ):
        stored[uid].append((s, e, n, bool(a)))
    found: dict[str, set[str]] = defaultdict(set)
    covered: dict[str, set[date]] = defaultdict(set)
    one = timedelta(days=1)
    for uid, mine in stored.items():
        if uid not in now_date_of:
            found[uid].add(ViolationKind.ORPHAN)
            continue
        mine.sort()
        today = now_date_of[uid]
        for s, e, n, a in mine:
            if n != (e - s).days + 1:
                found[uid].add(ViolationKind.MALFORMED)
            if a != (s <= today and e >= today - one):
                found[uid].add(ViolationKind.STALE_ACTIVE)
            days = {s + k * one for k in range((e - s).days + 1)}
            if days - marked[uid]:
                found[uid].add(ViolationKind.PHANTOM_DAY)
            covered[uid] |= days
        for (_s1, e1, *_), (s2, *_) in pairwise(mine):
            if s2 <= e1:
                found[uid].add(ViolationKind.OVERLAP)
            elif s2 == e1 + one:
                found[uid].add(ViolationKind.ADJACENT)
    for uid, days in marked.items():
        if days - covered[uid]:
            found[uid].add(ViolationKind.UNCOVERED_DAY)
    return found


def test_report_names_every_corrupted_user_and_kind(storage: Storage, clock: MutableClock) -> None:
    result = seed(
        storage.engine, users_count=300, days=90, corrupt=0.2, seed_value=3, now=clock(), chunk_rows=500
    )
    with storage.engine.connect() as conn:
        today = {
            uid: local_today(tz, clock()) for uid, tz in conn.execute(select(users.c.id, users.c.timezone))
        }
        found = _kinds_found(conn, today)
    assert len(result.corrupted) == 60
    assert set(found) == set(result.corrupted)  # no corrupted user unnamed, no clean one named
    for uid, kind in result.corrupted.items():
        assert kind in found[uid], (uid, kind, found[uid])
    expected_kinds = {ViolationKind.MALFORMED, ViolationKind.ADJACENT, ViolationKind.PHANTOM_DAY}
    expected_kinds |= {ViolationKind.UNCOVERED_DAY, ViolationKind.STALE_ACTIVE, ViolationKind.ORPHAN}
    if storage.dialect == "sqlite":
        expected_kinds.add(ViolationKind.OVERLAP)
    assert set(result.corrupted.values()) == expected_kinds


def test_user_ids_are_computed_on_demand() -> None:
    ids = SeededUserIds(5, 1000, "p-")
    assert len(ids) == 1000 and ids[-1] == ids[999] and ids[3:5] == [ids[3], ids[4]]
    assert len(set(ids)) == 1000 and all(u.startswith("p-") for u in ids)
    assert list(SeededUserIds(5, 10, "p-")) == ids[:10]


def test_user_ids_sort_in_user_order_and_differ_by_seed() -> None:
    ids = list(SeededUserIds(5, 70_000))
    assert ids == sorted(ids)  # a seed appends to the indexes on user_id
    assert {uuid.UUID(u).version for u in ids} == {8} and len(set(ids)) == len(ids)
    assert not set(ids) & set(SeededUserIds(6, 70_000))


def test_orphan_runs_ids_sort_among_the_users_ids(storage: Storage, clock: MutableClock) -> None:
    result = seed(storage.engine, users_count=600, days=30, corrupt=0.1, seed_value=9, now=clock())
    ids = list(result.user_ids)
    ghosts = sorted(u for u in result.corrupted if result.corrupted[u] == ViolationKind.ORPHAN)
    assert len(ghosts) >= 8 and not set(ghosts) & set(ids)  # a sixth or seventh of the kinds
    with storage.engine.connect() as conn:
        stored = {r[0] for r in conn.execute(select(runs.c.user_id).where(runs.c.user_id.in_(ghosts)))}
    assert stored == set(ghosts)
    everyone = sorted([*ids, *ghosts])
    for ghost in ghosts:
        at = everyone.index(ghost)
        # Beside a user whose id has the same seed and index bytes: no key range widened.
        near = [everyone[k] for k in (at - 1, at + 1) if 0 <= k < len(everyone) and everyone[k] in ids]
        assert any(uuid.UUID(u).bytes[:6] == uuid.UUID(ghost).bytes[:6] for u in near), ghost
        assert uuid.UUID(ghost).version == 8


def test_corrupting_stored_users_is_reported_exactly(storage: Storage, clock: MutableClock) -> None:
    seeded = seed(storage.engine, users_count=80, days=60, seed_value=4, now=clock())
    kinds = CORRUPTIONS_SQLITE if storage.dialect == "sqlite" else CORRUPTIONS_POSTGRES
    with storage.engine.connect() as conn:
        ids_before = {r.id: tuple(r) for r in conn.execute(select(runs))}
    done = inject_corruption(storage.engine, seeded.user_ids, 21, kinds, random.Random(9), clock())
    assert len(done) == 21 and set(done.values()) == set(kinds)
    with storage.engine.connect() as conn:
        today = {
            uid: local_today(tz, clock()) for uid, tz in conn.execute(select(users.c.id, users.c.timezone))
        }
        found = _kinds_found(conn, today)
        after = {r.id: tuple(r) for r in conn.execute(select(runs))}
    assert set(found) == set(done)
    for uid, kind in done.items():
        assert kind in found[uid], (uid, kind, found[uid])
    # Runs of users left alone keep their ids and values.
    assert {i: r for i, r in ids_before.items() if r[1] not in done} == {
        i: r for i, r in after.items() if r[1] not in done
    }
