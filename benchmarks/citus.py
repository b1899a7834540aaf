"""Time bulk rebuilds on a Citus cluster against the single PostgreSQL server, same data, same run.

Both databases get the same seeded data (the same seed: 10,000 users x 365 days by default,
1% of users corrupted). The cluster's copy is seeded with the single-server layout, then
converted in place (``init-db --distributed``'s ``distribute_schema``), which is timed too.
Scenarios, each a real bulk run over every user (backups of changed users, validation, ledger
and history on), then the whole-database invariant scan:

* 1% damaged: the seeded data; 1 user in 100 has wrong runs;
* every user wrong: every run's day_count + 1 first, so every user is backed up, deleted and
  re-inserted;
* scan: ``validate_invariants()`` over the whole database (pushed down to the workers).

On one machine the cluster is not faster: its coordinator and two workers share the same
cores and every statement crosses one more connection. The figures (and the cluster/single
ratio) feed the scaling estimate in README.md.

    python benchmarks/citus.py --citus-url postgresql+psycopg://postgres@127.0.0.1:9700/postgres

Prints a table; exits 0 whatever the figures (a benchmark, not a test).
"""

from __future__ import annotations

import argparse
import os
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import create_engine, text, update

from potato_ops import BulkConfig, Storage, fixed_clock
from potato_ops.db.distributed import distribute_schema
from potato_ops.db.schema import RUNS_V2_FLAG, runs
from potato_ops.demo.synth import seed
from potato_ops.domain.models import ViolationKind
from potato_ops.ops.bulk.api import bulk_rebuild_users

NOW = datetime(2024, 3, 10, 15, 0, tzinfo=UTC)
DEFAULT_PG_ADMIN_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"


@dataclass
class Figure:
    """One timed scenario on one database."""

    name: str
    users: int
    seconds: float
    changed: int = 0

    @property
    def per_hour(self) -> float:
        return self.users / self.seconds * 3600


@contextmanager
def single_server(admin_url: str) -> Iterator[str]:
    """Yield the URL of a fresh database on the single server; drop it afterwards."""
    name = f"potato_bench_{uuid.uuid4().hex[:10]}"
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield admin_url.rsplit("/", 1)[0] + "/" + name
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@contextmanager
def cluster_schema(citus_url: str) -> Iterator[str]:
    """Yield the URL of a fresh schema on the Citus coordinator; drop it afterwards."""
    name = f"potato_bench_{uuid.uuid4().hex[:10]}"
    admin = create_engine(citus_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE SCHEMA "{name}"'))
    try:
        yield f"{citus_url}{'&' if '?' in citus_url else '?'}options=-csearch_path%3D{name}"
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP SCHEMA IF EXISTS "{name}" CASCADE'))
        admin.dispose()


def analyze(storage: Storage) -> None:
    """Refresh planner statistics after a mass change, as autovacuum would in production."""
    with storage.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text("ANALYZE"))


def timed_bulk(storage: Storage, name: str, config: BulkConfig) -> Figure:
    t0 = time.perf_counter()
    result = bulk_rebuild_users(storage.database, None, config)
    seconds = time.perf_counter() - t0
    assert result.status == "completed" and result.failed_users == 0, result
    return Figure(name, result.total_users, seconds, result.users_changed)


def timed_scan(storage: Storage, users: int) -> Figure:
    t0 = time.perf_counter()
    report = storage.validate_invariants()
    seconds = time.perf_counter() - t0
    ghosts = {
        v.user_id for v in report.violations if v.kind == ViolationKind.ORPHAN
    }  # no rebuild touches them
    assert not [v for v in report.violations if v.user_id not in ghosts], report.violations[:3]
    return Figure("scan (validate_invariants)", users, seconds)


def run(url: str, label: str, args: argparse.Namespace, *, distributed: bool) -> list[Figure]:
    storage = Storage.connect(url, clock=fixed_clock(NOW))
    storage.create_schema()
    t0 = time.perf_counter()
    seeded = seed(
        storage.engine, users_count=args.users, days=args.days, corrupt=0.01, now=NOW, seed_value=42
    )
    storage.set_feature_flag(RUNS_V2_FLAG, True)
    seeded_s = time.perf_counter() - t0
    figures: list[Figure] = []
    if distributed:
        t0 = time.perf_counter()
        distribute_schema(storage.engine)
        figures.append(Figure("convert in place (distribute)", args.users, time.perf_counter() - t0))
    analyze(storage)
    print(
        f"{label}: {args.users:,} users x {args.days} days, {seeded.marks_written:,} day-mark rows, "
        f"{seeded.runs_written:,} runs, {len(seeded.corrupted)} users corrupted (seeded in {seeded_s:.0f} s)",
        flush=True,
    )
    config = BulkConfig(batch_size=args.batch_size, max_workers=args.workers, dry_run=False)
    figures.append(timed_bulk(storage, "bulk, all users, 1% damaged", config))
    with storage.engine.begin() as conn:
        conn.execute(update(runs).values(day_count=runs.c.day_count + 1))
    analyze(storage)
    figures.append(timed_bulk(storage, "bulk, all users, every one wrong", config))
    figures.append(timed_scan(storage, args.users))
    storage.close()
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=10_000)
    parser.add_argument("--days", type=int, default=365)
    parser.add_argument("--batch-size", type=int, default=500)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--pg-admin-url", default=os.environ.get("POTATO_TEST_PG_URL", DEFAULT_PG_ADMIN_URL))
    parser.add_argument("--citus-url", default=os.environ.get("POTATO_TEST_CITUS_URL", ""))
    args = parser.parse_args()
    if not args.citus_url:
        parser.error(
            "give --citus-url (or set POTATO_TEST_CITUS_URL): the coordinator that cluster.sh printed"
        )
    load = os.getloadavg()
    print(
        f"{os.cpu_count()} cores; load average {load[0]:.1f} when starting "
        "(other processes on the machine slow every figure alike)"
    )
    with single_server(args.pg_admin_url) as url:
        single = run(url, "single PostgreSQL server", args, distributed=False)
    with cluster_schema(args.citus_url) as url:
        cluster = run(url, "Citus: coordinator + 2 workers, one machine", args, distributed=True)
    by_name = {f.name: f for f in single}
    print(f"batch size {args.batch_size}, {args.workers} threads per runner")
    print(
        f"{'scenario':<34}{'single s':>10}{'cluster s':>11}{'cluster/single':>16}"
        f"{'cluster users/h':>17}{'changed':>9}"
    )
    for f in cluster:
        base = by_name.get(f.name)
        ratio = f"{f.seconds / base.seconds:>16.2f}" if base else f"{'-':>16}"
        print(
            f"{f.name:<34}{(f'{base.seconds:.1f}' if base else '-'):>10}{f.seconds:>11.1f}{ratio}"
            f"{f.per_hour:>17,.0f}{f.changed:>9,}"
        )


if __name__ == "__main__":
    main()
