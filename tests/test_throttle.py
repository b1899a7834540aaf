"""The throttle of a bulk operation: its window, pause and resume, adaptive sizes, refusals.

Database tests run on SQLite and PostgreSQL; the two-process pause runs on PostgreSQL (SQLite
is one host). The standby-lag throttle on a real primary and standby is in
``test_throttle_replica.py``. Nothing here is timed: a wait is proven by the gate's own
looks (each look at a closed gate is counted in its episode) and by counts that do not move.
"""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import sys
import threading
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import typer
from sqlalchemy import func, select
from typer.testing import CliRunner

from potato_ops import BulkConfig, ConfigError, Storage
from potato_ops.cli.bulk import register
from potato_ops.db.schema import (
    ops_operation_batches,
    ops_operation_items,
    ops_throttle_episodes,
)
from potato_ops.demo.synth import seed
from potato_ops.domain.sizes import format_size, parse_size
from potato_ops.domain.window import Window, format_wait
from potato_ops.ops.bulk import api, throttle
from potato_ops.ops.bulk.results import BulkResult, Progress
from potato_ops.ops.bulk.sizing import BatchSizer
from tests.conftest import NOW, MutableClock
from tests.test_bulk_shared import wrong_users

ROOT = Path(__file__).parents[1]
CHILD = Path(__file__).with_name("bulk_child.py")
pg_only = pytest.mark.parametrize("backend", [pytest.param("postgres", marks=pytest.mark.postgres)])


# ---------------------------------------------------------------------------- pure: window, sizes


@pytest.mark.parametrize(
    ("spec", "zone", "at", "is_open", "opens_in"),
    [
        ("01:00-05:00", "UTC", "2024-03-10T21:48:00+00:00", False, "3 h 12 min"),
        ("01:00-05:00", "UTC", "2024-03-10T01:00:00+00:00", True, "0 s"),
        ("01:00-05:00", "UTC", "2024-03-10T05:00:00+00:00", False, "20 h"),
        ("22:00-02:00", "UTC", "2024-03-10T23:30:00+00:00", True, "0 s"),
        ("22:00-02:00", "UTC", "2024-03-10T01:59:00+00:00", True, "0 s"),
        ("22:00-02:00", "UTC", "2024-03-10T02:00:00+00:00", False, "20 h"),
        ("22:00-02:00", "UTC", "2024-03-10T21:59:30+00:00", False, "30 s"),
        # 01:00-05:00 in Berlin (UTC+1 in winter) is 00:00-04:00 UTC.
        ("01:00-05:00", "Europe/Berlin", "2024-01-15T23:30:00+00:00", False, "30 min"),
        ("01:00-05:00", "Europe/Berlin", "2024-01-15T03:59:00+00:00", True, "0 s"),
        # New York springs forward on 2024-03-10 at 02:00: 01:00 to 05:00 local is 3 real hours.
        ("01:00-05:00", "America/New_York", "2024-03-10T05:59:00+00:00", False, "1 min"),
        ("01:00-05:00", "America/New_York", "2024-03-10T08:59:00+00:00", True, "0 s"),
        ("01:00-05:00", "America/New_York", "2024-03-10T09:30:00+00:00", False, "19 h 30 min"),
        ("22:00-00:00", "UTC", "2024-03-10T23:59:00+00:00", True, "0 s"),
        ("22:00-00:00", "UTC", "2024-03-10T00:00:00+00:00", False, "22 h"),
    ],
)
def test_window_open_and_opens_in(spec: str, zone: str, at: str, is_open: bool, opens_in: str) -> None:
    window = Window.parse(spec, zone)
    now = datetime.fromisoformat(at)
    assert window.is_open(now) is is_open
    assert format_wait(window.opens_in(now)) == opens_in


