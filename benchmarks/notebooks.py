"""Wall time of each runbook notebook on a 10,000-user SQLite database, through the runner.

    python benchmarks/notebooks.py [--users 10000] [--database PATH] [--fresh] [--only 07 ...]

Prints, per notebook: the whole run as the CLI sees it (wall), the kernel's start, the procedure
itself (the sum of the cells' durations as papermill recorded them) and the rest (papermill,
rendering and archiving the record). Every notebook runs with its default (dry-run)
parameters, plus a user for the single-user ones, so the database is the same for each.
Seeding 10,000 users takes a minute or two; the database is kept and reused (--fresh reseeds).
Target: the monitoring audit (07) on 10,000 users completes in under 30 s.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from potato_ops import Storage
from potato_ops.db.schema import RUNS_V2_FLAG
from potato_ops.demo.synth import seed
from potato_ops.errors import SchemaError, UserNotFoundError
from potato_ops.notebook_runs.execute import execute_notebook

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
AUDIT_TARGET_S = 30.0
BENCH_FLAG = "potato_ops.benchmark_database"


@dataclass(frozen=True)
class Timing:
    """One notebook run's figures, in seconds."""

    notebook: str
    status: str
    wall: float
    kernel_start: float
    procedure: float
    verdict: str

    @property
    def rest(self) -> float:
        """Return the time neither in the kernel's start nor in a cell."""
        return self.wall - self.kernel_start - self.procedure


def prepare(path: Path, users: int, fresh: bool) -> Storage:
    """Return storage on a seeded database at path (reused when it holds ``users`` users)."""
    url = f"sqlite:///{path}"
    if path.exists() and not fresh:
        storage = Storage.connect(url)
        try:
            storage.check_schema()  # a database seeded by an older version is reseeded
            if storage.get_feature_flag(BENCH_FLAG) and len(storage.get_all_users()) == users:
                print(f"reusing {path} ({users} users)")
                return storage
        except SchemaError:
            pass
        storage.close()
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    storage = Storage.connect(url)
    storage.create_schema()
    started = time.perf_counter()
    seeded = seed(storage.engine, users_count=users, days=365, corrupt=0.05, now=storage.now())
    storage.set_feature_flag(RUNS_V2_FLAG, True)
    storage.set_feature_flag(BENCH_FLAG, True)
    print(
        f"seeded {users} users ({seeded.marks_written} marks, {seeded.runs_written} runs, "
        f"{len(seeded.corrupted)} corrupted) in {time.perf_counter() - started:.1f} s"
    )
    return storage


def time_notebook(name: str, parameters: dict[str, object], reports: Path) -> Timing:
    """Return the timing of one run through the runner."""
    started = time.perf_counter()
    record = execute_notebook(NOTEBOOKS / f"{name}.ipynb", parameters, reports_dir=reports, cell_timeout=1800)
    wall = time.perf_counter() - started
    executed = json.loads(record.notebook_path.read_text(encoding="utf-8"))
    cells = sum(
        float(c.get("metadata", {}).get("papermill", {}).get("duration") or 0.0)
        for c in executed["cells"]
        if c["cell_type"] == "code"
    )
    kernel = float(record.result.get("kernel_start_s") or 0.0)
    return Timing(name, record.status, wall, kernel, cells, str(record.result.get("verdict", "")))


def main() -> None:
    """Seed (or reuse) the database, run every notebook, print the table."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--users", type=int, default=10_000)
    parser.add_argument("--database", type=Path, default=None, help="default: a file in the temp folder")
    parser.add_argument("--fresh", action="store_true", help="reseed even if the database exists")
    parser.add_argument("--only", nargs="*", default=None, help="notebook numbers to run (01 .. 08)")
    args = parser.parse_args()
    path = args.database or Path(tempfile.gettempdir()) / f"potato-bench-{args.users}.sqlite3"
    storage = prepare(path, args.users, args.fresh)
    report = storage.validate_invariants()
    corrupted = storage.get_user(next(u for u in report.users_with_violations if _exists(storage, u)))
    clean = next(u for u in storage.get_all_users()[:50] if u.id not in set(report.users_with_violations))
    if not storage.get_backups(clean.id):
        storage.backup_user_runs(clean.id)
    month_ago = str(storage.local_today(corrupted) - timedelta(days=30))
    plan: dict[str, dict[str, object]] = {
        "01_single_user_recovery": {"user_id": corrupted.id},
        "02_partial_rebuild": {"user_id": corrupted.id, "from_date": month_ago},
        "03_bulk_recovery": {"batch_size": 100, "max_workers": 4},
        "04_timezone_migration": {"user_id": clean.id, "new_timezone": "Asia/Kathmandu"},
        "05_error_recovery": {},
        "06_restore_from_backup": {"user_id": clean.id},
        "07_monitoring_audit": {},
        "08_troubleshooting": {"user_id": corrupted.id},
    }
    os.environ["POTATO_DATABASE_URL"] = f"sqlite:///{path}"
    timings: list[Timing] = []
    with tempfile.TemporaryDirectory(prefix="potato-bench-reports-") as reports:
        for name, parameters in plan.items():
            if args.only and name[:2] not in args.only:
                continue
            timing = time_notebook(name, parameters, Path(reports))
            timings.append(timing)
            print(f"  {name}: {timing.wall:.1f} s ({timing.status})", flush=True)
    print(f"\n{args.users} users, SQLite, {path}")
    print(f"{'notebook':<26} {'status':<8} {'wall s':>7} {'kernel s':>9} {'procedure s':>12} {'rest s':>7}")
    for t in timings:
        print(
            f"{t.notebook:<26} {t.status:<8} {t.wall:>7.1f} {t.kernel_start:>9.1f} "
            f"{t.procedure:>12.1f} {t.rest:>7.1f}"
        )
    audit = next((t for t in timings if t.notebook == "07_monitoring_audit"), None)
    if audit is not None:
        run_s = audit.kernel_start + audit.procedure
        verdict = "met" if run_s < AUDIT_TARGET_S else "MISSED"
        print(
            f"\nmonitoring audit: {run_s:.1f} s from kernel start to verdict, "
            f"{audit.wall:.1f} s with the archive "
            f"(target < {AUDIT_TARGET_S:.0f} s: {verdict})"
        )


def _exists(storage: Storage, user_id: str) -> bool:
    try:
        storage.get_user(user_id)
    except UserNotFoundError:
        return False
    return True


if __name__ == "__main__":
    main()
