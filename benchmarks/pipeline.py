"""The operator's whole pipeline at scale, step by step, each step timed with its peak memory.

Each step is the command an operator runs, in a child process of its own, so its wall time
and peak resident memory (``wait4``'s rusage) are its own:

1. ``seed``: ``potato-ops seed --users N --days D --corrupt 0.01`` (1% of users damaged;
   on PostgreSQL with ``--workers``, as the bulk);
2. ``validate``: the whole-database scan (exits 3: it finds the damage);
3. ``audit``: ``potato-ops audit --no-notebook`` (metrics, rules; exits non-zero on the damage);
4. ``bulk-damaged``: ``bulk-rebuild --all --execute`` on the seeded database, whose planner
   statistics are as the seed's mass load left them (never analyzed);
5. ``wipe``: every run deleted with one bare ``DELETE`` (the incident of step 6; the database
   itself, no tool);
6. ``bulk-missing``: ``bulk-rebuild --all --execute`` with every user's runs missing;
7. ``validate-after``: the scan again, which must find nothing (exit 0).

Each step appends one JSON line to ``--record`` (default ``pipeline-<backend>.jsonl`` in the
current folder) as it ends, so a long run can be followed and resumed with ``--steps``; the
table of every recorded step is printed at the end. The 100M-user estimate scales each step's
time per user linearly from the largest size recorded.

    .venv/bin/python benchmarks/pipeline.py --users 1000000 --days 365 \\
        --database-url sqlite:////var/tmp/m1.sqlite3
    .venv/bin/python benchmarks/pipeline.py --users 1000000 --days 90 \\
        --database-url postgresql+psycopg://postgres@127.0.0.1:5432/m1
    .venv/bin/python benchmarks/pipeline.py --users 1000 --days 30 --steps validate,audit \\
        --database-url sqlite:////tmp/small.sqlite3

The database of ``--database-url`` must not exist (SQLite) or be empty (PostgreSQL) for
``seed``. Exits 0 whatever the figures, unless a step's exit status says it failed.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psycopg

STEPS = ("seed", "validate", "audit", "bulk-damaged", "wipe", "bulk-missing", "validate-after")
# The exit statuses each step may end with (the damage is found by validate and audit).
EXPECTED = {
    "seed": {0},
    "validate": {0, 3},
    "audit": {0, 10, 11, 12},
    "bulk-damaged": {0},
    "wipe": {0},
    "bulk-missing": {0},
    "validate-after": {0},
}
ESTIMATE_USERS = 100_000_000


def command(step: str, args: argparse.Namespace) -> list[str]:
    """Return the command line of a step (the CLI an operator runs)."""
    tool = [str(Path(sys.executable).with_name("potato-ops"))]
    url = ["--database-url", args.database_url]
    if step == "seed":
        return [
            *tool,
            "seed",
            "--users",
            str(args.users),
            "--days",
            str(args.days),
            "--corrupt",
            "0.01",
            *([] if args.database_url.startswith("sqlite") else ["--workers", str(args.workers)]),
            *url,
        ]
    if step in ("validate", "validate-after"):
        return [*tool, "validate", "--limit", "5", *url]
    if step == "audit":
        return [*tool, "audit", "--no-notebook", "--reports-dir", args.reports_dir, *url]
    if step in ("bulk-damaged", "bulk-missing"):
        sizes = ["--batch-size", str(args.batch_size), "--workers", str(args.workers)]
        return [*tool, "bulk-rebuild", "--all", "--execute", "-q", *sizes, *url]
    raise ValueError(step)


def run_child(cmd: list[str], log: Path) -> tuple[int, float, float, float]:
    """Run a command; return (exit status, wall s, CPU s, peak RSS MB) of that child alone."""
    with log.open("ab") as out:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
        _pid, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    return proc.returncode, wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024


def wipe(url: str) -> tuple[int, float, float, float]:
    """Delete every run with one bare statement; return as run_child does (CPU: this process)."""
    t0 = time.perf_counter()
    if url.startswith("sqlite"):
        lite = sqlite3.connect(url.removeprefix("sqlite:///"), isolation_level=None)
        lite.execute("DELETE FROM runs")
        lite.close()
    else:
        with psycopg.connect(url.replace("postgresql+psycopg", "postgresql"), autocommit=True) as conn:
            conn.execute("DELETE FROM runs")
    return 0, time.perf_counter() - t0, 0.0, 0.0


def database_size_gb(url: str) -> float:
    """Return the database's size on disk in GB (SQLite: the file and its WAL)."""
    if url.startswith("sqlite"):
        path = Path(url.removeprefix("sqlite:///"))
        return sum(p.stat().st_size for p in (path, path.with_name(path.name + "-wal")) if p.exists()) / 1e9
    with psycopg.connect(url.replace("postgresql+psycopg", "postgresql")) as conn:
        row = conn.execute("SELECT pg_database_size(current_database())").fetchone()
    return float(row[0]) / 1e9 if row else 0.0


