"""Bulk commands: ``bulk-rebuild``, ``bulk-worker``, ``progress``, ``pause``, ``resume``, ``cancel``,
``operations``, ``prune-backups``.

Each opens the database, makes one library call and prints the outcome; a long run shows a
``tqdm`` progress bar on stderr (the library only calls back).
"""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from potato_ops import BulkConfig
from potato_ops.cli.common import (
    DatabaseOption,
    FromDateOption,
    ToDateOption,
    expected_failures,
    fail,
    open_storage,
)
from potato_ops.exitcodes import ExitCode

if TYPE_CHECKING:
    from potato_ops import BulkResult, Progress

_SHOWN_ERRORS = 10

OperationArgument = Annotated[
    str,
    typer.Argument(metavar="OPID", help="The operation id that bulk-rebuild printed.", show_default=False),
]
QuietOption = Annotated[bool, typer.Option("--quiet", "-q", help="Show no progress bar.")]
_WAIT_WORDS = {
    "paused": "paused",
    "window": "outside the window",
    "replica_lag": "replica lag",
    "load": "load",
}


def _waited(seconds: dict[str, float]) -> str:
    """Return ``waited 12 s (replica lag 10 s, outside the window 2 s)``, or "" when it never waited."""
    total = sum(seconds.values())
    if not seconds:
        return ""
    parts = ", ".join(f"{_WAIT_WORDS.get(k, k)} {v:.0f} s" for k, v in sorted(seconds.items()) if v >= 0)
    return f"waited {total:.0f} s ({parts})"


def _read_ids(path: Path) -> list[str]:
    """Return the ids in a file (one a line; blank lines and # comments skipped; - is stdin).

    Exit 1 naming the file when it is missing, unreadable or not UTF-8 text.
    """
    try:
        text = sys.stdin.read() if str(path) == "-" else path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise fail(f"--user-ids-file {path}: not UTF-8 text (byte {exc.start})") from None
    except OSError as exc:
        raise fail(f"--user-ids-file {path}: cannot read: {exc.strerror or exc}") from None
    ids = [line.split("#", 1)[0].strip() for line in text.splitlines()]
    return [i for i in ids if i]


def _print_result(result: BulkResult, *, worker: bool = False) -> None:
    # The rate counts what this call processed, not the operation's earlier runs or other hosts.
    processed = result.processed_here
    if processed is None:  # returned as the ledger holds it: the whole operation's own run time
        processed = result.completed_users + result.failed_users
    per_hour = processed / max(result.total_duration_ms, 1e-9) * 3_600_000
    if result.dry_run:
        typer.echo(
            f"[DRY RUN] would change {result.users_changed} of {result.total_users} users "
            f"(delete {result.runs_deleted} runs, create {result.runs_created}); nothing written"
        )
        for change in result.changes[:_SHOWN_ERRORS]:
            typer.echo(
                f"  {change.user_id}: delete {change.runs_to_delete}, create {change.runs_to_create}, "
                f"active flags {change.active_flags_changed}"
            )
        if len(result.changes) > _SHOWN_ERRORS:
            typer.echo(f"  … and {len(result.changes) - _SHOWN_ERRORS} more")
    else:
        typer.echo(
            f"changed {result.users_changed} users (deleted {result.runs_deleted} runs, "
            f"created {result.runs_created})"
        )
    status = result.status
    if result.taken_over:
        status = f"taken over by another runner (now {result.status}); this runner stopped"
    typer.echo(
        f"operation {result.operation_id}: {status}; completed {result.completed_users}, "
        f"failed {result.failed_users}, pending {result.pending_users} of {result.total_users}"
        + (" (all hosts)" if worker else "")
    )
    if not result.dry_run:
        typer.echo(
            f"caught up {result.caught_up_users} users whose marks the app changed after their batch; "
            f"{result.late_users} changed after the final pass (recorded in the ledger, the app's own)"
        )
    here = "" if result.processed_here is None else f"{result.processed_here} users processed here in "
    typer.echo(
        f"{here or 'duration '}{result.total_duration_ms / 1000:.1f} s ({per_hour:,.0f} users/hour), "
        f"average {result.average_duration_ms:.2f} ms per user"
    )
    if result.throttled_seconds:
        typer.echo(_waited(result.throttled_seconds))
    if result.waiting:
        typer.echo(result.waiting)
    if result.error:
        typer.echo(f"error: {result.error}")
    for err in result.errors[:_SHOWN_ERRORS]:
        typer.echo(f"  failed {err.user_id}: {err.error_class}: {err.message}")
    if len(result.errors) > _SHOWN_ERRORS:
        typer.echo(f"  … and {len(result.errors) - _SHOWN_ERRORS} more failed users")