def test_window_says_when_it_opens_and_closes() -> None:
    window = Window.parse("01:00-05:00")
    now = datetime(2024, 3, 10, 21, 48, tzinfo=UTC)
    assert window.waiting_message(now) == "waiting for window 01:00-05:00 UTC (opens in 3 h 12 min)"
    assert window.closes_in(datetime(2024, 3, 10, 4, 30, tzinfo=UTC)) == timedelta(minutes=30)
    assert window.closes_in(now) == timedelta(0)
    spring = Window.parse("01:00-05:00", "America/New_York")
    # Open from 06:00 UTC (01:00 EST) to 09:00 UTC (05:00 EDT) that day.
    assert spring.closes_in(datetime(2024, 3, 10, 6, 0, tzinfo=UTC)) == timedelta(hours=3)


@pytest.mark.parametrize(
    ("spec", "zone", "message"),
    [
        ("1-5", "UTC", "is not HH:MM-HH:MM"),
        ("25:00-05:00", "UTC", "is not a time of day"),
        ("01:00-24:00", "UTC", "is not a time of day"),
        ("01:00-01:00", "UTC", "is empty"),
        ("01:00-05:00", "Mars/Olympus", "time zone"),
    ],
)
def test_a_malformed_window_is_refused(spec: str, zone: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        Window.parse(spec, zone)


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("16MB", 16 * 1024**2),
        ("1 MB", 1024**2),
        ("512kB", 512 * 1024),
        ("1.5GB", 1536 * 1024**2),
        ("100", 100),
    ],
)
def test_sizes_parse_as_postgresql_writes_them(text: str, size: int) -> None:
    assert parse_size(text) == size


def test_sizes_show_as_a_person_reads_them() -> None:
    assert [format_size(n) for n in (6.1 * 1024**2, 1024**2, 1536, 12)] == [
        "6.1 MB",
        "1 MB",
        "1.5 kB",
        "12 bytes",
    ]


