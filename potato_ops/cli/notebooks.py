"""``potato-ops run`` (runbook notebooks, headless) and ``potato-ops reports`` (the archive)."""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
from typer.core import TyperCommand

from potato_ops.cli.common import DatabaseOption, ReportsDirOption, expected_failures, fail
from potato_ops.config import SIGNING_KEY_ENV, VERIFY_KEY_ENV, default_sqlite_path
from potato_ops.exitcodes import ExitCode

PARAMETER_FLAGS = ("-p", "--parameter")


class _ParameterPairsCommand(TyperCommand):
    """Reads ``-p NAME VALUE`` (two words, as papermill does) into ``NAME=VALUE``."""

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        rewritten: list[str] = []
        rest = iter(args)
        for arg in rest:
            if arg == "--":
                rewritten.append(arg)
                rewritten.extend(rest)
                break
            if arg in PARAMETER_FLAGS:
                pair = [next(rest, None), next(rest, None)]
                if pair[0] is None or pair[1] is None:
                    raise typer.BadParameter("takes two values: NAME VALUE", ctx, param_hint=arg)
                rewritten.extend([arg, f"{pair[0]}={pair[1]}"])
                continue
            rewritten.append(arg)
        return super().parse_args(ctx, rewritten)


def run(
    notebook: Annotated[
        str | None,
        typer.Argument(
            help="Notebook to run: a name (03_bulk_recovery), its number (03) or a path.",
            show_default=False,
        ),
    ] = None,
    parameter: Annotated[
        list[str] | None,
        typer.Option(
            *PARAMETER_FLAGS,
            metavar="NAME VALUE",
            help="Set a notebook parameter; repeat for several. "
            "Values are converted to the parameter's declared type.",
            show_default=False,
        ),
    ] = None,
    list_only: Annotated[
        bool,
        typer.Option("--list", help="List the notebooks and their parameters, then exit."),
    ] = False,
    reports_dir: ReportsDirOption = None,
    timeout: Annotated[
        float,
        typer.Option("--timeout", metavar="SECONDS", min=1, help="Longest a single cell may run."),
    ] = 600,
    quiet: Annotated[
        bool,
        typer.Option("--quiet", "-q", help="Print only the verdict and the archive folder."),
    ] = False,
) -> None:
    """Run a runbook notebook headless, archive the run, exit with its status.

    Exit codes: 0 ok, 3 problem found, 4 parameters refused, 5 a cell failed or timed out,
    1 the reports folder cannot take the record (nothing runs) or the run's record could not
    be archived (the line says where it was kept instead), 130 / 143 stopped by Ctrl-C / SIGTERM
    (the run is archived as interrupted).
    """
    if list_only:
        _print_notebooks()
        return
    if notebook is None:
        raise fail("give a notebook to run, or --list to see them", ExitCode.USAGE)
    from potato_ops.notebook_runs.catalog import resolve_notebook
    from potato_ops.notebook_runs.parameters import check_parameters

    parameters: dict[str, object] = {}
    for pair in parameter or []:
        name, _, value = pair.partition("=")
        parameters[name] = value
    # A refused parameter answers at once, before papermill and the kernel machinery load
    # (the run checks them again, from the same cached read of the notebook).
    check_parameters(resolve_notebook(notebook), parameters)
    from potato_ops.notebook_runs.execute import execute_notebook
    from potato_ops.notebook_runs.result import verdict_line

    with _live_log(enabled=not quiet):
        record = execute_notebook(
            notebook,
            parameters,
            reports_dir=reports_dir,
            cell_timeout=timeout,
            log_output=not quiet,
        )
    typer.echo(verdict_line(record.status, str(record.result.get("verdict", ""))))
    typer.echo(f"status: {record.status}; archived in {record.run_dir}")
    if record.not_in_database is not None:
        typer.echo(f"warning: the run's hash is not in the database: {record.not_in_database}", err=True)
    if record.exit_code != ExitCode.OK:
        raise typer.Exit(int(record.exit_code))


def _print_notebooks() -> None:
    from potato_ops.notebook_runs.catalog import list_notebooks, notebooks_dir

    found = list_notebooks()
    if not found:
        typer.echo(f"no notebooks in {notebooks_dir()}")
        return
    for info in found:
        typer.echo(f"{info.name}" + (f": {info.title}" if info.title else ""))
        for p in info.parameters:
            typer.echo(f"    {p.name}: {p.type_name} = {p.default}" + (f"  # {p.help}" if p.help else ""))