def run_steps(args: argparse.Namespace, steps: list[str], record: Path) -> int:
    """Run the steps in order, recording each; return 1 if one ended with an unexpected status."""
    log = record.with_suffix(".log")
    for step in steps:
        load = os.getloadavg()[0]
        print(f"== {step} (load {load:.1f})", flush=True)
        if step == "wipe":
            rc, wall, cpu, rss = wipe(args.database_url)
        else:
            rc, wall, cpu, rss = run_child(command(step, args), log)
        figure: dict[str, Any] = {
            "step": step,
            "backend": "sqlite" if args.database_url.startswith("sqlite") else "postgresql",
            "users": args.users,
            "days": args.days,
            "exit": rc,
            "wall_s": round(wall, 1),
            "cpu_s": round(cpu, 1),
            "peak_rss_mb": round(rss, 1),
            "load_at_start": round(load, 1),
            "size_gb_after": round(database_size_gb(args.database_url), 1),
        }
        with record.open("a") as out:
            out.write(json.dumps(figure) + "\n")
        print(f"   exit {rc}, {wall:.1f} s, peak {rss:.0f} MB", flush=True)
        if rc not in EXPECTED[step]:
            print(f"{step} ended with exit status {rc}: stopping (see {log})", file=sys.stderr)
            return 1
    return 0


def print_table(record: Path) -> None:
    """Print every recorded step, and the linear 100M estimate from the largest size."""
    rows = [json.loads(line) for line in record.read_text().splitlines() if line.strip()]
    if not rows:
        return
    print(
        f"\n{'step':<15} {'backend':<10} {'users':>9} {'days':>4} {'exit':>4} {'wall':>10} "
        f"{'per user':>10} {'peak MB':>8} {'load':>5} {'GB':>5}"
    )
    for r in rows:
        per_user = r["wall_s"] / r["users"] * 1000
        print(
            f"{r['step']:<15} {r['backend']:<10} {r['users']:>9,} {r['days']:>4} {r['exit']:>4} "
            f"{_clock(r['wall_s']):>10} {per_user:>8.3f}ms {r['peak_rss_mb']:>8.0f} "
            f"{r['load_at_start']:>5.1f} {r['size_gb_after']:>5.1f}"
        )
    largest = max(r["users"] for r in rows)
    print(
        f"\nLinear estimate at {ESTIMATE_USERS:,} users, from the {largest:,}-user rows "
        "(time per user x users; one process as measured):"
    )
    for r in rows:
        if r["users"] == largest and r["step"] != "wipe":
            hours = r["wall_s"] / r["users"] * ESTIMATE_USERS / 3600
            print(f"  {r['backend']:<10} {r['step']:<15} {hours:8.1f} h")


def _clock(seconds: float) -> str:
    m, s = divmod(round(seconds), 60)
    h, m = divmod(m, 60)
    return f"{h}:{m:02d}:{s:02d}"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--users", type=int, default=1_000_000)
    parser.add_argument("--days", type=int, default=365)
    parser.add_argument("--database-url", required=True)
    parser.add_argument("--steps", default=",".join(STEPS), help=f"comma-separated, of {', '.join(STEPS)}")
    parser.add_argument("--batch-size", type=int, default=500)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--record", type=Path, default=None, help="JSON lines file of the figures")
    parser.add_argument(
        "--reports-dir", default=None, help="the audit's archive (default: a folder beside --record)"
    )
    parser.add_argument("--table-only", action="store_true", help="print the recorded figures and stop")
    args = parser.parse_args()
    backend = "sqlite" if args.database_url.startswith("sqlite") else "postgresql"
    record = args.record or Path(f"pipeline-{backend}.jsonl")
    args.reports_dir = args.reports_dir or str(record.with_name(record.stem + "-reports"))
    if not args.table_only:
        steps = [s.strip() for s in args.steps.split(",") if s.strip()]
        unknown = [s for s in steps if s not in STEPS]
        if unknown:
            parser.error(f"unknown step {unknown[0]!r}; steps are {', '.join(STEPS)}")
        if shutil.which("potato-ops", path=str(Path(sys.executable).parent)) is None:
            parser.error("potato-ops is not installed beside this Python (pip install -e .)")
        print(f"{os.cpu_count()} cores; {args.users:,} users x {args.days} days on {backend}", flush=True)
        rc = run_steps(args, steps, record)
        print_table(record)
        sys.exit(rc)
    print_table(record)


if __name__ == "__main__":
    main()
