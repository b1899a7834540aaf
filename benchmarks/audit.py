"""Time the monitoring metrics and the whole-database invariant scan against the bare query.

The yardstick is the bare gaps-and-islands query: one SELECT that groups every user's marked
days into runs with window functions, nothing compared or written, its rows fetched. It runs
in the same process, on the same data, interleaved with the timed work, so both see the same
caches. Target: the whole scan (``validate_invariants()``) within 2 times that query. The
same query with its rows only counted in the database (nothing sent to the client) is timed
too, as a stricter yardstick.

    /work/venv/bin/python benchmarks/audit.py                      # 10,000 users x 365 days
    /work/venv/bin/python benchmarks/audit.py --users 1000 --backend sqlite

Prints a table per database; exits 0 whatever the figures (a benchmark, not a test).
"""

from __future__ import annotations

import argparse
import random
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy import create_engine, func, insert, select, text

from potato_ops import Storage, fixed_clock
from potato_ops.db.grouping import grouped_marks_sql
from potato_ops.db.schema import day_marks, ops_backups, ops_rebuild_history, ops_timezone_changes, runs
from potato_ops.demo.synth import seed
from potato_ops.monitoring.metrics import compute_metrics

NOW = datetime(2024, 3, 10, 15, 0, tzinfo=UTC)
DEFAULT_PG_ADMIN_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
TARGET_RATIO = 2.0


@dataclass(frozen=True)
class Timing:
    """Seconds of each repetition of one timed step."""

    name: str
    seconds: list[float]

    @property
    def best(self) -> float:
        return min(self.seconds)

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)


