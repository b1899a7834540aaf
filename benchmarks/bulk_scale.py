"""Bulk rebuild cost per user as the user count grows, right after a mass rewrite of runs.

For each size, on a fresh database (seeded, then analyzed as a database in service is):

1. the incident and the baseline at once: the bare set-based rewrite (delete every run, then
   one ``INSERT ... SELECT`` grouping every user's marks, as ``bulk.py``'s yardstick), timed;
   nothing is analyzed after it, so the planner's statistics are as a mass rewrite leaves them;
2. 1% of users damaged (one run each, ``inject_corruption``);
3. the bulk rebuild (every user, batch 500, 2 workers, a real run with backups and validation),
   timed: it meets the stale statistics the rewrite left;
4. the read floor: one grouping ``SELECT`` of every user's marks, summed in the database.

Printed per size: seconds and time per user of each, the bulk's ratio to the bare rewrite and
to the read floor; then the bulk's time per user at the largest size over the smallest.
Targets (PostgreSQL): that ratio at most 1.5, and the bulk at most 0.3x the bare rewrite.

    .venv/bin/python benchmarks/bulk_scale.py --users 10000,100000
    .venv/bin/python benchmarks/bulk_scale.py --users 2000,20000 --backend sqlite
    # seeding 100,000 users on PostgreSQL takes a while: seed a database once, then clone it
    potato-ops seed --users 100000 --database-url postgresql+psycopg://postgres@HOST/seeded100k
    .venv/bin/python benchmarks/bulk_scale.py --users 10000,100000 --backend postgres \\
        --pg-template 10000=seeded10k --pg-template 100000=seeded100k

A template is cloned (``CREATE DATABASE ... TEMPLATE``) instead of seeding; its clock is taken
from its data (noon UTC on its last marked day). Exits 0 whatever the figures.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from datetime import time as clock_time
from pathlib import Path

from sqlalchemy import create_engine, text

from potato_ops import BulkConfig, Storage, fixed_clock
from potato_ops.db.grouping import grouped_marks_sql
from potato_ops.db.schema import RUNS_V2_FLAG
from potato_ops.demo.synth import CORRUPTIONS_POSTGRES, CORRUPTIONS_SQLITE, inject_corruption, seed
from potato_ops.domain.models import ViolationKind
from potato_ops.ops.bulk.api import bulk_rebuild_users

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script: find the sibling
from benchmarks import bulk as yardstick

TARGET_GROWTH = 1.5
TARGET_BARE = 0.3


@dataclass
class Row:
    """The figures of one size."""

    users: int
    bulk_s: float
    bare_s: float
    floor_s: float
    changed: int
    damaged: int

    def per_user_ms(self, seconds: float) -> float:
        return seconds / self.users * 1000


@contextmanager
def cloned(template: str, pg_admin_url: str) -> Iterator[str]:
    """Yield the URL of a fresh copy of the template database; drop it afterwards."""
    name = f"potato_bench_{uuid.uuid4().hex[:10]}"
    admin = create_engine(pg_admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}" TEMPLATE "{template}"'))
    try:
        yield pg_admin_url.rsplit("/", 1)[0] + "/" + name
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def read_floor(storage: Storage) -> float:
    """Return the seconds of one grouping SELECT of every user's marks (nothing fetched)."""
    t0 = time.perf_counter()
    with storage.engine.connect() as conn:
        conn.execute(text(f"SELECT count(*), sum(day_count) FROM ({grouped_marks_sql(conn)}) AS g")).one()
    return time.perf_counter() - t0


def data_clock(url: str) -> datetime:
    """Return noon UTC on the last marked day of a seeded database (its seed's clock)."""
    engine = create_engine(url)
    with engine.connect() as conn:
        last = conn.execute(text("SELECT max(date) FROM day_marks")).scalar_one()
    engine.dispose()
    return datetime.combine(last, clock_time(12), UTC)


