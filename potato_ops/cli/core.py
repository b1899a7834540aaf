"""Core commands: schema, seeding, single-user rebuild, validation, backups and restore.

One function per command, registered by ``register``; each imports what it needs when it runs.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Annotated

import typer

from potato_ops.cli.common import (
    DatabaseOption,
    EmailOption,
    FromDateOption,
    ToDateOption,
    UserIdOption,
    expected_failures,
    fail,
    open_storage,
    resolve_user,
)
from potato_ops.exitcodes import ExitCode

if TYPE_CHECKING:
    from potato_ops import Storage
    from potato_ops.domain.models import RebuildResult, Run


def _runs_table(runs: list[Run]) -> str:
    if not runs:
        return "  (no runs)"
    lines = [f"  {'id':>8}  {'start':10}  {'end':10}  {'days':>5}  active"]
    lines += [
        f"  {r.id if r.id is not None else '-':>8}  {r.start_date}  {r.end_date}  {r.day_count:>5}  "
        f"{'yes' if r.active else ''}"
        for r in runs
    ]
    return "\n".join(lines)


def _print_rebuild(result: RebuildResult) -> None:
    mode = "DRY RUN: " if result.dry_run else ""
    verdict = "✔ rebuild successful" if result.success else "✘ rebuild failed, rolled back"
    typer.echo(f"{mode}{verdict} (operation {result.operation_id})")
    window = ""
    if result.from_date or result.to_date:
        window = f" in {result.from_date or '…'}..{result.to_date or '…'}"
    typer.echo(
        f"  deleted {result.runs_deleted}, created {result.runs_created}, unchanged "
        f"{result.runs_unchanged}, active flags changed {result.active_flags_changed}; "
        f"{result.total_days_processed} marked days processed{window} in {result.duration_ms:.1f} ms"
    )
    typer.echo(f"  feature flag ff.potato.runs_v2: {'on' if result.feature_flag_enabled else 'off'}")
    if result.backup is not None:
        where = f"backup {result.backup.id}" if result.backup.id is not None else "backup (not kept)"
        typer.echo(f"  {where}: {result.backup.metadata.total_runs} runs")
    for v in result.invariant_violations:
        typer.echo(f"  violation {v.kind}: {v.detail}")
    if result.error:
        typer.echo(f"  error: {result.error}")


def init_db(
    database_url: DatabaseOption = None,
    distributed: Annotated[
        bool,
        typer.Option(
            "--distributed",
            help="Lay the tables out for Citus (by user id, co-located); converts a database in place.",
        ),
    ] = False,
) -> None:
    """Create missing tables (idempotent); existing app data is left untouched."""
    storage = open_storage(database_url)
    storage.create_schema()
    for line in storage.lay_out(distributed=distributed):
        typer.echo(line)
    typer.echo(f"schema ready on {storage.url}")


def seed(
    users: Annotated[int, typer.Option("--users", min=0, help="How many users to create.")] = 100,
    days: Annotated[int, typer.Option("--days", min=1, help="Days of history per user.")] = 365,
    corrupt: Annotated[
        float,
        typer.Option("--corrupt", min=0.0, max=1.0, help="Share of users to corrupt (0..1)."),
    ] = 0.0,
    seed_value: Annotated[int, typer.Option("--seed", help="Random seed.")] = 42,
    flag_on: Annotated[bool, typer.Option("--flag-on/--flag-off", help="State of ff.potato.runs_v2.")] = True,
    workers: Annotated[
        int,
        typer.Option(
            "--workers", min=1, help="Chunks written at once, each on its own connection (PostgreSQL)."
        ),
    ] = 1,
    database_url: DatabaseOption = None,
) -> None:
    """Fill the database with synthetic users, marks and runs, corrupting a share of them."""
    from tqdm.auto import tqdm

    from potato_ops.demo.synth import seed as seed_users
    from potato_ops.demo.synth import workers_refusal

    storage = open_storage(database_url)
    refusal = workers_refusal(storage.dialect, workers)
    if refusal:
        raise fail(refusal, ExitCode.USAGE)
    storage.create_schema()
    with tqdm(total=users, desc="seeding users", unit="user", disable=users < 1000) as bar:
        result = seed_users(
            storage.engine,
            users_count=users,
            days=days,
            corrupt=corrupt,
            seed_value=seed_value,
            now=storage.now(),
            progress=bar.update,
            workers=workers,
        )
    storage.set_feature_flag("ff.potato.runs_v2", flag_on)
    typer.echo(
        f"seeded {len(result.user_ids)} users, {result.marks_written} day marks, "
        f"{result.runs_written} runs on {storage.url}"
    )
    if result.corrupted:
        kinds: dict[str, int] = {}
        for kind in result.corrupted.values():
            kinds[kind] = kinds.get(kind, 0) + 1
        typer.echo(
            f"corrupted {len(result.corrupted)} users: "
            + ", ".join(f"{k} {n}" for k, n in sorted(kinds.items()))
        )


def rebuild(
    user_id: UserIdOption = None,
    email: EmailOption = None,
    from_date: FromDateOption = None,
    to_date: ToDateOption = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Compute and show the changes, then roll back.")
    ] = False,
    no_backup: Annotated[
        bool, typer.Option("--no-backup", help="Do not keep a backup of the runs replaced.")
    ] = False,
    database_url: DatabaseOption = None,
) -> None:
    """Rebuild one user's runs from their marks (all of them, or a date range)."""
    from potato_ops.domain.dates import parse_date_range

    parse_date_range(from_date, to_date)  # refuse bad dates before touching the database
    storage = open_storage(database_url, must_exist=True)
    uid = resolve_user(storage, user_id, email)
    result = storage.rebuild_user_runs(uid, from_date, to_date, backup=not no_backup, dry_run=dry_run)
    _print_rebuild(result)
    if not result.success:
        raise typer.Exit(int(ExitCode.PROBLEM_FOUND))


