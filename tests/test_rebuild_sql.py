"""The batch comparison in the database, and the rebuilds that rely on it, on both backends.

Expectations are computed here from the marks (plain Python grouping), never by the code under
test.
"""

from __future__ import annotations

import random
from datetime import date, timedelta

from sqlalchemy import func, select, update

from potato_ops import Storage
from potato_ops.db.engine import write_transaction
from potato_ops.db.grouping import compare_batch
from potato_ops.db.reads import fetch_users
from potato_ops.db.schema import ops_backups, runs
from potato_ops.ops.batch_rebuild import BACKUP_CHANGED, BatchOptions, UserOutcome, rebuild_batch
from tests.conftest import NOW, add_runs, add_user

TODAY = NOW.date()  # UTC users: local today is NOW's date
ONE = timedelta(days=1)


def group(marked: list[date]) -> list[tuple[date, date, int]]:
    """Return the consecutive stretches of the marked dates: the runs they should give."""
    out: list[tuple[date, date, int]] = []
    for d in sorted(set(marked)):
        if out and out[-1][1] == d - ONE:
            out[-1] = (out[-1][0], d, out[-1][2] + 1)
        else:
            out.append((d, d, 1))
    return out


def streaky(seed: int, days: int = 120) -> list[date]:
    rng = random.Random(seed)
    first = TODAY - (days - 1) * ONE
    return [first + k * ONE for k in range(days) if rng.random() < 0.6]


def store(storage: Storage, uid: str, spans: list[tuple[date, date, int]]) -> None:
    """Store the runs with the flag the rule gives for a UTC user at NOW."""
    active = next((i for i, (s, e, _n) in enumerate(spans) if s <= TODAY and e >= TODAY - ONE), None)
    add_runs(storage, uid, [(s.isoformat(), e.isoformat()) for s, e, _n in spans], active=active)


def stored(storage: Storage, uid: str) -> list[tuple[int, date, date, int, bool]]:
    return [(r.id or 0, r.start_date, r.end_date, r.day_count, r.active) for r in storage.get_user_runs(uid)]


def rebuild(storage: Storage, ids: list[str], **window: date) -> dict[str, UserOutcome]:
    options = BatchOptions("op-test", backup=BACKUP_CHANGED, **window)  # type: ignore[arg-type]
    with write_transaction(storage.engine) as conn:
        return rebuild_batch(conn, fetch_users(conn, ids), options, NOW)


def test_comparison_names_exactly_the_users_that_differ(storage: Storage) -> None:
    marks = {f"u{i}": streaky(i) for i in range(6)}
    for uid, m in marks.items():
        add_user(storage, uid, list(m))
    add_user(storage, "empty")
    add_user(storage, "ghost-runs")  # runs but no marks
    good = group(marks["u0"])
    store(storage, "u0", good)
    store(storage, "u1", group(marks["u1"]))
    damaged = group(marks["u2"])
    damaged[3] = (damaged[3][0], damaged[3][1], damaged[3][2] + 1)
    store(storage, "u2", group(marks["u2"]))
    with storage.engine.begin() as conn:  # day_count off by one on the 4th run
        fourth = conn.execute(
            select(runs.c.id).where(runs.c.user_id == "u2").order_by(runs.c.start_date).offset(3).limit(1)
        ).scalar_one()
        conn.execute(update(runs).where(runs.c.id == fourth).values(day_count=runs.c.day_count + 1))
    # u3: no runs at all; u4: one run missing; u5: a run stored twice (where it can be)
    store(storage, "u4", group(marks["u4"])[1:])
    store(storage, "u5", group(marks["u5"]))
    first = group(marks["u5"])[0]
    duplicates = storage.dialect == "sqlite"  # PostgreSQL's exclusion constraint refuses them
    if duplicates:
        add_runs(storage, "u5", [(first[0].isoformat(), first[1].isoformat())])
    store(storage, "ghost-runs", [(TODAY - 10 * ONE, TODAY - 9 * ONE, 2)])

    everyone = [*marks, "empty", "ghost-runs"]
    with storage.engine.connect() as conn:
        found = compare_batch(conn, everyone)
    differ = {"u2", "u3", "u4", "ghost-runs"} | ({"u5"} if duplicates else set())
    assert set(found.differ) == differ
    for uid in differ - {"ghost-runs"}:
        assert found.differ[uid] == group(marks[uid])
    assert found.differ["ghost-runs"] == []
    assert found.runs == {uid: len(group(m)) for uid, m in marks.items()}
    assert found.marked_days == {uid: len(set(m)) for uid, m in marks.items()}


