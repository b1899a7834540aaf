"""Seed at two sizes: wall time and peak memory, against a bare load of the same rows.

Each measurement runs in its own child process on a fresh database, so its peak resident
memory (``getrusage``) is its own:

* seed: ``seed()`` as ``potato-ops seed`` runs it (generate, corrupt, write, chunk by chunk);
* bare: the same rows, generated untimed chunk by chunk, written by the driver alone in one
  transaction per chunk: psycopg's ``COPY ... FROM STDIN`` with ``write_row`` on PostgreSQL,
  ``sqlite3`` ``executemany`` on SQLite, with change capture's triggers off as the seed has
  them. Only the writing is timed.

Targets: the seed's peak memory within 20% from the smaller size to the larger one, and the
seed's wall time at most 1.5 times the bare load's. On PostgreSQL the seed is also run with
``--workers`` chunks written at once (default 2), with its speedup over one worker.

    .venv/bin/python benchmarks/seed.py                              # 10,000 and 100,000 users
    .venv/bin/python benchmarks/seed.py --sizes 2000 8000 --backend sqlite

Prints a table per database; exits 0 whatever the figures (a benchmark, not a test).
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg

from potato_ops import Storage
from potato_ops.demo.synth import CORRUPTIONS_POSTGRES, CORRUPTIONS_SQLITE, SeedPlan, generate, seed

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script: find the sibling
from benchmarks.bulk import DEFAULT_PG_ADMIN_URL, database, peak_rss_mb, print_machine

NOW = datetime(2024, 3, 10, 15, 0, tzinfo=UTC)
MEMORY_TARGET = 1.2
SPEED_TARGET = 1.5


def child_seed(url: str, users: int, days: int, workers: int = 1) -> dict[str, Any]:
    storage = Storage.connect(url)
    t0 = time.perf_counter()
    result = seed(storage.engine, users_count=users, days=days, corrupt=0.01, now=NOW, workers=workers)
    seconds = time.perf_counter() - t0
    return {"seconds": seconds, "marks": result.marks_written, "runs": result.runs_written}


def _bare_writer(url: str) -> tuple[Any, Any]:
    """Return (connection, write(chunk) -> None) for the driver alone."""
    if url.startswith("sqlite"):
        lite = sqlite3.connect(url.removeprefix("sqlite:///"), isolation_level=None)
        lite.execute("PRAGMA synchronous = NORMAL")  # as the package's engine sets it
        # The seed writes with change capture paused (new users, right runs): so does the bare.
        triggers = [r[0] for r in lite.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'")]
        for name in triggers:
            lite.execute(f'DROP TRIGGER "{name}"')

        def write_sqlite(chunk: Any) -> None:
            lite.execute("BEGIN IMMEDIATE")
            lite.executemany("INSERT INTO users (id, email, timezone) VALUES (?, ?, ?)", chunk.users)
            lite.executemany("INSERT INTO day_marks (user_id, date, value) VALUES (?, ?, ?)", chunk.marks)
            lite.executemany(
                "INSERT INTO runs (user_id, start_date, end_date, day_count, active) VALUES (?, ?, ?, ?, ?)",
                chunk.runs,
            )
            lite.execute("COMMIT")

        return lite, write_sqlite
    pg = psycopg.connect(url.replace("postgresql+psycopg://", "postgresql://"))

    def write_pg(chunk: Any) -> None:
        with pg.transaction(), pg.cursor() as cur:
            cur.execute("SET LOCAL session_replication_role = replica")  # capture paused, as the seed
            for target, rows in (
                ("users (id, email, timezone)", chunk.users),
                ("day_marks (user_id, date, value)", chunk.marks),
                ("runs (user_id, start_date, end_date, day_count, active)", chunk.runs),
            ):
                with cur.copy(f"COPY {target} FROM STDIN") as copy:
                    for row in rows:
                        copy.write_row(row)

    return pg, write_pg


def child_bare(url: str, users: int, days: int, workers: int = 1) -> dict[str, Any]:
    kinds = CORRUPTIONS_SQLITE if url.startswith("sqlite") else CORRUPTIONS_POSTGRES
    plan = SeedPlan(users, NOW, days, corrupt=0.01, kinds=kinds)
    conn, write = _bare_writer(url)
    seconds = 0.0
    marks = runs = 0
    for chunk in generate(plan, {}):
        t0 = time.perf_counter()
        write(chunk)
        seconds += time.perf_counter() - t0
        marks += len(chunk.marks)
        runs += len(chunk.runs)
    conn.close()
    return {"seconds": seconds, "marks": marks, "runs": runs}


def measure(
    kind: str, backend: str, users: int, args: argparse.Namespace, workers: int = 1
) -> dict[str, Any]:
    """Return the child's figures, measured on a fresh database with the schema."""
    with database(backend, args.pg_admin_url) as url:
        Storage.connect(url).create_schema()
        out = subprocess.run(
            [
                sys.executable,
                __file__,
                "--child",
                kind,
                "--url",
                url,
                "--users",
                str(users),
                "--days",
                str(args.days),
                "--workers",
                str(workers),
            ],
            check=True,
            capture_output=True,
            text=True,
        )
    figures: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return figures