def validate(
    user_id: Annotated[
        list[str] | None, typer.Option("--user-id", help="Only these users (repeatable).", show_default=False)
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
    limit: Annotated[int, typer.Option("--limit", min=0, help="Violations to list at most.")] = 50,
    database_url: DatabaseOption = None,
) -> None:
    """Scan for invariant violations; exit 3 when any is found."""
    from potato_ops.domain.models import jsonable

    storage = open_storage(database_url, must_exist=True)
    for uid in user_id or []:
        storage.get_user(uid)
    report = storage.validate_invariants(user_id or None)
    listed = report.violations[:limit]
    emails = _emails(storage, [v.user_id for v in listed])
    if as_json:
        typer.echo(
            json.dumps(
                {
                    "counts": report.counts(),
                    "users_scanned": report.users_scanned,
                    "users_with_violations": report.users_with_violations,
                    "violations": [{**jsonable(v.__dict__), "email": emails.get(v.user_id)} for v in listed],
                },
                indent=2,
            )
        )
    else:
        typer.echo(f"scanned {report.users_scanned} users on {storage.url}")
        for name, count in report.counts().items():
            typer.echo(f"  {name:22} {count}")
        for v in listed:
            who = emails.get(v.user_id) or "no such user"
            typer.echo(f"  {v.kind:15} {v.user_id} <{who}>  {v.detail}")
        if len(report.violations) > limit:
            typer.echo(f"  … and {len(report.violations) - limit} more")
        typer.echo(
            "✔ all invariants hold"
            if report.ok
            else f"✘ {len(report.users_with_violations)} users with violations"
        )
    if not report.ok:
        raise typer.Exit(int(ExitCode.PROBLEM_FOUND))


def _emails(storage: Storage, user_ids: list[str]) -> dict[str, str]:
    """Return the email of each listed user that exists and has one (the listed few only)."""
    from potato_ops.errors import UserNotFoundError

    found: dict[str, str] = {}
    for uid in dict.fromkeys(user_ids):
        try:
            email = storage.get_user(uid).email
        except UserNotFoundError:  # an orphan run's user is gone
            continue
        if email:
            found[uid] = email
    return found


def backup(
    user_id: UserIdOption = None, email: EmailOption = None, database_url: DatabaseOption = None
) -> None:
    """Keep a checksummed backup of one user's runs in the database."""
    storage = open_storage(database_url, must_exist=True)
    uid = resolve_user(storage, user_id, email)
    made = storage.backup_user_runs(uid)
    typer.echo(
        f"backup {made.id} of user {uid}: {made.metadata.total_runs} runs, "
        f"sha256 {made.metadata.checksum[:16]}…"
    )


def backups(
    user_id: UserIdOption = None, email: EmailOption = None, database_url: DatabaseOption = None
) -> None:
    """List one user's backups, newest first; a damaged one is named on stderr (exit 3)."""
    storage = open_storage(database_url, must_exist=True)
    uid = resolve_user(storage, user_id, email)
    found, damaged = storage.get_backups_reporting_damage(uid)
    if not found and not damaged:
        typer.echo(f"no backups of user {uid}")
    for b in found:
        typer.echo(
            f"{b.id:>8}  {b.timestamp.isoformat(timespec='seconds')}  {b.metadata.total_runs:>4} runs  "
            f"{b.metadata.reason:8} {b.metadata.operation_id or ''}"
        )
    for problem in damaged:
        typer.echo(f"error: {problem}", err=True)
    if damaged:
        raise typer.Exit(int(ExitCode.PROBLEM_FOUND))


def restore(
    backup_id: Annotated[int, typer.Option("--backup-id", help="The backup to restore.")],
    user_id: UserIdOption = None,
    email: EmailOption = None,
    database_url: DatabaseOption = None,
) -> None:
    """Replace one user's runs with a backup's, atomically (checksum and owner checked)."""
    storage = open_storage(database_url, must_exist=True)
    uid = resolve_user(storage, user_id, email)
    backup_obj = storage.get_backup(backup_id)
    restored = storage.restore_user_runs(uid, backup_obj)
    typer.echo(f"restored {len(restored)} runs of user {uid} from backup {backup_id}")
    typer.echo(_runs_table(restored))
    if len(restored) != backup_obj.metadata.total_runs:
        raise fail("restored run count differs from the backup's", ExitCode.PROBLEM_FOUND)


def runs(
    user_id: UserIdOption = None, email: EmailOption = None, database_url: DatabaseOption = None
) -> None:
    """Show one user's stored runs."""
    storage = open_storage(database_url, must_exist=True)
    uid = resolve_user(storage, user_id, email)
    typer.echo(_runs_table(storage.get_user_runs(uid)))


def set_timezone(
    timezone: Annotated[str, typer.Argument(help="IANA timezone name, e.g. Europe/London.")],
    user_id: UserIdOption = None,
    email: EmailOption = None,
    database_url: DatabaseOption = None,
) -> None:
    """Change a user's timezone (day marks never change; rebuild afterwards)."""
    from potato_ops.domain.dates import validate_timezone

    validate_timezone(timezone)
    storage = open_storage(database_url, must_exist=True)
    uid = resolve_user(storage, user_id, email)
    user = storage.update_user(uid, timezone=timezone)
    typer.echo(f"user {uid} now in {user.timezone}; rebuild to refresh the active run")


def refresh_active(database_url: DatabaseOption = None) -> None:
    """Bring every run's active flag up to date with each user's local today."""
    storage = open_storage(database_url, must_exist=True)
    typer.echo(f"{storage.refresh_active_runs()} active flags changed")


def flag(
    name: Annotated[str, typer.Argument(help="Flag name.")] = "ff.potato.runs_v2",
    enable: Annotated[bool | None, typer.Option("--on/--off", help="Set the flag; omit to show it.")] = None,
    database_url: DatabaseOption = None,
) -> None:
    """Show or set a feature flag."""
    if not name.strip() or name != name.strip():
        raise fail(f"flag name {name!r} must be non-empty, without surrounding spaces", ExitCode.USAGE)
    storage = open_storage(database_url, must_exist=True)
    if enable is not None:
        storage.set_feature_flag(name, enable)
    typer.echo(f"{name}: {'on' if storage.get_feature_flag(name) else 'off'}")


def register(app: typer.Typer) -> None:
    """Add the core commands to the application."""
    app.command("init-db")(expected_failures(init_db))
    app.command("seed")(expected_failures(seed))
    app.command("rebuild")(expected_failures(rebuild))
    app.command("validate")(expected_failures(validate))
    app.command("backup")(expected_failures(backup))
    app.command("backups")(expected_failures(backups))
    app.command("restore")(expected_failures(restore))
    app.command("runs")(expected_failures(runs))
    app.command("set-timezone")(expected_failures(set_timezone))
    app.command("refresh-active")(expected_failures(refresh_active))
    app.command("flag")(expected_failures(flag))
