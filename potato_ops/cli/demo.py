"""``potato-ops demo``: seed the embedded database, audit it and repair it with the notebooks."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Annotated

import typer

from potato_ops.cli.common import ReportsDirOption, expected_failures
from potato_ops.config import DATABASE_URL_ENV

if TYPE_CHECKING:
    from potato_ops.notebook_runs.execute import ExecutionRecord


def _describe(step: str, record: ExecutionRecord) -> None:
    from potato_ops.notebook_runs.result import verdict_line

    typer.echo(f"{step}: {verdict_line(record.status, str(record.result.get('verdict', '')))}")
    typer.echo(f"    record: {record.run_dir}")
    typer.echo(f"    report: {record.html_path}")


def demo(
    users: Annotated[int, typer.Option("--users", min=1, help="How many users to seed.")] = 200,
    days: Annotated[int, typer.Option("--days", min=7, help="Days of history per user.")] = 365,
    corrupt: Annotated[
        float, typer.Option("--corrupt", min=0.001, max=1.0, help="Share of users to corrupt.")
    ] = 0.05,
    seed_value: Annotated[int, typer.Option("--seed", help="Random seed.")] = 42,
    reports_dir: ReportsDirOption = None,
    replace: Annotated[
        bool, typer.Option("--replace", help="Wipe the embedded database even if the demo did not create it.")
    ] = False,
) -> None:
    """Seed a fresh embedded database with corrupted users; audit it, then repair it.

    Runs 07_monitoring_audit (which finds the injected corruption) and 05_error_recovery (detect,
    dry run, repair, verify) through execute_notebook, and prints where their records are. Exit 0
    when the repair leaves zero violations; 3 when it does not; 5 when a notebook failed.
    """
    from potato_ops.demo.showcase import run_demo

    if os.environ.get(DATABASE_URL_ENV):
        typer.echo(f"note: ${DATABASE_URL_ENV} is set; the demo never uses it (embedded database only)")
    result = run_demo(
        users_count=users,
        days=days,
        corrupt=corrupt,
        seed_value=seed_value,
        reports_dir=reports_dir,
        replace=replace,
        progress=lambda text: typer.echo(f"... {text}"),
    )
    kinds = ", ".join(f"{kind} {n}" for kind, n in result.corrupted.items())
    typer.echo(f"demo database: {result.database_path}")
    typer.echo(f"    {result.users} users; corrupted {sum(result.corrupted.values())}: {kinds}")
    _describe("1/2 monitoring audit (finding the corruption is expected)", result.audit)
    _describe("2/2 error recovery (detect, dry run, repair, verify)", result.recovery)
    typer.echo(f"violations: {result.violations_before} before, {result.violations_after} after")
    if result.ok:
        typer.echo(
            "✔ demo completed as designed. Open the reports above; "
            "`potato-ops reports verify` checks the archive."
        )
        return
    typer.echo("✘ the demo did not go as designed: see the records above", err=True)
    raise typer.Exit(int(result.exit_code))


def register(app: typer.Typer) -> None:
    """Add ``demo`` to the application."""
    app.command("demo")(expected_failures(demo))