def measure(url: str, backend: str, users: int, now: datetime, seeded: bool) -> Row:
    storage = Storage.connect(url, clock=fixed_clock(now))
    storage.create_schema()
    if not seeded:
        seed(storage.engine, users_count=users, days=365, now=now)
    storage.set_feature_flag(RUNS_V2_FLAG, True)
    yardstick.analyze(storage)  # a database in service, before the incident
    yardstick.NOW = now  # the bare rewrite's active flags
    bare = yardstick.bare_rebuild(storage)
    if backend == "postgres":
        with storage.engine.begin() as conn:  # the rewrite's counts reach pg_stat_user_tables now
            conn.execute(text("SELECT pg_stat_force_next_flush()"))
    ids = [u.id for u in storage.get_all_users()]
    assert len(ids) == users, f"the database holds {len(ids)} users, not {users}"
    kinds = CORRUPTIONS_POSTGRES if backend == "postgres" else CORRUPTIONS_SQLITE
    kinds = tuple(k for k in kinds if k != ViolationKind.ORPHAN)
    damaged = inject_corruption(storage.engine, ids, users // 100, kinds, random.Random(7), now)
    config = BulkConfig(batch_size=500, max_workers=2, dry_run=False)
    t0 = time.perf_counter()
    result = bulk_rebuild_users(storage.database, None, config)
    bulk_s = time.perf_counter() - t0
    assert result.status == "completed", result
    floor_s = read_floor(storage)
    storage.close()
    return Row(users, bulk_s, bare.seconds, floor_s, result.users_changed, len(damaged))


def run_backend(backend: str, sizes: list[int], args: argparse.Namespace) -> None:
    templates = dict(args.pg_template) if backend == "postgres" else {}
    rows: list[Row] = []
    for users in sizes:
        t0 = time.perf_counter()
        if users in templates:
            with cloned(templates[users], args.pg_admin_url) as url:
                rows.append(measure(url, backend, users, data_clock(url), seeded=True))
        else:
            with yardstick.database(backend, args.pg_admin_url) as url:
                rows.append(measure(url, backend, users, yardstick.NOW, seeded=False))
        print(f"  {backend} {users:,} users measured in {time.perf_counter() - t0:.0f} s", flush=True)
    print(f"\n== {backend}: 365 days, 1% of users damaged, statistics as the bare rewrite left them")
    print(
        f"{'users':>9}{'damaged':>9}{'changed':>9}{'bulk s':>9}{'ms/user':>9}{'bare s':>9}{'ms/user':>9}"
        f"{'x bare':>8}{'floor s':>9}{'ms/user':>9}{'x floor':>9}"
    )
    for r in rows:
        print(
            f"{r.users:>9,}{r.damaged:>9,}{r.changed:>9,}{r.bulk_s:>9.1f}{r.per_user_ms(r.bulk_s):>9.3f}"
            f"{r.bare_s:>9.1f}{r.per_user_ms(r.bare_s):>9.3f}{r.bulk_s / r.bare_s:>8.2f}"
            f"{r.floor_s:>9.1f}{r.per_user_ms(r.floor_s):>9.3f}{r.bulk_s / r.floor_s:>9.2f}"
        )
    if len(rows) > 1:
        small, large = rows[0], rows[-1]
        for what, pick in (("bulk", "bulk_s"), ("bare rewrite", "bare_s"), ("read floor", "floor_s")):
            growth = large.per_user_ms(getattr(large, pick)) / small.per_user_ms(getattr(small, pick))
            target = f" (target <= {TARGET_GROWTH})" if what == "bulk" else ""
            print(f"{what} time per user, {large.users:,} over {small.users:,} users: {growth:.2f}{target}")
        worst = max(r.bulk_s / r.bare_s for r in rows)
        print(f"bulk / bare rewrite, worst size: {worst:.2f} (target <= {TARGET_BARE} on PostgreSQL)")


def _template(value: str) -> tuple[int, str]:
    users, _, name = value.partition("=")
    return int(users), name


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", default="10000,100000", help="sizes, comma-separated")
    parser.add_argument("--backend", choices=["sqlite", "postgres", "both"], default="both")
    parser.add_argument(
        "--pg-admin-url", default=os.environ.get("POTATO_TEST_PG_URL", yardstick.DEFAULT_PG_ADMIN_URL)
    )
    parser.add_argument(
        "--pg-template", type=_template, action="append", default=[], metavar="USERS=DATABASE"
    )
    args = parser.parse_args()
    sizes = sorted(int(s) for s in args.users.split(","))
    yardstick.print_machine()
    for backend in ("sqlite", "postgres") if args.backend == "both" else (args.backend,):
        run_backend(backend, sizes, args)


if __name__ == "__main__":
    main()
