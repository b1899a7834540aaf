"""The demo: a fresh embedded database with seeded users and injected corruption, then the
monitoring audit and the error-recovery notebook run through execute_notebook, as a scheduler would.

The demo database is the embedded default (the file ``Storage.connect()`` opens when no URL is
configured), so the commands that follow (``potato-ops validate`` and the like) see it. It is
recreated each time; a default database holding data the demo did not create is never wiped
unless asked (``replace=True``). Notebooks reach it through an environment variable of the
demo's own, so a ``POTATO_DATABASE_URL`` set in the shell is never touched.
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from potato_ops.config import default_sqlite_path
from potato_ops.db.catalog import table_names
from potato_ops.db.reads import count_users
from potato_ops.db.schema import RUNS_V2_FLAG
from potato_ops.demo.synth import seed
from potato_ops.errors import ConfigError
from potato_ops.exitcodes import ExitCode
from potato_ops.notebook_runs.confirm import database_name
from potato_ops.notebook_runs.execute import ExecutionRecord, execute_notebook
from potato_ops.ops.database import Database
from potato_ops.ops.scan import validate_invariants

log = logging.getLogger("potato_ops")

DEMO_URL_ENV = "POTATO_OPS_DEMO_DATABASE_URL"
DEMO_FLAG = "potato_ops.demo_database"  # marks a database the demo created
AUDIT_NOTEBOOK = "07_monitoring_audit"
RECOVERY_NOTEBOOK = "05_error_recovery"


@dataclass(frozen=True)
class DemoResult:
    """What the demo did and where its records are."""

    database_path: Path
    users: int
    corrupted: dict[str, int]  # invariant kind -> users corrupted with it
    violations_before: int
    violations_after: int
    audit: ExecutionRecord
    recovery: ExecutionRecord

    @property
    def ok(self) -> bool:
        """Return True when the audit found the corruption and the repair left none."""
        return (
            self.violations_before > 0
            and self.audit.status == "problem"
            and self.recovery.status == "ok"
            and self.violations_after == 0
        )

    @property
    def exit_code(self) -> ExitCode:
        """Return 0 when the demo went as designed, 5 when a notebook failed, else 3."""
        if self.ok:
            return ExitCode.OK
        if "error" in (self.audit.status, self.recovery.status) or "timeout" in (
            self.audit.status,
            self.recovery.status,
        ):
            return ExitCode.EXECUTION_FAILED
        return ExitCode.PROBLEM_FOUND


@contextmanager
def _environment(name: str, value: str) -> Iterator[None]:
    saved = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = saved


def _holds_foreign_data(path: Path) -> bool:
    """Return True when the file is a database with users that the demo did not create."""
    if not path.exists() or path.stat().st_size == 0:
        return False
    db = Database.connect(f"sqlite:///{path}")
    try:
        if "users" not in table_names(db.engine):
            return False
        with db.engine.connect() as conn:
            count = count_users(conn)
        return bool(count) and not db.get_feature_flag(DEMO_FLAG)
    finally:
        db.close()


def fresh_demo_database(path: Path, *, replace: bool = False) -> str:
    """Delete the demo database file (and its WAL files); return its URL.

    Raises ConfigError rather than delete a database holding users the demo did not create,
    unless ``replace``.
    """
    if not replace and _holds_foreign_data(path):
        raise ConfigError(
            f"the embedded database {path} holds users the demo did not create: not wiping it "
            "(pass --replace to wipe it, or set POTATO_OPS_HOME to another folder)"
        )
    for suffix in ("", "-wal", "-shm", "-journal"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{path}"


def run_demo(
    *,
    users_count: int = 200,
    days: int = 365,
    corrupt: float = 0.05,
    seed_value: int = 42,
    reports_dir: str | os.PathLike[str] | None = None,
    replace: bool = False,
    cell_timeout: float = 600,
    progress: Callable[[str], None] | None = None,
) -> DemoResult:
    """Return the demo's outcome: seed, audit (07), recover (05: detect, dry run, repair, verify)."""
    say = progress or (lambda _text: None)
    path = default_sqlite_path()
    url = fresh_demo_database(path, replace=replace)
    db = Database.connect(url)
    try:
        db.create_schema()
        db.set_feature_flag(DEMO_FLAG, True)
        say(f"seeding {users_count} users x {days} days, corrupting {corrupt:.0%} of them, in {path}")
        seeded = seed(
            db.engine,
            users_count=users_count,
            days=days,
            corrupt=corrupt,
            seed_value=seed_value,
            now=db.now(),
        )
        db.set_feature_flag(RUNS_V2_FLAG, True)
        before = validate_invariants(db).total
        common = {"database_url_env": DEMO_URL_ENV, "operator": "potato-ops demo", "ticket": "DEMO"}
        with _environment(DEMO_URL_ENV, url):
            say(f"running {AUDIT_NOTEBOOK} (expected to find the injected corruption)")
            audit = execute_notebook(
                AUDIT_NOTEBOOK, common, reports_dir=reports_dir, cell_timeout=cell_timeout
            )
            say(f"running {RECOVERY_NOTEBOOK}: detect, dry run, repair, verify")
            recovery = execute_notebook(
                RECOVERY_NOTEBOOK,
                {**common, "scenario": "all", "dry_run": False, "confirm": database_name(DEMO_URL_ENV)},
                reports_dir=reports_dir,
                cell_timeout=cell_timeout,
            )
        after = validate_invariants(db).total
    finally:
        db.close()
    kinds = Counter(seeded.corrupted.values())
    return DemoResult(path, len(seeded.user_ids), dict(sorted(kinds.items())), before, after, audit, recovery)