def _exit_for(result: BulkResult) -> None:
    if result.status != "completed" or result.failed_users:
        raise typer.Exit(int(ExitCode.PROBLEM_FOUND))


def _progress_line(p: Progress) -> str:
    eta = "" if p.eta_seconds is None else f", eta {p.eta_seconds:.0f} s"
    mode = "dry run" if p.dry_run else "real run"
    cancel = ", cancel requested" if p.cancel_requested and p.status in ("running", "paused") else ""
    created = p.created_at.isoformat(timespec="seconds") if p.created_at else "-"
    waiting = f", {p.waiting}" if p.waiting and p.status == "running" else ""
    waited = f", waited {p.throttled_seconds:.0f} s" if p.throttled_seconds and not waiting else ""
    return (
        f"{p.operation_id}  {p.status:<11} {mode:<8}  {p.processed_users}/{p.total_users} processed, "
        f"{p.completed_users} completed, {p.failed_users} failed, {p.users_changed} changed, "
        f"{p.caught_up_users} caught up{eta}{cancel}{waiting}{waited}  created {created}"
    )


def bulk_rebuild(
    all_users: Annotated[bool, typer.Option("--all", help="Rebuild every user.")] = False,
    user_ids_file: Annotated[
        Path | None,
        typer.Option(
            "--user-ids-file",
            help="File of user ids, one a line (# comments allowed); - reads stdin.",
            show_default=False,
        ),
    ] = None,
    from_date: FromDateOption = None,
    to_date: ToDateOption = None,
    batch_size: Annotated[
        int, typer.Option("--batch-size", help="Users per batch (one transaction each).")
    ] = BulkConfig.batch_size,
    workers: Annotated[int, typer.Option("--workers", help="Batches run at once.")] = BulkConfig.max_workers,
    execute: Annotated[
        bool, typer.Option("--execute", help="Really write (the default is a dry run that writes nothing).")
    ] = False,
    skip_backup: Annotated[
        bool, typer.Option("--skip-backup", help="Keep no backups of the runs replaced (risky).")
    ] = False,
    ignore_feature_flag: Annotated[
        bool,
        typer.Option("--ignore-feature-flag", help="Run for real even while ff.potato.runs_v2 is off."),
    ] = False,
    max_failure_rate: Annotated[
        float,
        typer.Option(
            "--max-failure-rate", help="Abort once more than this share (0..1) of 100+ users failed."
        ),
    ] = BulkConfig.max_failure_rate,
    max_replica_lag: Annotated[
        str | None,
        typer.Option(
            "--max-replica-lag",
            metavar="SIZE",
            help="Start no batch while a standby's replay lag exceeds this (e.g. 16MB; PostgreSQL).",
            show_default=False,
        ),
    ] = None,
    max_active_sessions: Annotated[
        int | None,
        typer.Option(
            "--max-active-sessions",
            metavar="N",
            help="Start no batch while more than N client sessions are active, ours included (PostgreSQL).",
            show_default=False,
        ),
    ] = None,
    nice_ratio: Annotated[
        float,
        typer.Option("--nice-ratio", help="After each batch, rest this many times its duration (0: none)."),
    ] = BulkConfig.nice_ratio,
    batch_seconds: Annotated[
        float | None,
        typer.Option(
            "--batch-seconds",
            help="Adapt users per transaction toward this duration, from --batch-size within the bounds.",
            show_default=False,
        ),
    ] = None,
    min_batch_size: Annotated[
        int, typer.Option("--min-batch-size", help="Fewest users per transaction with --batch-seconds.")
    ] = BulkConfig.min_batch_size,
    max_batch_size: Annotated[
        int | None,
        typer.Option(
            "--max-batch-size",
            help="Most users per transaction with --batch-seconds (default 10x --batch-size).",
            show_default=False,
        ),
    ] = None,
    window: Annotated[
        str | None,
        typer.Option(
            "--window",
            metavar="HH:MM-HH:MM",
            help="Start batches only in this daily window (may wrap midnight), e.g. 01:00-05:00.",
            show_default=False,
        ),
    ] = None,
    window_timezone: Annotated[
        str, typer.Option("--window-timezone", metavar="ZONE", help="IANA zone of --window.")
    ] = BulkConfig.window_timezone,
    detach: Annotated[
        bool,
        typer.Option(
            "--detach",
            help="Only write the operation and print its id; run it with bulk-worker OPID on any hosts "
            "(PostgreSQL).",
        ),
    ] = False,
    quiet: QuietOption = False,
    database_url: DatabaseOption = None,
) -> None:
    """Rebuild many users' runs in batches across workers (a dry run unless --execute).

    Other hosts may join the run with ``bulk-worker OPID`` (PostgreSQL). Before each batch every
    worker checks the throttle (--max-replica-lag, --max-active-sessions, --window, a pause):
    while it says wait, no batch starts and ``progress`` says why.
    Exit codes: 0 all users completed; 3 some users failed or the run stopped early.
    """
    from potato_ops.runbook.progress import ProgressBar

    if all_users == (user_ids_file is not None):
        raise fail("give exactly one of --all or --user-ids-file", ExitCode.USAGE)
    ids = None if user_ids_file is None else _read_ids(user_ids_file)
    # Checked before the database is opened: a refused config writes no operation.
    config = BulkConfig(
        batch_size=batch_size,
        max_workers=workers,
        dry_run=not execute,
        from_date=from_date,
        to_date=to_date,
        skip_backup=skip_backup,
        max_failure_rate=max_failure_rate,
        ignore_feature_flag=ignore_feature_flag,
        max_replica_lag=max_replica_lag,
        max_active_sessions=max_active_sessions,
        nice_ratio=nice_ratio,
        batch_seconds=batch_seconds,
        min_batch_size=min_batch_size,
        max_batch_size=max_batch_size,
        window=window,
        window_timezone=window_timezone,
    )
    storage = open_storage(database_url, must_exist=True)
    if detach:
        operation_id = storage.open_bulk_operation(ids, config)
        typer.echo(f"operation {operation_id} written; run it with: potato-ops bulk-worker {operation_id}")
        return
    with ProgressBar(disable=quiet) as bar:
        result = storage.bulk_rebuild_users(ids, config, progress=bar)
    _print_result(result)
    _exit_for(result)


