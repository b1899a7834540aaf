"""Single-user rebuild latency on SQLite and PostgreSQL: prints p50/p95 and ratios.

One user with a year of streaky history (about 240 marked days) among background users.
Measured, interleaved round by round so load drift hits every case alike:

* full rebuild with backup and validation, one run corrupted before each iteration;
* the same with nothing to change;
* partial rebuilds over the last 30, 180 and 365 days, one run in the range corrupted;
* the baseline: a bare delete-and-insert of the same runs in one transaction.

"cpu p50" is this process's CPU time per call (Python, driver, SQLAlchemy); the rest of the
wall time is waiting on the database and on the host's scheduler.

Targets (reported, not asserted): full p50 < 20 ms on PostgreSQL, full <= 1.5x bare on both
databases, 30-day partial measurably faster than full.

    python benchmarks/single_user.py [--iterations 50] [--backends sqlite,postgres] [--profile]

PostgreSQL: the server at $POTATO_BENCH_PG_URL (default postgres@127.0.0.1:5432); the script
creates its own database there and drops it at the end.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import random
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

from sqlalchemy import create_engine, delete, insert, select, text, update

from potato_ops import Storage, fixed_clock
from potato_ops.db.schema import runs
from potato_ops.demo.synth import seed
from potato_ops.domain.dates import local_today
from potato_ops.domain.runs import expected_runs

NOW = datetime(2024, 3, 10, 15, 0, tzinfo=UTC)
PG_ADMIN_URL = os.environ.get("POTATO_BENCH_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
CASES = ("full", "full_no_change", "partial_30", "partial_180", "partial_365", "bare")


@dataclass
class Subject:
    """The benchmarked user and what its runs should be."""

    storage: Storage
    user_id: str
    today: date
    marked_days: int
    expected_count: int


@contextmanager
def database(backend: str) -> Iterator[str]:
    """Yield the URL of a new, empty database on the backend; remove it afterwards."""
    if backend == "sqlite":
        with tempfile.TemporaryDirectory() as tmp:
            yield f"sqlite:///{Path(tmp) / 'bench.sqlite3'}"
        return
    name = f"potato_bench_{uuid.uuid4().hex[:10]}"
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield PG_ADMIN_URL.rsplit("/", 1)[0] + "/" + name
    finally:
        with admin.connect() as conn:
            conn.execute(
                text(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE datname = :n AND pid <> pg_backend_pid()"
                ),
                {"n": name},
            )
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}"'))
        admin.dispose()


def prepare(url: str, background_users: int) -> Subject:
    """Create the schema, seed the users and rebuild the subject once; return it."""
    storage = Storage.connect(url, clock=fixed_clock(NOW))
    storage.create_schema()
    seeded = seed(storage.engine, users_count=1 + background_users, days=365, now=NOW)
    uid = seeded.user_ids[0]
    marks = [m.date for m in storage.get_user_day_marks(uid) if m.value]
    user = storage.get_user(uid)
    today = local_today(user.timezone, NOW)
    assert storage.rebuild_user_runs(uid).success
    return Subject(storage, uid, today, len(marks), len(expected_runs(uid, marks, today)))


def corrupt_one_run(subject: Subject, rng: random.Random, within_days: int | None) -> None:
    """Give one (inactive) run of the subject a wrong day_count, so a rebuild must replace it."""
    lo = subject.today - timedelta(days=within_days - 1) if within_days else date.min
    with subject.storage.engine.begin() as conn:
        candidates = [
            (rid, count)
            for rid, count in conn.execute(
                select(runs.c.id, runs.c.day_count).where(
                    runs.c.user_id == subject.user_id,
                    runs.c.end_date >= lo,
                    runs.c.active.is_(False),
                )
            )
        ]
        rid, count = rng.choice(candidates)
        conn.execute(
            update(runs)
            .where(runs.c.user_id == subject.user_id, runs.c.id == rid)
            .values(day_count=count + 1)
        )


def bare_replace(subject: Subject) -> Callable[[], None]:
    """Return the baseline: delete the user's runs and insert the right ones, one transaction."""
    marks = [m.date for m in subject.storage.get_user_day_marks(subject.user_id) if m.value]
    rows = [
        {
            "user_id": r.user_id,
            "start_date": r.start_date,
            "end_date": r.end_date,
            "day_count": r.day_count,
            "active": r.active,
        }
        for r in expected_runs(subject.user_id, marks, subject.today)
    ]

    def run() -> None:
        with subject.storage.engine.begin() as conn:
            conn.execute(delete(runs).where(runs.c.user_id == subject.user_id))
            conn.execute(insert(runs), rows)

    return run


