"""The app keeps writing marks while potato-ops rebuilds: nothing it writes is lost.

Every expectation is computed here from the marks (plain SQL and ``group_consecutive_dates``
of the test's own), never through the code under test.
"""

from __future__ import annotations

import random
import sqlite3
import threading
from collections import defaultdict
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import Connection, create_engine, event, text
from sqlalchemy.exc import OperationalError

from potato_ops import BulkConfig, Storage
from potato_ops.db.schema import RUNS_V2_FLAG
from potato_ops.demo.synth import seed
from potato_ops.domain.dates import as_utc
from potato_ops.ops.bulk import catchup
from potato_ops.ops.bulk.results import Progress
from potato_ops.ops.freshness import MAX_TRIES
from tests.conftest import BACKENDS, CITUS, NOW

DAYS = 40
FIRST = NOW.date() - timedelta(days=DAYS + 5)


def grouped(days: list[date]) -> list[tuple[date, date]]:
    """The runs a user's marked days give: maximal streaks of consecutive days (the test's own)."""
    spans: list[tuple[date, date]] = []
    for d in sorted(set(days)):
        if spans and d == spans[-1][1] + timedelta(days=1):
            spans[-1] = (spans[-1][0], d)
        else:
            spans.append((d, d))
    return spans


def as_date(value: Any) -> date:
    return value if isinstance(value, date) else date.fromisoformat(str(value)[:10])


def wrong_users(storage: Storage) -> set[str]:
    """Users whose stored runs are not the grouping of their marked days."""
    with storage.engine.connect() as conn:
        marks: dict[str, list[date]] = defaultdict(list)
        for uid, d in conn.execute(text("SELECT user_id, date FROM day_marks WHERE value")):
            marks[uid].append(as_date(d))
        stored: dict[str, list[tuple[date, date]]] = defaultdict(list)
        for uid, s, e in conn.execute(text("SELECT user_id, start_date, end_date FROM runs")):
            stored[uid].append((as_date(s), as_date(e)))
        ids = [u for (u,) in conn.execute(text("SELECT id FROM users"))]
    return {u for u in ids if sorted(stored.get(u, [])) != grouped(marks.get(u, []))}


def toggle(conn: Connection, uid: str, day: date) -> None:
    """The app's write: mark the day, or flip it if it is there (its own transaction)."""
    conn.execute(
        text(
            "INSERT INTO day_marks (user_id, date, value) VALUES (:u, :d, true) "
            "ON CONFLICT (user_id, date) DO UPDATE SET value = NOT day_marks.value"
        ),
        {"u": uid, "d": day},
    )


@pytest.fixture(params=[*BACKENDS, CITUS])
def backend(request: pytest.FixtureRequest) -> str:
    if request.param == "postgres":
        request.applymarker(pytest.mark.postgres)
    return str(request.param)


@pytest.fixture
def live(db_url: str) -> Iterator[Storage]:
    """Storage on the system clock: the ledger's times and the app's are the same clock."""
    storage = Storage.connect(db_url)
    storage.create_schema()
    storage.set_feature_flag(RUNS_V2_FLAG, True)
    yield storage
    storage.close()


def test_app_writing_during_a_bulk_run_is_caught_up(live: Storage, db_url: str) -> None:
    storage = live
    seeded = seed(storage.engine, users_count=500, days=DAYS, corrupt=0.25, now=datetime.now(UTC))
    users = list(seeded.user_ids)
    assert wrong_users(storage)  # a quarter damaged
    app = create_engine(db_url)  # the app: its own engine, no lock of the tool's
    stop, started = threading.Event(), threading.Event()
    paused: list[int] = []
    writes: list[tuple[str, datetime]] = []  # (user, time just before the write was sent)
    errors: list[BaseException] = []

    def app_writes() -> None:
        rng = random.Random(11)
        started.wait()
        try:
            while not stop.is_set():
                uid = rng.choice(users)
                before = datetime.now(UTC)
                with app.begin() as conn:
                    toggle(conn, uid, FIRST + timedelta(days=rng.randrange(DAYS + 3)))
                writes.append((uid, before))
                stop.wait(0.002)  # pacing, so SQLite's serialized writers all get turns
        except BaseException as exc:
            errors.append(exc)

    def progress(p: Progress) -> None:
        if p.processed_users:
            started.set()  # the app writes from the first batch on
        if p.processed_users >= 0.3 * p.total_users and not paused:
            # Once, the batches wait (the coordinator holds them here) while the app writes 30
            # more times: on SQLite, whose writers queue, the app then surely writes users whose
            # batch is done, however loaded the machine.
            paused.append(len(writes))
            while len(writes) < paused[0] + 30 and thread.is_alive():
                stop.wait(0.01)
        if p.processed_users >= 0.6 * p.total_users and not stop.is_set():
            stop.set()  # the app stops before the operation completes: its last write too
            thread.join()

    thread = threading.Thread(target=app_writes)
    thread.start()
    try:
        result = storage.bulk_rebuild_users(
            users, BulkConfig(batch_size=5, max_workers=2, dry_run=False), progress=progress
        )
    finally:
        started.set()
        stop.set()
        if thread.is_alive():
            thread.join()
        app.dispose()
    assert not errors
    assert (result.status, result.failed_users) == ("completed", 0)
    assert wrong_users(storage) == set()

    # Users written after their item finished, by the ledger's own times: each was caught up.
    with storage.engine.connect() as conn:
        finished = {
            uid: as_utc(at if isinstance(at, datetime) else datetime.fromisoformat(at))
            for uid, at in conn.execute(
                text("SELECT user_id, finished_at FROM ops_operation_items WHERE operation_id = :op"),
                {"op": result.operation_id},
            )
        }
    written_after = {uid for uid, before in writes if before > finished[uid]}
    assert written_after, "the app wrote nothing after a user's batch: the test proves nothing"
    assert result.caught_up_users >= len(written_after)
    assert storage.get_rebuild_progress(result.operation_id).caught_up_users == result.caught_up_users
    assert result.late_users == 0