def bulk_worker(
    operation_id: OperationArgument,
    workers: Annotated[
        int | None,
        typer.Option(
            "--workers", help="Batches this host runs at once (default: the operation's).", show_default=False
        ),
    ] = None,
    quiet: QuietOption = False,
    database_url: DatabaseOption = None,
) -> None:
    """Join a running bulk operation from this host and work on it until nothing is left.

    Workers on any number of hosts claim batches from the ledger, so no user is rebuilt
    twice; a dead worker's batches are taken over once its lease lapses. PostgreSQL only.
    Exit codes: 0 the operation completed; 3 it stopped early or some users failed.
    """
    from potato_ops.runbook.progress import ProgressBar

    storage = open_storage(database_url, must_exist=True)
    with ProgressBar(disable=quiet, desc="worker") as bar:
        result = storage.join_bulk_operation(operation_id, max_workers=workers, progress=bar)
    _print_result(result, worker=True)
    _exit_for(result)


def progress(operation_id: OperationArgument, database_url: DatabaseOption = None) -> None:
    """Show an operation's progress: counts, status and ETA (works from any process)."""
    storage = open_storage(database_url, must_exist=True)
    p = storage.get_rebuild_progress(operation_id)
    typer.echo(_progress_line(p))
    if p.error:
        typer.echo(f"error: {p.error.strip().splitlines()[0]}")  # older records held whole messages
    if p.throttle:
        typer.echo(f"throttle: {p.throttle}")
    waits = storage.get_throttle_episodes(operation_id)
    for wait in waits[-_SHOWN_ERRORS:]:
        until = "still waiting" if wait.ended_at is None else f"{wait.seconds:.0f} s"
        typer.echo(f"  waited {until} from {wait.started_at:%Y-%m-%d %H:%M:%S}: {wait.reason}")
    if len(waits) > _SHOWN_ERRORS:
        typer.echo(f"  … and {len(waits) - _SHOWN_ERRORS} earlier waits")