def test_right_runs_with_a_stale_flag_keep_their_ids_and_get_the_flag(storage: Storage) -> None:
    ongoing = [TODAY - k * ONE for k in range(5)]  # a streak through today: active
    add_user(storage, "stale", [TODAY - 20 * ONE, *ongoing])
    add_user(storage, "fine", [TODAY - 20 * ONE, *ongoing])
    lone = (TODAY - 20 * ONE).isoformat()
    add_runs(storage, "stale", [(lone, lone), ((TODAY - 4 * ONE).isoformat(), TODAY.isoformat())])  # no flag
    store(storage, "fine", group([TODAY - 20 * ONE, *ongoing]))
    before = stored(storage, "stale")
    assert [a for *_x, a in before] == [False, False]

    out = rebuild(storage, ["stale", "fine"])

    after = stored(storage, "stale")
    assert [r[:4] for r in after] == [r[:4] for r in before]  # same ids, dates and counts
    assert [a for *_x, a in after] == [False, True]
    assert (out["stale"].active_flags_changed, out["stale"].runs_created, out["stale"].runs_deleted) == (
        1,
        0,
        0,
    )
    assert out["stale"].success and out["fine"].success and not out["fine"].changed
    assert out["fine"].runs_unchanged == 2 and out["fine"].days_processed == 6


def test_one_damaged_run_is_replaced_and_backed_up_alone(storage: Storage) -> None:
    marks = {f"u{i}": streaky(10 + i) for i in range(4)}
    for uid, m in marks.items():
        add_user(storage, uid, list(m))
        store(storage, uid, group(m))
    with storage.engine.begin() as conn:
        second = conn.execute(
            select(runs.c.id).where(runs.c.user_id == "u1").order_by(runs.c.start_date).offset(1).limit(1)
        ).scalar_one()
        conn.execute(update(runs).where(runs.c.id == second).values(day_count=runs.c.day_count + 1))
    untouched = {uid: stored(storage, uid) for uid in marks}

    out = rebuild(storage, list(marks))

    assert [r[1:4] for r in stored(storage, "u1")] == group(marks["u1"])
    kept = [r for r in untouched["u1"] if r[0] != second]
    assert [r for r in stored(storage, "u1") if r[0] != max(x[0] for x in stored(storage, "u1"))] == kept
    assert (out["u1"].runs_deleted, out["u1"].runs_created) == (1, 1)
    for uid in ("u0", "u2", "u3"):
        assert stored(storage, uid) == untouched[uid]
        assert not out[uid].changed and out[uid].success
        assert out[uid].runs_unchanged == len(group(marks[uid]))
        assert out[uid].days_processed == len(set(marks[uid]))
    with storage.engine.connect() as conn:
        backed_up = conn.execute(
            select(ops_backups.c.user_id, func.count()).group_by(ops_backups.c.user_id)
        ).all()
    assert [tuple(r) for r in backed_up] == [("u1", 1)]


def test_partial_windows_fix_only_what_they_touch(storage: Storage) -> None:
    marks = {f"u{i}": streaky(20 + i, days=200) for i in range(3)}
    lo, hi = TODAY - 60 * ONE, TODAY - 31 * ONE
    for uid, m in marks.items():
        add_user(storage, uid, list(m))
        store(storage, uid, group(m)[::2])  # every other run missing, inside and outside the window
    before = {uid: stored(storage, uid) for uid in marks}

    out = rebuild(storage, list(marks), from_date=lo, to_date=hi)

    for uid, m in marks.items():
        right = group(m)
        near = [g for g in right if g[1] >= lo - ONE and g[0] <= hi + ONE]
        far_before = [r for r in before[uid] if r[2] < lo - ONE or r[1] > hi + ONE]
        now_runs = stored(storage, uid)
        assert [r for r in now_runs if r[2] < lo - ONE or r[1] > hi + ONE] == far_before  # untouched
        assert [r[1:4] for r in now_runs if r[2] >= lo - ONE and r[1] <= hi + ONE] == near
        assert out[uid].success