@pytest.mark.parametrize(
    ("text", "message"),
    [("10s", "give the lag as a size"), ("5 parsecs", "unknown unit"), ("-1MB", "not a size")],
)
def test_bad_sizes_are_refused(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_size(text, "max_replica_lag")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"batch_seconds": 0}, "batch_seconds"),
        ({"batch_seconds": float("nan")}, "batch_seconds"),
        ({"nice_ratio": -1}, "nice_ratio"),
        ({"max_active_sessions": 0}, "max_active_sessions"),
        ({"batch_size": 10, "max_batch_size": 5, "batch_seconds": 1}, "must lie between"),
        ({"batch_size": 2, "min_batch_size": 5}, "must lie between"),
        ({"window": "nine to five"}, "HH:MM-HH:MM"),
        ({"max_replica_lag": "10s"}, "give the lag as a size"),
    ],
)
def test_bad_throttle_settings_are_refused_when_made(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        BulkConfig(**kwargs)


def test_the_config_keeps_the_lag_in_bytes_through_the_ledger() -> None:
    config = BulkConfig(max_replica_lag="16MB", window="22:00-02:00", window_timezone="Europe/Berlin")
    assert config.max_replica_lag == 16 * 1024**2
    assert BulkConfig.from_json(config.to_json()) == config


# ---------------------------------------------------------------------------- pure: the sizer


def test_sizes_shrink_at_once_to_the_target_and_stop_at_the_floor() -> None:
    sizer = BatchSizer(start=100, lo=5, hi=200, target_seconds=1.0)
    # 100 users took 4 s: 25 users would take the target second.
    assert [sizer.observe(100, 4.0), sizer.observe(25, 10.0), sizer.observe(5, 1.0)] == [25, 5, 5]


def test_sizes_grow_by_half_at_most_and_stop_at_the_ceiling() -> None:
    sizer = BatchSizer(start=10, lo=1, hi=40, target_seconds=1.0)
    # Every transaction far quicker than the target: grow 10 -> 15 -> 22 -> 33 -> 40 (ceiling).
    assert [sizer.observe(sizer.size, 0.001) for _ in range(5)] == [15, 22, 33, 40, 40]
    # A transaction at the target keeps the size where it is.
    assert sizer.observe(40, 1.0) == 40


# ---------------------------------------------------------------------------- helpers


def item_statuses(storage: Storage, operation_id: str) -> Counter[str]:
    i = ops_operation_items
    with storage.engine.connect() as conn:
        return Counter(conn.execute(select(i.c.status).where(i.c.operation_id == operation_id)).scalars())


def held_batches(storage: Storage, operation_id: str) -> int:
    """Return how many pending batches a worker holds (claimed, not done)."""
    b = ops_operation_batches
    with storage.engine.connect() as conn:
        return int(
            conn.execute(
                select(func.count())
                .select_from(b)
                .where(
                    b.c.operation_id == operation_id, b.c.status == "pending", b.c.claim_token.is_not(None)
                )
            ).scalar_one()
        )


def open_waits(storage: Storage, operation_id: str) -> dict[str, tuple[str, int]]:
    """Return each runner's open wait: (kind, how often it looked at the closed gate)."""
    e = ops_throttle_episodes
    with storage.engine.connect() as conn:
        rows = conn.execute(
            select(e.c.runner_token, e.c.kind, e.c.checks).where(
                e.c.operation_id == operation_id, e.c.ended_at.is_(None)
            )
        ).all()
    return {token: (kind, int(checks)) for token, kind, checks in rows}


def until(condition: Callable[[], bool], what: str, limit: int = 2000) -> None:
    """Look until the condition holds (an event, not a time: a hang fails after many looks)."""
    stop = threading.Event()
    for _ in range(limit):
        if condition():
            return
        stop.wait(0.05)
    raise AssertionError(f"never happened: {what}")


class Background:
    """A bulk call on a thread of its own, its progress callbacks kept."""

    def __init__(self, call: Callable[[Callable[[Progress], None]], BulkResult]) -> None:
        self.seen: list[Progress] = []
        self.result: BulkResult | None = None
        self.error: BaseException | None = None
        self.hooks: list[Callable[[Progress], None]] = []

        def report(p: Progress) -> None:
            self.seen.append(p)
            for hook in self.hooks:
                hook(p)

        def run() -> None:
            try:
                self.result = call(report)
            except BaseException as exc:
                self.error = exc

        self.thread = threading.Thread(target=run, daemon=True)

    @property
    def operation_id(self) -> str:
        until(lambda: bool(self.seen), "a first progress report")
        return self.seen[0].operation_id

    def start(self) -> Background:
        self.thread.start()
        return self

    def join(self) -> BulkResult:
        self.thread.join(120)
        assert not self.thread.is_alive(), "the bulk run never ended"
        if self.error is not None:
            raise self.error
        assert self.result is not None
        return self.result


@pytest.fixture
def quick_gate(monkeypatch: pytest.MonkeyPatch) -> None:
    """Workers in this process look at a closed gate every 20 ms (not every half second)."""
    monkeypatch.setattr(throttle, "POLL_S", 0.02)


@pytest.fixture
def damaged(storage: Storage) -> tuple[Storage, list[str]]:
    """Seed 40 users, about half of them with wrong runs; the runs flag on."""
    storage.set_feature_flag("ff.potato.runs_v2", True)
    seeded = seed(storage.engine, users_count=40, days=40, corrupt=0.5, now=NOW)
    assert wrong_users(storage, NOW)  # the test means something only if there is work to do
    return storage, list(seeded.user_ids)


def waited_while_closed(storage: Storage, operation_id: str, runners: int, looks: int = 3) -> None:
    """Return once ``runners`` runners each looked at the closed gate ``looks`` more times."""
    until(lambda: len(open_waits(storage, operation_id)) == runners, f"{runners} runners waiting")
    before = {t: n for t, (_, n) in open_waits(storage, operation_id).items()}
    until(
        lambda: all(
            open_waits(storage, operation_id).get(t, ("", 0))[1] >= n + looks for t, n in before.items()
        ),
        "each waiting runner looking at its gate again",
    )


# ---------------------------------------------------------------------------- the window


def test_outside_its_window_an_operation_processes_nothing_and_says_why(
    damaged: tuple[Storage, list[str]], clock: MutableClock, quick_gate: None, db_url: str
) -> None:
    storage, ids = damaged
    clock.set(datetime(2024, 3, 10, 2, 0, tzinfo=UTC))  # inside 01:00-05:00 UTC
    config = BulkConfig(batch_size=5, max_workers=1, dry_run=False, window="01:00-05:00")
    run = Background(lambda report: storage.bulk_rebuild_users(ids, config, progress=report))

    def close_the_window_after_the_first_batch(p: Progress) -> None:
        if p.processed_users == 5:
            clock.set(datetime(2024, 3, 10, 21, 48, tzinfo=UTC))

    run.hooks.append(close_the_window_after_the_first_batch)
    run.start()
    operation_id = run.operation_id
    waited_while_closed(storage, operation_id, runners=1)

    # The batch in flight when the window closed finished; nothing started after it.
    progress = storage.get_rebuild_progress(operation_id)
    assert (progress.status, progress.processed_users) == ("running", 5)
    assert progress.waiting == "waiting for window 01:00-05:00 UTC (opens in 3 h 12 min)"
    assert (progress.waiting_kind, progress.eta_seconds) == ("window", None)
    assert item_statuses(storage, operation_id) == Counter({"completed": 5, "pending": len(ids) - 5})
    assert held_batches(storage, operation_id) == 0
    until(lambda: any(p.waiting == progress.waiting for p in run.seen), "the progress callback saying so")
    [listed] = storage.list_operations(limit=1)
    assert listed.waiting == progress.waiting

    clock.set(datetime(2024, 3, 11, 1, 0, tzinfo=UTC))  # the window opens: it goes on by itself
    result = run.join()

    assert (result.status, result.completed_users, result.failed_users) == ("completed", len(ids), 0)
    assert wrong_users(storage, clock.instant) == set()
    # One wait, from 21:48 to 01:00 on the operation's clock, ended and recorded.
    assert result.throttled_seconds == {"window": 3 * 3600 + 12 * 60}
    done = storage.get_rebuild_progress(operation_id)
    assert (done.waiting, done.throttled_seconds) == (None, 3 * 3600 + 12 * 60)
    assert done.throttle == "window 01:00-05:00 UTC"
    code, out, _ = cli(db_url, "progress", operation_id)
    assert code == 0 and out.splitlines()[1:] == [
        "throttle: window 01:00-05:00 UTC",
        "  waited 11520 s from 2024-03-10 21:48:00: waiting for window 01:00-05:00 UTC (opens in 3 h 12 min)",
    ]


def test_a_window_that_excludes_now_holds_the_operation_from_the_start(
    damaged: tuple[Storage, list[str]], clock: MutableClock, quick_gate: None
) -> None:
    storage, ids = damaged  # NOW is 15:00 UTC
    config = BulkConfig(
        batch_size=5, max_workers=2, dry_run=False, window="01:00-05:00", window_timezone="Europe/Berlin"
    )
    run = Background(lambda report: storage.bulk_rebuild_users(ids, config, progress=report)).start()
    operation_id = run.operation_id
    waited_while_closed(storage, operation_id, runners=1)

    progress = storage.get_rebuild_progress(operation_id)
    assert progress.processed_users == 0
    assert progress.waiting == "waiting for window 01:00-05:00 Europe/Berlin (opens in 9 h)"
    clock.set(datetime(2024, 3, 11, 0, 30, tzinfo=UTC))  # 01:30 in Berlin
    assert run.join().status == "completed"
    assert wrong_users(storage, clock.instant) == set()


# ---------------------------------------------------------------------------- pause and resume


def test_a_paused_operation_processes_nothing_until_resumed(
    damaged: tuple[Storage, list[str]], quick_gate: None
) -> None:
    storage, ids = damaged
    config = BulkConfig(batch_size=5, max_workers=2, dry_run=False)
    run = Background(lambda report: storage.bulk_rebuild_users(ids, config, progress=report))
    paused: list[Progress] = []

    def pause_after_the_first_batch(p: Progress) -> None:
        if p.processed_users >= 5 and not paused:
            paused.append(storage.pause_bulk_rebuild(p.operation_id))

    run.hooks.append(pause_after_the_first_batch)
    run.start()
    operation_id = run.operation_id
    until(lambda: bool(paused), "the pause")
    assert paused[0].status == "paused"
    waited_while_closed(storage, operation_id, runners=1)
    until(lambda: held_batches(storage, operation_id) == 0, "every batch in flight finished")
    stopped_at = storage.get_rebuild_progress(operation_id).processed_users
    waited_while_closed(storage, operation_id, runners=1)  # it looked again, and did nothing

    progress = storage.get_rebuild_progress(operation_id)
    assert (progress.status, progress.processed_users) == ("paused", stopped_at)
    assert progress.waiting_kind == "paused" and progress.waiting is not None
    assert f"potato-ops resume {operation_id}" in progress.waiting
    assert stopped_at < len(ids)
    assert [p.operation_id for p in storage.list_operations("paused")] == [operation_id]

    # Its runner is alive and waiting: resume only lifts the pause, and the runner goes on.
    resumed = storage.resume_bulk_rebuild(operation_id)
    assert resumed.status == "running"
    result = run.join()
    assert (result.status, result.completed_users) == ("completed", len(ids))
    assert set(result.throttled_seconds) == {"paused"}
    assert wrong_users(storage, NOW) == set()
    assert storage.list_operations("paused") == []


def test_pause_outlives_its_runner_and_resume_takes_over(
    damaged: tuple[Storage, list[str]], db_url: str, tmp_path: Path
) -> None:
    storage, ids = damaged
    go_on = tmp_path / "go-on"  # the child holds before its second batch until this exists
    child = subprocess.Popen(
        [sys.executable, str(CHILD), db_url, NOW.isoformat(), "5", "1"],
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env={
            **os.environ,
            "PYTHONPATH": str(ROOT),
            "POTATO_TEST_HOLD_AT_GATE": "2",
            "POTATO_TEST_HOLD_UNTIL": str(go_on),
        },
    )
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "ready"
        until(lambda: bool(storage.list_operations(limit=1)), "the child's operation")
        operation_id = storage.list_operations(limit=1)[0].operation_id
        assert storage.pause_bulk_rebuild(operation_id).status == "paused"
        go_on.touch()
        waited_while_closed(storage, operation_id, runners=1, looks=1)
        processed = storage.get_rebuild_progress(operation_id).processed_users
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(30)

    # The runner is gone; the pause is in the ledger, not in the process.
    progress = storage.get_rebuild_progress(operation_id)
    assert (progress.status, progress.processed_users) == ("paused", processed)
    assert progress.waiting is None  # nobody waits now: it just stays paused
    result = storage.resume_bulk_rebuild(operation_id)
    assert (result.status, result.completed_users) == ("completed", len(ids))
    assert wrong_users(storage, NOW) == set()
    assert open_waits(storage, operation_id) == {}  # the dead runner's wait was closed by the takeover


def test_pause_of_an_ended_operation_changes_nothing(damaged: tuple[Storage, list[str]]) -> None:
    storage, ids = damaged
    done = storage.bulk_rebuild_users(ids[:5], BulkConfig(batch_size=5, dry_run=False))
    assert storage.pause_bulk_rebuild(done.operation_id).status == "completed"
    assert storage.resume_bulk_rebuild(done.operation_id).status == "completed"


def test_a_cancel_reaches_a_paused_operation(damaged: tuple[Storage, list[str]], quick_gate: None) -> None:
    storage, ids = damaged
    config = BulkConfig(batch_size=5, max_workers=1, dry_run=False, window="01:00-05:00")
    run = Background(lambda report: storage.bulk_rebuild_users(ids, config, progress=report)).start()
    operation_id = run.operation_id
    waited_while_closed(storage, operation_id, runners=1, looks=1)
    storage.cancel_bulk_rebuild(operation_id)
    result = run.join()
    assert (result.status, result.completed_users) == ("cancelled", 0)
    assert open_waits(storage, operation_id) == {}


def start_worker(url: str, operation_id: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("POTATO_TEST_KILL_AT_BATCH", None)
    child = subprocess.Popen(
        [sys.executable, str(CHILD), "worker", url, NOW.isoformat(), operation_id, "2"],
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env=env,
    )
    assert child.stdout is not None and child.stdout.readline().strip() == "ready"
    return child


@pg_only
def test_pause_stops_two_worker_processes_and_resume_lets_both_go_on(
    damaged: tuple[Storage, list[str]], db_url: str
) -> None:
    storage, ids = damaged
    # Batches of one, each followed by a rest five times its length: the pause lands mid-way.
    config = BulkConfig(batch_size=1, dry_run=False, nice_ratio=5)
    operation_id = api.open_bulk_operation(storage.database, ids, config)
    workers = [start_worker(db_url, operation_id) for _ in range(2)]
    try:
        until(lambda: storage.get_rebuild_progress(operation_id).processed_users >= 4, "the workers at work")
        assert storage.pause_bulk_rebuild(operation_id).status == "paused"
        waited_while_closed(storage, operation_id, runners=2)  # both processes wait at their gates
        until(lambda: held_batches(storage, operation_id) == 0, "every batch in flight finished")
        stopped_at = storage.get_rebuild_progress(operation_id).processed_users
        waited_while_closed(storage, operation_id, runners=2)  # both looked again, and did nothing
        assert storage.get_rebuild_progress(operation_id).processed_users == stopped_at < len(ids)
        assert held_batches(storage, operation_id) == 0
        assert all(w.poll() is None for w in workers)  # waiting, not gone

        assert storage.resume_bulk_rebuild(operation_id).status == "running"
        outputs = [w.communicate(timeout=120)[0] for w in workers]
    finally:
        for w in workers:
            if w.poll() is None:
                w.kill()
    assert [w.returncode for w in workers] == [0, 0], outputs
    progress = storage.get_rebuild_progress(operation_id)
    assert (progress.status, progress.completed_users) == ("completed", len(ids))
    assert item_statuses(storage, operation_id) == Counter({"completed": len(ids)})
    assert wrong_users(storage, NOW) == set()
    e = ops_throttle_episodes
    with storage.engine.connect() as conn:
        kinds = Counter(conn.execute(select(e.c.kind).where(e.c.operation_id == operation_id)).scalars())
    assert kinds == Counter({"paused": 2})  # one wait per worker process, each ended


# ---------------------------------------------------------------------------- adaptive sizes


def counting_clock() -> Callable[[], datetime]:
    """A clock a millisecond later at each call: every transaction stamps its items apart."""
    ticks = itertools.count()
    return lambda: NOW + timedelta(milliseconds=next(ticks))


def transaction_sizes(storage: Storage, operation_id: str) -> list[int]:
    """Return the users of each committed transaction, in order (items share its stamp)."""
    i = ops_operation_items
    with storage.engine.connect() as conn:
        stamps = conn.execute(select(i.c.finished_at).where(i.c.operation_id == operation_id)).scalars()
        by_stamp = Counter(stamps)
    return [by_stamp[s] for s in sorted(by_stamp)]


@pytest.mark.parametrize(
    ("target", "start", "bounds", "sizes"),
    [
        # Far slower than the target: the second transaction is already at the floor.
        pytest.param(1e-9, 8, (2, 8), [8] + [2] * 16, id="shrink"),
        # Far quicker: it grows by half each time up to the ceiling; a claim (12 users, the
        # ceiling) cuts the last transaction of each batch short.
        pytest.param(1e9, 2, (1, 12), [2, 3, 4, 3, 9, 3, 12, 4], id="grow"),
    ],
)
def test_transactions_adapt_toward_the_target_duration(
    db_url: str, target: float, start: int, bounds: tuple[int, int], sizes: list[int]
) -> None:
    storage = Storage.connect(db_url, clock=counting_clock())
    storage.create_schema()
    storage.set_feature_flag("ff.potato.runs_v2", True)
    try:
        seed(storage.engine, users_count=sum(sizes), days=20, corrupt=0.5, now=NOW)
        config = BulkConfig(
            batch_size=start,
            min_batch_size=bounds[0],
            max_batch_size=bounds[1],
            batch_seconds=target,
            max_workers=1,
            dry_run=False,
        )
        result = api.bulk_rebuild_users(storage.database, None, config)
        assert (result.status, result.completed_users) == ("completed", sum(sizes))
        assert transaction_sizes(storage, result.operation_id) == sizes
        assert wrong_users(storage, NOW, dates_only=True) == set()
    finally:
        storage.close()


def test_the_nice_ratio_rests_after_each_batch(
    damaged: tuple[Storage, list[str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    storage, ids = damaged
    rests: list[float] = []

    class StopEvent(threading.Event):
        """The run's stop event; a worker's timed wait on it is its rest (the gate stays open)."""

        def wait(self, timeout: float | None = None) -> bool:
            if threading.current_thread().name.startswith("potato-bulk") and timeout is not None:
                rests.append(timeout)
            return super().wait(timeout)

    monkeypatch.setattr(threading, "Event", StopEvent)  # the run's stop event is made from it
    result = storage.bulk_rebuild_users(
        ids, BulkConfig(batch_size=10, max_workers=1, dry_run=False, nice_ratio=0.5)
    )
    assert result.status == "completed"
    assert len(rests) == 4 and all(r > 0 for r in rests)  # one rest per batch of 10 of the 40 users


# ---------------------------------------------------------------------------- refusals and commands


def cli(db_url: str, *args: str) -> tuple[int, str, str]:
    app = typer.Typer()
    register(app)
    result = CliRunner().invoke(app, list(args), env={"POTATO_DATABASE_URL": db_url})
    return result.exit_code, result.stdout, result.stderr


def test_sqlite_refuses_a_replica_lag_limit_in_one_line(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'one.sqlite3'}"
    storage = Storage.connect(url)
    storage.create_schema()
    with pytest.raises(ConfigError, match="max_replica_lag needs PostgreSQL"):
        storage.bulk_rebuild_users([], BulkConfig(max_replica_lag="1MB"))
    code, out, err = cli(url, "bulk-rebuild", "--all", "--max-replica-lag", "16MB")
    assert (code, out) == (1, "")
    assert err.startswith("error: --max-replica-lag needs PostgreSQL") and err.count("\n") == 1
    code, _, err = cli(url, "bulk-rebuild", "--all", "--max-active-sessions", "8")
    assert code == 1 and err.startswith("error: --max-active-sessions needs PostgreSQL")
    code, _, err = cli(url, "bulk-rebuild", "--all", "--max-replica-lag", "10s")
    assert code == 1 and "give the lag as a size" in err and err.count("\n") == 1
    code, _, err = cli(url, "bulk-rebuild", "--all", "--window", "nine-five")
    assert code == 1 and err.startswith("error: window 'nine-five' is not HH:MM-HH:MM")


def test_pause_and_resume_from_the_command_line(damaged: tuple[Storage, list[str]], db_url: str) -> None:
    storage, ids = damaged
    if storage.dialect == "sqlite":
        operation_id = storage.bulk_rebuild_users(ids, BulkConfig(batch_size=5, dry_run=True)).operation_id
        code, out, _ = cli(db_url, "pause", operation_id)
        assert code == 0 and "has ended (completed): nothing to pause" in out
        return
    operation_id = api.open_bulk_operation(storage.database, ids, BulkConfig(batch_size=5, dry_run=False))
    code, out, err = cli(db_url, "pause", operation_id)
    assert (code, err) == (0, "")
    assert "pause requested" in out and f"{operation_id}  paused" in out
    code, out, _ = cli(db_url, "operations", "--status", "paused")
    assert code == 0 and out.startswith(f"{operation_id}  paused")
    code, out, err = cli(db_url, "resume", operation_id, "--quiet")  # nobody runs it: this process does
    assert (code, err) == (0, ""), out
    assert f"operation {operation_id}: completed; completed {len(ids)}" in out
    assert wrong_users(storage, NOW, dates_only=True) == set()


def test_every_new_bulk_option_has_help() -> None:
    app = typer.Typer()
    register(app)
    out = CliRunner().invoke(app, ["bulk-rebuild", "--help"], terminal_width=200).stdout
    for option in (
        "--max-replica-lag",
        "--max-active-sessions",
        "--nice-ratio",
        "--batch-seconds",
        "--min-batch-size",
        "--max-batch-size",
        "--window",
        "--window-timezone",
    ):
        assert option in out
    assert "Pause an operation" in CliRunner().invoke(app, ["pause", "--help"]).stdout


def test_the_gate_reads_a_standby_lag_over_its_limit() -> None:
    from potato_ops.db.health import StandbyLag

    lag = throttle.Gate._lag_wait
    assert lag([], 1024) is None
    assert lag([StandbyLag("s1", 1000)], 1024) is None
    over = lag([StandbyLag("s1", int(6.1 * 1024**2))], 1024**2)
    assert over is not None and over.reason == "throttled: replica lag 6.1 MB > 1 MB"
    two = lag([StandbyLag("s1", 10), StandbyLag("s2", 2 * 1024**2)], 1024**2)
    assert two is not None and two.reason == "throttled: replica lag 2 MB > 1 MB (s2)"
    unknown = lag([StandbyLag("s1", None)], 1024)
    assert unknown is not None and "pg_monitor" in unknown.reason


@pg_only
def test_active_sessions_over_the_limit_hold_the_operation(
    damaged: tuple[Storage, list[str]], quick_gate: None, pg_server_url: str
) -> None:
    storage, ids = damaged
    from sqlalchemy import create_engine, text

    # Two other sessions busy in a statement (each waiting on a lock the test holds).
    other = create_engine(pg_server_url, pool_size=4)
    holder = other.connect()
    holder.execute(text("SELECT pg_advisory_lock(4242)"))
    holder.commit()
    blocked: list[threading.Thread] = []
    for _ in range(2):

        def block() -> None:
            with other.connect() as conn:
                conn.execute(text("SELECT pg_advisory_lock(4242)"))
                conn.execute(text("SELECT pg_advisory_unlock_all()"))
                conn.commit()

        blocked.append(threading.Thread(target=block, daemon=True))
        blocked[-1].start()
    try:

        def busy() -> int:
            with storage.engine.connect() as conn:  # a new transaction: a fresh statistics snapshot
                return int(
                    conn.execute(
                        text(
                            "SELECT count(*) FROM pg_stat_activity "
                            "WHERE wait_event_type = 'Lock' AND state = 'active'"
                        )
                    ).scalar_one()
                )

        until(lambda: busy() >= 2, "two sessions busy")
        config = BulkConfig(batch_size=5, max_workers=1, dry_run=False, max_active_sessions=1)
        run = Background(lambda report: storage.bulk_rebuild_users(ids, config, progress=report)).start()
        operation_id = run.operation_id
        waited_while_closed(storage, operation_id, runners=1)
        progress = storage.get_rebuild_progress(operation_id)
        assert progress.processed_users == 0
        assert progress.waiting_kind == "load" and progress.waiting is not None
        assert progress.waiting.startswith("throttled: ") and progress.waiting.endswith("active sessions > 1")
        storage.cancel_bulk_rebuild(operation_id)  # the load is the machine's: stop here
        result = run.join()
        assert (result.status, result.completed_users) == ("cancelled", 0)
        assert result.throttled_seconds.keys() == {"load"}
    finally:
        holder.execute(text("SELECT pg_advisory_unlock_all()"))
        holder.commit()
        holder.close()
        for t in blocked:
            t.join(30)
        other.dispose()