def resume(
    operation_id: OperationArgument,
    failed_only: Annotated[
        bool, typer.Option("--failed-only", help="Retry only the users that failed.")
    ] = False,
    quiet: QuietOption = False,
    database_url: DatabaseOption = None,
) -> None:
    """Continue a paused operation, or finish an interrupted, cancelled or failed one.

    A paused operation whose workers still wait goes on with them; otherwise this process runs
    its users not completed. Exit codes: 0 all users completed (or a paused operation's workers
    go on); 1 its runner is still alive; 3 some users failed.
    """
    from potato_ops.runbook.progress import ProgressBar

    storage = open_storage(database_url, must_exist=True)
    with ProgressBar(disable=quiet, desc="resuming") as bar:
        result = storage.resume_bulk_rebuild(operation_id, failed_only=failed_only, progress=bar)
    if result.status == "running":  # a paused operation whose workers were waiting: they go on
        typer.echo(f"operation {operation_id} resumed; its workers go on")
        typer.echo(_progress_line(storage.get_rebuild_progress(operation_id)))
        return
    _print_result(result)
    _exit_for(result)


def pause(operation_id: OperationArgument, database_url: DatabaseOption = None) -> None:
    """Pause an operation: every worker on every host stops at its next batch boundary.

    The workers keep nothing claimed and wait until ``potato-ops resume OPID``. An operation
    that has ended is left as it is.
    """
    storage = open_storage(database_url, must_exist=True)
    p = storage.pause_bulk_rebuild(operation_id)
    if p.status == "paused":
        typer.echo(f"pause requested; every worker stops at its next batch boundary\n{_progress_line(p)}")
    else:
        typer.echo(f"operation {operation_id} has ended ({p.status}): nothing to pause")


def cancel(operation_id: OperationArgument, database_url: DatabaseOption = None) -> None:
    """Stop an operation at its next batch boundary."""
    storage = open_storage(database_url, must_exist=True)
    p = storage.cancel_bulk_rebuild(operation_id)
    if p.status == "running":
        typer.echo(f"cancel requested; the runner stops at its next batch boundary\n{_progress_line(p)}")
    else:
        typer.echo(_progress_line(p))


def operations(
    status: Annotated[
        str | None,
        typer.Option(
            "--status", help="Only operations with this status (e.g. interrupted).", show_default=False
        ),
    ] = None,
    limit: Annotated[int, typer.Option("--limit", help="How many to show, newest first.")] = 20,
    database_url: DatabaseOption = None,
) -> None:
    """List recent bulk operations with their status, newest first."""
    storage = open_storage(database_url, must_exist=True)
    found = storage.list_operations(status, limit)
    if not found:
        typer.echo("no operations")
    for p in found:
        typer.echo(_progress_line(p))


def prune_backups(
    older_than: Annotated[
        float,
        typer.Option("--older-than", metavar="DAYS", min=0, help="Delete backups older than this many days."),
    ],
    keep_latest: Annotated[
        int,
        typer.Option("--keep-latest", min=0, help="Keep each user's newest N backups whatever their age."),
    ] = 1,
    database_url: DatabaseOption = None,
) -> None:
    """Delete old backups, keeping each user's newest ones."""
    from datetime import UTC, datetime, timedelta

    if not math.isfinite(older_than):
        raise fail(f"--older-than {older_than}: give a finite number of days", ExitCode.USAGE)
    try:
        age = timedelta(days=older_than)
        datetime.now(UTC) - age  # the cutoff the library computes must exist
    except OverflowError:
        raise fail(f"--older-than {older_than:g}: reaches back before the year 1", ExitCode.USAGE) from None
    storage = open_storage(database_url, must_exist=True)
    deleted = storage.prune_backups(age, keep_latest=keep_latest)
    typer.echo(
        f"deleted {deleted} backups older than {older_than:g} days (kept each user's newest {keep_latest})"
    )


def register(app: typer.Typer) -> None:
    """Add the bulk commands to app."""
    app.command("bulk-rebuild")(expected_failures(bulk_rebuild))
    app.command("bulk-worker")(expected_failures(bulk_worker))
    app.command("progress")(expected_failures(progress))
    app.command("pause")(expected_failures(pause))
    app.command("resume")(expected_failures(resume))
    app.command("cancel")(expected_failures(cancel))
    app.command("operations")(expected_failures(operations))
    app.command("prune-backups")(expected_failures(prune_backups))