@pytest.mark.parametrize("backend", ["sqlite", "postgres"], indirect=True)
def test_a_dry_run_notes_and_catches_up_nothing(live: Storage, db_url: str) -> None:
    storage = live
    seeded = seed(storage.engine, users_count=30, days=DAYS, corrupt=0.3, now=datetime.now(UTC))
    broken = wrong_users(storage)
    app = create_engine(db_url)
    rng = random.Random(3)

    def progress(_p: Progress) -> None:  # the app writes between batches
        with app.begin() as conn:
            toggle(conn, rng.choice(seeded.user_ids), FIRST + timedelta(days=rng.randrange(DAYS)))

    with storage.engine.connect() as conn:
        runs_before = conn.execute(text("SELECT * FROM runs ORDER BY id")).all()
    result = storage.bulk_rebuild_users(
        seeded.user_ids, BulkConfig(batch_size=5, max_workers=1, dry_run=True), progress=progress
    )
    app.dispose()
    assert result.status == "completed" and result.caught_up_users == 0
    with storage.engine.connect() as conn:
        assert conn.execute(text("SELECT * FROM runs ORDER BY id")).all() == runs_before
        assert conn.execute(text("SELECT count(*) FROM ops_capture_seen")).scalar_one() == 0
    assert broken <= wrong_users(storage)