def measure(
    subject: Subject, iterations: int, warmup: int = 5
) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """Return wall and client-CPU milliseconds per case, the cases interleaved in each round."""
    rng = random.Random(1)
    s, uid, today = subject.storage, subject.user_id, subject.today
    bare = bare_replace(subject)

    def partial(days: int) -> Callable[[], None]:
        def run() -> None:
            result = s.rebuild_user_runs(uid, today - timedelta(days=days - 1), today)
            assert result.success and result.runs_created == 1, result

        return run

    def full() -> None:
        result = s.rebuild_user_runs(uid)
        assert result.success and result.runs_created == 1, result

    def full_no_change() -> None:
        result = s.rebuild_user_runs(uid)
        assert result.success and result.runs_created == result.runs_deleted == 0, result

    plan: dict[str, tuple[int | bool | None, Callable[[], None]]] = {
        # case -> (corrupt first: False = no, None = anywhere, n = within the last n days)
        "full": (None, full),
        "full_no_change": (False, full_no_change),
        "partial_30": (30, partial(30)),
        "partial_180": (180, partial(180)),
        "partial_365": (365, partial(365)),
        "bare": (False, bare),
    }
    timings: dict[str, list[float]] = {case: [] for case in CASES}
    cpu: dict[str, list[float]] = {case: [] for case in CASES}
    for i in range(warmup + iterations):
        for case, (corrupt, body) in plan.items():
            if corrupt is not False:
                corrupt_one_run(subject, rng, corrupt if isinstance(corrupt, int) else None)
            c0, t0 = time.process_time(), time.perf_counter()
            body()
            elapsed = (time.perf_counter() - t0) * 1000
            if i >= warmup:
                timings[case].append(elapsed)
                cpu[case].append((time.process_time() - c0) * 1000)
    return timings, cpu


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    k = max(0, min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1))))
    return ordered[k]


def report(
    backend: str, subject: Subject, timings: dict[str, list[float]], cpu: dict[str, list[float]]
) -> None:
    print(
        f"\n{backend}: user {subject.user_id[:8]}, {subject.marked_days} marked days in 365, "
        f"{subject.expected_count} runs, {len(timings['full'])} iterations"
    )
    print(f"  {'case':<16}{'p50 ms':>9}{'p95 ms':>9}{'mean ms':>9}{'cpu p50':>9}")
    for case in CASES:
        v = timings[case]
        print(
            f"  {case:<16}{percentile(v, 50):>9.2f}{percentile(v, 95):>9.2f}"
            f"{statistics.mean(v):>9.2f}{percentile(cpu[case], 50):>9.2f}"
        )
    full = percentile(timings["full"], 50)
    bare = percentile(timings["bare"], 50)
    p30 = percentile(timings["partial_30"], 50)
    print(f"  ratio full/bare (p50)       {full / bare:6.2f}  (target <= 1.5)")
    print(f"  ratio partial30/full (p50)  {p30 / full:6.2f}  (target < 1, measurably)")
    if backend == "postgres":
        print(f"  full p50 {full:.2f} ms  (target < 20 ms)")


def profile(subject: Subject, iterations: int) -> None:
    """Print where a corrupted full rebuild spends its time (cProfile, cumulative)."""
    rng = random.Random(2)
    prof = cProfile.Profile()
    for _ in range(iterations):
        corrupt_one_run(subject, rng, None)
        prof.enable()
        subject.storage.rebuild_user_runs(subject.user_id)
        prof.disable()
    out = io.StringIO()
    pstats.Stats(prof, stream=out).sort_stats("cumulative").print_stats(30)
    print(out.getvalue())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--iterations", type=int, default=50)
    parser.add_argument("--backends", default="sqlite,postgres")
    parser.add_argument("--background-users", type=int, default=200)
    parser.add_argument("--profile", action="store_true", help="also cProfile the full rebuild")
    args = parser.parse_args(argv)
    print("command:", " ".join([Path(sys.executable).name, *sys.argv]))
    if hasattr(os, "getloadavg"):  # latencies here are wall times: say how busy the host was
        print("load average: " + " ".join(f"{x:.2f}" for x in os.getloadavg()))
    for backend in args.backends.split(","):
        with database(backend) as url:
            subject = prepare(url, args.background_users)
            try:
                timings, cpu = measure(subject, args.iterations)
                report(backend, subject, timings, cpu)
                if args.profile:
                    profile(subject, args.iterations)
            finally:
                subject.storage.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
