"""Time bulk rebuilds (users per hour) against a bare set-based rebuild of the same data.

The yardstick is the bare set-based rebuild: in one transaction, delete every run, then one
INSERT ... SELECT that groups every user's marked days into runs with window functions (the
active flag from each user's local today), no backup, no ledger, no validation. It runs in the
same script, on the same data, after the bulk scenarios.

Scenarios, each a real run (backups of changed users and validation on, ledger and history
written), on data seeded with 1% of users corrupted:

* full: every user, all dates;
* partial: every user, the last 30 days;
* full, all wrong: every user's runs made wrong first (day_count + 1), so every user is backed
  up, deleted and re-inserted: the most work a bulk run can have;
* full, runs missing: every run deleted first (write-heavy: every user's runs inserted).

Targets, as ratios to the bare rebuild measured in the same run: 1% damaged (the first full
run) at most 1.0 on SQLite and 0.3 on PostgreSQL; runs missing at most 1.5 on SQLite and 1.0
on PostgreSQL. The time split sums each phase over the workers.

Memory: the peak resident memory of a process that only runs the bulk rebuild (every user's
runs wrong), at ``--users`` and at each ``--memory-users`` size; it should not grow with the
user count (the batch, not the database, sets it).

    .venv/bin/python benchmarks/bulk.py                       # 10,000 users x 365 days; 40,000
    .venv/bin/python benchmarks/bulk.py --users 1000 --memory-users 4000 --backend sqlite

Prints a table per database; exits 0 whatever the figures (a benchmark, not a test).
"""

from __future__ import annotations

import argparse
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy import (
    Column,
    Date,
    MetaData,
    Table,
    Text,
    create_engine,
    delete,
    insert,
    select,
    text,
    update,
)

from potato_ops import BulkConfig, Storage, fixed_clock
from potato_ops.db.grouping import grouped_marks_sql
from potato_ops.db.schema import RUNS_V2_FLAG, runs
from potato_ops.db.schema import users as users_table
from potato_ops.demo.synth import CORRUPTIONS_POSTGRES, CORRUPTIONS_SQLITE, inject_corruption, seed
from potato_ops.domain.dates import local_today
from potato_ops.domain.models import ViolationKind
from potato_ops.ops.bulk.api import bulk_rebuild_users

NOW = datetime(2024, 3, 10, 15, 0, tzinfo=UTC)
DEFAULT_PG_ADMIN_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
PHASES = ("lock", "read", "compute", "backup", "write", "validate", "ledger", "commit")


@dataclass
class Figure:
    """One timed scenario."""

    name: str
    users: int
    seconds: float
    cpu_seconds: float
    changed: int = 0
    failed: int = 0
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def per_hour(self) -> float:
        return self.users / self.seconds * 3600


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


def analyze(storage: Storage) -> None:
    """Refresh planner statistics after a mass change, as autovacuum would in production."""
    if storage.dialect == "postgresql":
        with storage.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(text("VACUUM ANALYZE"))
    else:
        with storage.engine.begin() as conn:
            conn.execute(text("ANALYZE"))
        # Fold the WAL into the database, as a long-lived one is: otherwise the first scenario
        # after seeding pays for looking pages up in a WAL of the whole seed.
        with storage.engine.connect() as conn:
            conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")


def timed_bulk(storage: Storage, name: str, config: BulkConfig) -> Figure:
    cpu0, t0 = time.process_time(), time.perf_counter()
    result = bulk_rebuild_users(storage.database, None, config)
    seconds, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    assert result.status == "completed", result
    return Figure(
        name,
        result.total_users,
        seconds,
        cpu,
        result.users_changed,
        result.failed_users,
        result.timings,
    )