def run_backend(backend: str, args: argparse.Namespace) -> None:
    print(f"\n== {backend}: {args.days} days per user, 1% corrupted")
    workers = args.workers if backend == "postgres" and args.workers > 1 else 0
    parallel = f"{f'{workers} workers':>11}{'speedup':>9}{'MB':>6}" if workers else ""
    print(
        f"{'users':>9}{'seed s':>9}{'users/s':>9}{'seed MB':>9}{'bare s':>9}{'bare MB':>9}"
        f"{'seed/bare':>11}{'target':>8}{parallel}"
    )
    peaks: list[float] = []
    for users in args.sizes:
        s = measure("seed", backend, users, args)
        b = measure("bare", backend, users, args)
        assert (s["marks"], s["runs"]) == (b["marks"], b["runs"]), (s, b)
        ratio = s["seconds"] / b["seconds"]
        peaks.append(s["peak_mb"])
        row = ""
        if workers:
            w = measure("seed", backend, users, args, workers)
            assert (w["marks"], w["runs"]) == (s["marks"], s["runs"]), (w, s)
            row = f"{w['seconds']:>10.1f}s{s['seconds'] / w['seconds']:>9.2f}{w['peak_mb']:>6.0f}"
        print(
            f"{users:>9,}{s['seconds']:>9.1f}{users / s['seconds']:>9.0f}{s['peak_mb']:>9.0f}"
            f"{b['seconds']:>9.1f}{b['peak_mb']:>9.0f}{ratio:>11.2f}{'<= ' + str(SPEED_TARGET):>8}{row}"
        )
    if len(peaks) > 1:
        growth = max(peaks) / min(peaks)
        print(
            f"seed peak memory, largest size / smallest: {growth:.2f} (target <= {MEMORY_TARGET}: within 20%)"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--days", type=int, default=365)
    parser.add_argument("--backend", choices=["sqlite", "postgres", "both"], default="both")
    parser.add_argument("--pg-admin-url", default=os.environ.get("POTATO_TEST_PG_URL", DEFAULT_PG_ADMIN_URL))
    parser.add_argument(
        "--workers", type=int, default=2, help="PostgreSQL: also seed with this many workers (--workers)"
    )
    parser.add_argument("--child", choices=["seed", "bare"], help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--users", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        run = child_seed if args.child == "seed" else child_bare
        figures = run(args.url, args.users, args.days, args.workers)
        print(json.dumps({**figures, "peak_mb": peak_rss_mb()}))
        return
    print_machine()
    for backend in ("sqlite", "postgres") if args.backend == "both" else (args.backend,):
        run_backend(backend, args)


if __name__ == "__main__":
    main()
