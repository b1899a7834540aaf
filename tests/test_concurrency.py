"""Concurrent rebuilds while the app toggles marks: readers never see overlapping runs.

The full run is on PostgreSQL (per-user advisory locks, READ COMMITTED); SQLite, whose writers
are serialized by BEGIN IMMEDIATE, gets a shorter one.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Callable
from datetime import date, timedelta
from itertools import pairwise

import pytest
from sqlalchemy import insert, update

from potato_ops import RebuildResult, Run, Storage
from potato_ops.db.engine import write_transaction
from potato_ops.db.schema import day_marks
from potato_ops.domain.runs import group_consecutive_dates
from tests.conftest import NOW, add_user

UID = "busy"
NEIGHBOUR = "neighbour"
# The threads run until every kind of work has been done this many times, however long that
# takes: a count, not a clock, so a loaded machine only makes the test slower.
ENOUGH = 15
HANG_GUARD_S = 900  # only a deadlock gets this far; no assertion depends on speed
# SQLite's busy handler polls with sleeps, so a writer in a tight loop starves the others;
# a short pause between iterations lets every thread take its turn at the write lock.
PAUSE_S = {"postgres": 0.0, "sqlite": 0.01}
FIRST = NOW.date() - timedelta(days=40)


def _days(n: int) -> list[date | str]:
    return [FIRST + timedelta(days=i) for i in range(n)]


def problems_in(found: list[Run]) -> list[str]:
    """Return what is wrong with one read of a user's runs (overlap, duplicate, flags, counts)."""
    bad: list[str] = []
    if len({r.id for r in found}) != len(found):
        bad.append(f"duplicated ids {[r.id for r in found]}")
    if sum(r.active for r in found) > 1:
        bad.append("more than one active run")
    for r in found:
        if r.day_count != (r.end_date - r.start_date).days + 1:
            bad.append(f"day_count of {r}")
    for a, b in pairwise(sorted(found, key=lambda r: (r.start_date, r.end_date))):
        if b.start_date <= a.end_date:
            bad.append(f"{a.span} overlaps {b.span}")
    return bad


@pytest.mark.timeout(HANG_GUARD_S)
def test_rebuilds_and_mark_toggles_never_show_overlapping_runs(storage: Storage, backend: str) -> None:
    rng = random.Random(7)
    initial = [d for d in _days(41) if rng.random() < 0.7]
    add_user(storage, UID, list(initial), timezone="America/New_York")
    add_user(storage, NEIGHBOUR, _days(10))
    assert storage.rebuild_user_runs(UID).success

    stop = threading.Event()
    failures: list[str] = []
    results: list[tuple[str, RebuildResult]] = []
    reads = [0]
    toggles = [0]
    lock = threading.Lock()

    def guarded(body: Callable[[random.Random], None], seed: int) -> Callable[[], None]:
        def loop() -> None:
            local = random.Random(seed)
            try:
                while not stop.wait(PAUSE_S[backend]):
                    body(local)
                    if enough():
                        stop.set()
            except Exception as exc:  # reported below, with the thread's name
                with lock:
                    failures.append(f"{threading.current_thread().name}: {exc!r}")
                stop.set()

        return loop

    def full_rebuild(_rng: random.Random) -> None:
        result = storage.rebuild_user_runs(UID, backup=False)
        with lock:
            results.append(("full", result))

    def partial_rebuild(local: random.Random) -> None:
        lo = FIRST + timedelta(days=local.randrange(41))
        hi = lo + timedelta(days=local.randrange(10))
        result = storage.rebuild_user_runs(UID, lo, hi, backup=local.random() < 0.5)
        with lock:
            results.append(("partial", result))

    def neighbour_rebuild(_rng: random.Random) -> None:
        result = storage.rebuild_user_runs(NEIGHBOUR, backup=False)
        with lock:
            results.append(("neighbour", result))

    def toggle_marks(local: random.Random) -> None:
        picked = FIRST + timedelta(days=local.randrange(41))
        value = local.random() < 0.6
        with write_transaction(storage.engine) as conn:  # as the app would: update, else insert
            updated = conn.execute(
                update(day_marks)
                .where(day_marks.c.user_id == UID, day_marks.c.date == picked)
                .values(value=value)
            ).rowcount
            if not updated:
                conn.execute(insert(day_marks).values(user_id=UID, date=picked, value=value))
        toggles[0] += 1

    def read_runs(_rng: random.Random) -> None:
        found = storage.get_user_runs(UID)
        bad = problems_in(found)
        reads[0] += 1
        if bad:
            with lock:
                failures.extend(bad)

    bodies: list[tuple[str, Callable[[random.Random], None]]] = [
        ("full-1", full_rebuild),
        ("full-2", full_rebuild),
        ("partial", partial_rebuild),
        ("neighbour", neighbour_rebuild),
        ("toggler", toggle_marks),
        ("reader", read_runs),
    ]
    threads = [
        threading.Thread(target=guarded(body, i), name=name, daemon=True)
        for i, (name, body) in enumerate(bodies)
    ]

    def enough() -> bool:
        with lock:
            done = [kind for kind, _ in results]
        counts = [done.count(k) for k in ("full", "partial", "neighbour")]
        return min(reads[0], toggles[0], *counts) >= ENOUGH

    for t in threads:
        t.start()
    stop.wait()  # set by the thread that saw every count reach ENOUGH, or by a failure
    for t in threads:
        t.join()

    assert failures == []
    assert enough(), (reads, toggles, len(results))
    # A full rebuild works from one read of the marks under the user's lock: it always
    # succeeds. A partial one may rightly refuse when a toggle outside its range left a run
    # there that its new runs would overlap; it must still return, not raise.
    kinds = {kind for kind, _ in results}
    assert kinds == {"full", "partial", "neighbour"}
    assert [(k, r.error) for k, r in results if k != "partial" and not r.success] == []

    final = storage.rebuild_user_runs(UID)
    assert final.success
    assert storage.validate_invariants().total == 0
    marked = [m.date for m in storage.get_user_day_marks(UID) if m.value]
    assert [r.span for r in storage.get_user_runs(UID)] == group_consecutive_dates(marked)
    assert [r.span for r in storage.get_user_runs(NEIGHBOUR)] == [(FIRST, FIRST + timedelta(days=9))]