def bare_rebuild(storage: Storage) -> Figure:
    """Delete every run, then insert the grouping of every user's marks in one statement."""
    users = storage.get_all_users()
    postgres = storage.dialect == "postgresql"
    yesterday = "t.today - 1" if postgres else "date(t.today, '-1 day')"
    today_table = Table(
        "bench_today",
        MetaData(),
        Column("user_id", Text, primary_key=True),
        Column("today", Date),
        prefixes=["TEMPORARY"],
    )
    cpu0, t0 = time.process_time(), time.perf_counter()
    with storage.engine.begin() as conn:
        today_table.create(conn)
        conn.execute(
            insert(today_table), [{"user_id": u.id, "today": local_today(u.timezone, NOW)} for u in users]
        )
        conn.execute(text("DELETE FROM runs"))
        conn.execute(
            text(
                "INSERT INTO runs (user_id, start_date, end_date, day_count, active) "
                "SELECT g.user_id, g.start_date, g.end_date, g.day_count, "
                f"(g.start_date <= t.today AND g.end_date >= {yesterday}) "
                f"FROM ({grouped_marks_sql(conn)}) AS g JOIN bench_today AS t ON t.user_id = g.user_id"
            )
        )
        today_table.drop(conn)
    return Figure("bare set-based, full", len(users), time.perf_counter() - t0, time.process_time() - cpu0)


TARGETS = {
    ("sqlite", "bulk, full"): 1.0,
    ("sqlite", "bulk, full, runs missing"): 1.5,
    ("postgres", "bulk, full"): 0.3,
    ("postgres", "bulk, full, runs missing"): 1.0,
}


def peak_rss_mb() -> float:
    """Return this process's peak resident memory in MB (Linux reports KB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def peak_rss_of_bulk(url: str, args: argparse.Namespace) -> float:
    """Return the peak RSS (MB) of a child process that only runs a real full bulk rebuild."""
    out = subprocess.run(
        [
            sys.executable,
            __file__,
            "--child-url",
            url,
            "--batch-size",
            str(args.batch_size),
            "--workers",
            str(args.workers),
        ],
        check=True,
        capture_output=True,
        text=True,
    )
    return float(out.stdout.strip().splitlines()[-1])


def child_bulk(url: str, args: argparse.Namespace) -> None:
    """Run one full bulk rebuild and print this process's peak RSS in MB."""
    storage = Storage.connect(url, clock=fixed_clock(NOW))
    config = BulkConfig(batch_size=args.batch_size, max_workers=args.workers, dry_run=False)
    result = bulk_rebuild_users(storage.database, None, config)
    assert result.status == "completed", result
    print(peak_rss_mb())


def memory_at(backend: str, users: int, args: argparse.Namespace) -> float:
    """Return the bulk engine's peak RSS on a fresh database of ``users`` users, all wrong."""
    with database(backend, args.pg_admin_url) as url:
        storage = Storage.connect(url, clock=fixed_clock(NOW))
        storage.create_schema()
        seed(storage.engine, users_count=users, days=args.days, now=NOW)
        storage.set_feature_flag(RUNS_V2_FLAG, True)
        with storage.engine.begin() as conn:
            conn.execute(update(runs).values(day_count=runs.c.day_count + 1))
        analyze(storage)
        storage.close()
        return peak_rss_of_bulk(url, args)