@pytest.mark.parametrize("backend", ["sqlite", "postgres"], indirect=True)
def test_changes_after_the_final_pass_are_in_the_ledger(
    live: Storage, db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    storage = live
    seeded = seed(storage.engine, users_count=20, days=DAYS, corrupt=0.0, now=datetime.now(UTC))
    app = create_engine(db_url)
    written: list[str] = []

    def progress(p: Progress) -> None:  # after the first batch: a change to one of its users
        if p.processed_users and not written:
            with storage.engine.connect() as conn:
                uid = conn.execute(
                    text(
                        "SELECT user_id FROM ops_operation_items WHERE operation_id = :op "
                        "AND status = 'completed' ORDER BY position LIMIT 1"
                    ),
                    {"op": p.operation_id},
                ).scalar_one()
            with app.begin() as conn:
                toggle(conn, uid, FIRST - timedelta(days=3))
            written.append(uid)

    monkeypatch.setattr(catchup, "MAX_PASSES", 0)  # no pass allowed: the change stays after it
    result = storage.bulk_rebuild_users(
        seeded.user_ids, BulkConfig(batch_size=5, max_workers=1, dry_run=False), progress=progress
    )
    app.dispose()
    assert (result.status, result.caught_up_users, result.late_users) == ("completed", 0, 1)
    with storage.engine.connect() as conn:
        late = conn.execute(
            text(
                "SELECT user_id FROM ops_capture_seen WHERE operation_id = :op AND late_position IS NOT NULL"
            ),
            {"op": result.operation_id},
        ).all()
    assert [u for (u,) in late] == written
    assert wrong_users(storage) == set(written)  # the app's own to maintain


# ---------------------------------------------------------------------------- single user


def _app_write_after_marks_read(
    storage: Storage, db_url: str, uid: str, day: date, times: int
) -> tuple[list[int], list[int]]:
    """After the rebuild's read of the marks, the app commits a toggle (up to ``times`` times).

    PostgreSQL: a listener on the rebuild's engine runs the app's write, on a connection of its
    own, right after each statement that reads ``day_marks`` (not the capture table): the exact
    interleaving of the race, with no sleep. Returns the counters of writes tried and of
    writes that had to wait for the rebuild's commit (given up after a lock timeout).
    """
    app = create_engine(db_url)
    done = [0]

    def after(conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        if "day_marks" in statement and "ops_mark_changes" not in statement and done[0] < times:
            if "INSERT INTO day_marks" in statement:
                return  # the app's own write
            done[0] += 1
            try:
                with app.begin() as app_conn:
                    app_conn.execute(text("SET LOCAL lock_timeout = '300ms'"))
                    toggle(app_conn, uid, day)
            except OperationalError:
                waited[0] += 1  # the rebuild holds the user's capture row: the app waits

    waited = [0]

    event.listen(storage.engine, "after_cursor_execute", after)
    return done, waited


def marks_of(storage: Storage, uid: str) -> list[date]:
    with storage.engine.connect() as conn:
        found = conn.execute(text("SELECT date FROM day_marks WHERE user_id = :u AND value"), {"u": uid})
        return [as_date(d) for (d,) in found]


def runs_of(storage: Storage, uid: str) -> list[tuple[date, date]]:
    return [(r.start_date, r.end_date) for r in storage.get_user_runs(uid)]


@pytest.fixture
def one_user(live: Storage) -> str:
    with live.engine.begin() as conn:
        conn.execute(text("INSERT INTO users (id, email) VALUES ('racer', 'racer@example.com')"))
        for k in (0, 1, 2, 4, 5):
            conn.execute(
                text("INSERT INTO day_marks (user_id, date, value) VALUES ('racer', :d, true)"),
                {"d": FIRST + timedelta(days=k)},
            )
    return "racer"


@pytest.mark.parametrize("backend", ["postgres", CITUS], indirect=True)
@pytest.mark.parametrize("window", [False, True], ids=["full", "partial"])
def test_single_rebuild_redoes_itself_when_the_app_commits_between_read_and_commit(
    live: Storage, db_url: str, one_user: str, window: bool
) -> None:
    day = FIRST + timedelta(days=3)  # joins the two streaks into one
    done, waited = _app_write_after_marks_read(live, db_url, one_user, day, times=1)
    span = (FIRST, FIRST + timedelta(days=10)) if window else (None, None)
    result = live.rebuild_user_runs(one_user, *span, backup=not window)
    assert (done[0], waited[0]) == (1, 0)  # the app committed inside the rebuild, after its read
    assert result.success
    assert day in marks_of(live, one_user)
    assert (
        runs_of(live, one_user) == grouped(marks_of(live, one_user)) == [(FIRST, FIRST + timedelta(days=5))]
    )


@pytest.mark.parametrize("backend", ["postgres"], indirect=True)
def test_a_user_whose_marks_never_settle_is_rebuilt_on_a_last_try_that_holds_them(
    live: Storage, db_url: str, one_user: str
) -> None:
    done, waited = _app_write_after_marks_read(live, db_url, one_user, FIRST + timedelta(days=3), times=100)
    result = live.rebuild_user_runs(one_user)
    # Every try but the last lost the race; the last held the user's capture row from before
    # its read, so the app's write inside it had to wait (and gave up here) until the commit.
    assert (done[0], waited[0]) == (MAX_TRIES, 1)
    assert result.success
    assert runs_of(live, one_user) == grouped(marks_of(live, one_user))


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
def test_on_sqlite_the_app_cannot_commit_between_read_and_commit(
    live: Storage, db_url: str, one_user: str
) -> None:
    path = db_url.removeprefix("sqlite:///")
    blocked: list[str] = []

    def after_begin(conn: Any) -> None:  # the rebuild's transaction has begun (BEGIN IMMEDIATE)
        if conn.get_execution_options().get("potato_write") and not blocked:
            app = sqlite3.connect(path, timeout=0)
            try:
                app.execute(
                    "INSERT INTO day_marks (user_id, date, value) VALUES ('racer', ?, 1)",
                    (str(FIRST + timedelta(days=3)),),
                )
            except sqlite3.OperationalError as exc:
                blocked.append(str(exc))
            finally:
                app.close()

    event.listen(live.engine, "begin", after_begin)
    before = marks_of(live, one_user)
    result = live.rebuild_user_runs(one_user)
    event.remove(live.engine, "begin", after_begin)
    assert result.success
    assert blocked and "locked" in blocked[0]
    assert runs_of(live, one_user) == grouped(before) == grouped(marks_of(live, one_user))