@contextmanager
def database(backend: str, pg_admin_url: str) -> Iterator[str]:
    """Yield the URL of a fresh, empty database on the backend; drop it afterwards."""
    if backend == "sqlite":
        with tempfile.TemporaryDirectory(prefix="potato-bench-") as folder:
            yield f"sqlite:///{Path(folder) / 'bench.sqlite3'}"
        return
    name = f"potato_bench_{uuid.uuid4().hex[:10]}"
    admin = create_engine(pg_admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield pg_admin_url.rsplit("/", 1)[0] + "/" + name
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def seed_history(storage: Storage, user_ids: list[str], rng: random.Random) -> int:
    """Record a month of rebuilds (one per user in the last 24 h), backups and zone changes."""
    rows = []
    for days_ago, share in ((0, 1.0), (3, 0.5), (10, 0.5), (30, 1.0)):
        for uid in user_ids:
            if rng.random() >= share:
                continue
            finished = NOW - timedelta(days=days_ago, seconds=rng.uniform(0, 86_000))
            ms = rng.lognormvariate(3.5, 0.8)  # a median of about 33 ms, a long tail
            rows.append(
                {
                    "operation_id": f"bench-{days_ago}",
                    "user_id": uid,
                    "kind": "rebuild",
                    "started_at": finished - timedelta(milliseconds=ms),
                    "finished_at": finished,
                    "duration_ms": ms,
                    "success": rng.random() > 0.002,
                    "violations": 0,
                }
            )
    backups = [
        {
            "user_id": uid,
            "created_at": NOW - timedelta(hours=rng.uniform(0, 720)),
            "reason": "rebuild",
            "run_count": 0,
            "checksum": "0" * 64,
            "payload": "[]",
        }
        for uid in rng.sample(user_ids, len(user_ids) // 10)
    ]
    changes = [
        {"user_id": uid, "old_timezone": "UTC", "new_timezone": "Asia/Tokyo", "changed_at": NOW}
        for uid in rng.sample(user_ids, len(user_ids) // 100)
    ]
    with storage.engine.begin() as conn:
        conn.execute(insert(ops_rebuild_history), rows)
        conn.execute(insert(ops_backups), backups)
        conn.execute(insert(ops_timezone_changes), changes)
    return len(rows)


def analyze(storage: Storage) -> None:
    """Refresh the planner's statistics (and PostgreSQL's visibility map) after seeding."""
    if storage.dialect == "postgresql":
        with storage.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(text("VACUUM ANALYZE"))
    else:
        with storage.engine.begin() as conn:
            conn.execute(text("ANALYZE"))


def bare_query(storage: Storage, *, fetch: bool) -> Callable[[], int]:
    """Return a step that runs the bare gaps-and-islands SELECT.

    ``fetch``: every row reaches the client (the query as an application runs it); else the
    rows are only counted in the database (a stricter yardstick: no transfer at all).
    """

    def run() -> int:
        with storage.engine.connect() as conn:
            grouped = grouped_marks_sql(conn)
            if fetch:
                return len(conn.execute(text(grouped)).all())
            return int(conn.execute(text(f"SELECT count(*) FROM ({grouped}) AS g")).scalar_one())

    return run


def time_steps(steps: dict[str, Callable[[], object]], repeat: int) -> list[Timing]:
    """Run every step once to warm up, then ``repeat`` rounds of all steps, interleaved."""
    for step in steps.values():
        step()
    seconds: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(repeat):
        for name, step in steps.items():
            t0 = time.perf_counter()
            step()
            seconds[name].append(time.perf_counter() - t0)
    return [Timing(name, seconds[name]) for name in steps]


def bench(backend: str, users: int, days: int, repeat: int, pg_admin_url: str) -> None:
    with database(backend, pg_admin_url) as url:
        storage = Storage.connect(url, clock=fixed_clock(NOW))
        storage.create_schema()
        t0 = time.perf_counter()
        seeded = seed(storage.engine, users_count=users, days=days, corrupt=0.01, now=NOW)
        history = seed_history(storage, list(seeded.user_ids), random.Random(7))
        analyze(storage)
        with storage.engine.connect() as conn:
            marks = conn.execute(select(func.count()).select_from(day_marks)).scalar_one()
            stored = conn.execute(select(func.count()).select_from(runs)).scalar_one()
        print(
            f"\n{backend}: {users:,} users x {days} days: {marks:,} day_marks rows, "
            f"{stored:,} runs, {history:,} history rows, {len(seeded.corrupted)} users corrupted "
            f"(seeded in {time.perf_counter() - t0:.1f} s)"
        )
        report = storage.validate_invariants()
        metrics = compute_metrics(storage.database)
        print(
            f"scan: {report.total} violations in {len(report.users_with_violations)} users; "
            f"metrics: {metrics.summary()}"
        )
        timings = time_steps(
            {
                "bare gaps-and-islands SELECT": bare_query(storage, fetch=True),
                "  the same, rows counted in the db": bare_query(storage, fetch=False),
                "validate_invariants() (whole scan)": storage.validate_invariants,
                "compute_metrics(scan=False)": lambda: compute_metrics(storage.database, scan=False),
                "compute_metrics() (with scan)": lambda: compute_metrics(storage.database),
            },
            repeat,
        )
        base = timings[0].median
        print(f"{'step':<38} {'median s':>9} {'best s':>8} {'x bare':>7}")
        for timing in timings:
            print(f"{timing.name:<38} {timing.median:>9.3f} {timing.best:>8.3f} {timing.median / base:>7.2f}")
        scan = timings[2].median
        for yardstick in timings[:2]:
            ratio = scan / yardstick.median
            verdict = "within" if ratio <= TARGET_RATIO else "NOT within"
            print(
                f"whole scan = {ratio:.2f} x {yardstick.name.strip()}: "
                f"{verdict} the {TARGET_RATIO:g} x target"
            )
        storage.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--users", type=int, default=10_000)
    parser.add_argument("--days", type=int, default=365)
    parser.add_argument("--repeat", type=int, default=5, help="timed rounds after a warm-up")
    parser.add_argument("--backend", choices=["sqlite", "postgres"], action="append", help="default: both")
    parser.add_argument("--pg-admin-url", default=DEFAULT_PG_ADMIN_URL)
    args = parser.parse_args()
    for backend in args.backend or ["sqlite", "postgres"]:
        bench(backend, args.users, args.days, args.repeat, args.pg_admin_url)


if __name__ == "__main__":
    main()