def run_backend(backend: str, args: argparse.Namespace) -> None:
    with database(backend, args.pg_admin_url) as url:
        storage = Storage.connect(url, clock=fixed_clock(NOW))
        storage.create_schema()
        t0 = time.perf_counter()
        seeded = seed(storage.engine, users_count=args.users, days=args.days, corrupt=0.01, now=NOW)
        storage.set_feature_flag(RUNS_V2_FLAG, True)
        analyze(storage)
        marks = seeded.marks_written
        print(
            f"\n== {backend}: {args.users:,} users x {args.days} days, {marks:,} day-mark rows, "
            f"{seeded.runs_written:,} runs, {len(seeded.corrupted)} users corrupted "
            f"(seeded in {time.perf_counter() - t0:.0f} s)"
        )
        kinds = CORRUPTIONS_POSTGRES if backend == "postgres" else CORRUPTIONS_SQLITE
        kinds = tuple(k for k in kinds if k != ViolationKind.ORPHAN)
        rng = random.Random(7)
        config = BulkConfig(batch_size=args.batch_size, max_workers=args.workers, dry_run=False)
        last30 = (NOW.date() - timedelta(days=29)).isoformat()
        figures: list[Figure] = []

        figures.append(timed_bulk(storage, "bulk, full", config))
        inject_corruption(storage.engine, seeded.user_ids, args.users // 100, kinds, rng, NOW)
        partial = BulkConfig(
            batch_size=args.batch_size, max_workers=args.workers, dry_run=False, from_date=last30
        )
        figures.append(timed_bulk(storage, "bulk, partial (last 30 days)", partial))
        with storage.engine.begin() as conn:
            conn.execute(update(runs).values(day_count=runs.c.day_count + 1))
        analyze(storage)
        figures.append(timed_bulk(storage, "bulk, full, every user wrong", config))
        left = storage.validate_invariants().violations
        ghosts = {v.user_id for v in left if v.kind == ViolationKind.ORPHAN}
        figures.append(timed_bulk(storage, "bulk, full, dry run", BulkConfig(args.batch_size, args.workers)))
        with storage.engine.begin() as conn:
            conn.execute(delete(runs).where(runs.c.user_id.in_(select(users_table.c.id))))
        analyze(storage)
        figures.append(timed_bulk(storage, "bulk, full, runs missing", config))
        analyze(storage)
        bare = bare_rebuild(storage)
        figures.append(bare)
        with storage.engine.begin() as conn:
            conn.execute(update(runs).values(day_count=runs.c.day_count + 1))
        analyze(storage)
        peaks = {args.users: peak_rss_of_bulk(url, args)}

        print(
            f"batch size {args.batch_size}, {args.workers} workers; after the bulk runs "
            f"{sum(v.user_id not in ghosts for v in left)} violations of existing users "
            f"(and {len(ghosts)} users' orphan runs, which no rebuild touches)"
        )
        print(
            f"{'scenario':<32}{'users':>8}{'changed':>9}{'seconds':>9}{'users/hour':>13}"
            f"{'x bare':>8}{'target':>8}{'cpu s':>8}"
        )
        for f in figures:
            target = TARGETS.get((backend, f.name))
            print(
                f"{f.name:<32}{f.users:>8,}{f.changed:>9,}{f.seconds:>9.1f}{f.per_hour:>13,.0f}"
                f"{f.seconds / bare.seconds:>8.2f}{'<= ' + str(target) if target else '':>8}"
                f"{f.cpu_seconds:>8.1f}"
            )
        print("time split (share of the phase times summed over workers):")
        print(f"{'scenario':<32}" + "".join(f"{p:>9}" for p in PHASES))
        for f in figures:
            if not f.timings:
                continue
            total = sum(f.timings.values()) or 1.0
            print(f"{f.name:<32}" + "".join(f"{f.timings.get(p, 0.0) / total:>9.0%}" for p in PHASES))
        storage.close()
    for size in args.memory_users:
        peaks[size] = memory_at(backend, size, args)
    print("bulk engine peak RSS (a process running only the full rebuild, every user wrong):")
    for size, mb in sorted(peaks.items()):
        print(f"  {size:>9,} users: {mb:7.0f} MB")
    if len(peaks) > 1:
        growth = max(peaks.values()) / min(peaks.values())
        print(f"  largest / smallest: {growth:.2f} (target: flat, within 20%)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=10_000)
    parser.add_argument("--days", type=int, default=365)
    parser.add_argument("--batch-size", type=int, default=500)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--backend", choices=["sqlite", "postgres", "both"], default="both")
    parser.add_argument("--pg-admin-url", default=os.environ.get("POTATO_TEST_PG_URL", DEFAULT_PG_ADMIN_URL))
    parser.add_argument("--memory-users", type=int, nargs="*", default=[40_000])
    parser.add_argument("--child-url", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child_url:
        child_bulk(args.child_url, args)
        return
    print_machine()
    for backend in ("sqlite", "postgres") if args.backend == "both" else (args.backend,):
        run_backend(backend, args)


def print_machine() -> None:
    """Print the cores and how busy the machine is as a run starts."""
    load = os.getloadavg()
    print(
        f"{os.cpu_count()} cores; load average {load[0]:.1f} when starting "
        "(other processes on the machine slow every figure alike)"
    )


if __name__ == "__main__":
    main()