class _HideTemporaryPaths(logging.Filter):
    """Papermill names execute_notebook's temporary files; the archive folder is what matters."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(("Input Notebook", "Output Notebook"))


@contextmanager
def _live_log(*, enabled: bool) -> Iterator[None]:
    """Show the run's progress on stderr, scrubbed of secrets, while the block runs."""
    if not enabled:
        yield
        return
    from potato_ops.redact import SecretScrubFilter

    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
    handler.addFilter(_HideTemporaryPaths())
    handler.addFilter(SecretScrubFilter())
    loggers = [logging.getLogger(name) for name in ("potato_ops", "papermill")]
    saved: list[tuple[logging.Logger, int, bool]] = []
    for log in loggers:
        saved.append((log, log.level, log.propagate))
        log.addHandler(handler)
        log.setLevel(logging.INFO)
        log.propagate = False
    try:
        yield
    finally:
        for log, level, propagate in saved:
            log.removeHandler(handler)
            log.setLevel(level)
            log.propagate = propagate


def reports_list(reports_dir: ReportsDirOption = None) -> None:
    """List the archived runs, newest first."""
    from potato_ops.notebook_runs.archive import list_executions

    runs = list_executions(reports_dir)
    if not runs:
        typer.echo("no archived runs")
        return
    for entry in reversed(runs):
        typer.echo(f"{entry.started_at}  {entry.status:<8} {entry.notebook:<28} {entry.dir}")


def reports_verify(
    reports_dir: ReportsDirOption = None,
    database_url: DatabaseOption = None,
    public_key: Annotated[
        Path | None,
        typer.Option(
            "--public-key",
            envvar=VERIFY_KEY_ENV,
            show_envvar=True,
            show_default=False,
            help="Check the signature of the chain's head with this ed25519 public key (PEM).",
        ),
    ] = None,
) -> None:
    """Check every archived run against its manifest, the chained index and the database.

    The database (--database-url, else the embedded one when it exists) holds each archived
    run's manifest hash: runs missing from the folder, changed, or never recorded are
    reported. Exit 0 when intact; 3 with one line per problem otherwise.
    """
    from potato_ops.config import reports_dir as default_reports_dir
    from potato_ops.notebook_runs.archive import verify_reports
    from potato_ops.notebook_runs.records import verify_against_database
    from potato_ops.notebook_runs.signing import HEAD_SIGNATURE_FILE, load_public_key

    reports = default_reports_dir(reports_dir)
    key = load_public_key(public_key) if public_key is not None else None
    report = verify_reports(reports, public_key=key)
    url = database_url or _embedded_database_url()
    problems = list(report.problems)
    if url is not None:
        problems.extend(verify_against_database(url, reports))
    if not problems:
        against = "matching the database's records" if url else "folder only: no database given"
        signed = "; head signature verified" if key is not None else ""
        if key is None and (reports / HEAD_SIGNATURE_FILE).exists():
            signed = f"; {HEAD_SIGNATURE_FILE} present but NOT checked: give --public-key"
        typer.echo(f"ok: {report.checked} runs intact ({against}{signed})")
        return
    for problem in problems:
        typer.echo(problem)
    typer.echo(f"{len(problems)} problems in {report.checked} runs", err=True)
    raise typer.Exit(int(ExitCode.PROBLEM_FOUND))


def _embedded_database_url() -> str | None:
    path = default_sqlite_path()
    return f"sqlite:///{path}" if path.is_file() else None


def reports_keygen(
    private_key: Annotated[
        Path,
        typer.Argument(
            metavar="PATH",
            help="Where to write the private key (mode 0600); the public key goes to PATH.pub.",
        ),
    ],
) -> None:
    """Make an ed25519 key pair for signing the archive's chain head.

    Set POTATO_OPS_SIGNING_KEY=PATH where runs are archived; give PATH.pub to
    `reports verify --public-key`.
    """
    from potato_ops.notebook_runs.signing import generate_key_pair

    public = generate_key_pair(private_key)
    typer.echo(f"private key: {private_key} (keep it secret; set {SIGNING_KEY_ENV} to this path)")
    typer.echo(f"public key: {public} (give it to reports verify --public-key)")


def register(app: typer.Typer) -> None:
    """Add ``run`` and the ``reports`` commands to the application."""
    app.command("run", cls=_ParameterPairsCommand)(expected_failures(run))
    reports_app = typer.Typer(
        help="Inspect and verify the archive of notebook runs.", no_args_is_help=True, rich_markup_mode=None
    )
    reports_app.command("list")(expected_failures(reports_list))
    reports_app.command("verify")(expected_failures(reports_verify))
    reports_app.command("keygen")(expected_failures(reports_keygen))
    app.add_typer(reports_app, name="reports")
