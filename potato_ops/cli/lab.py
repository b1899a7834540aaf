"""``potato-ops lab``: JupyterLab on an incident's working copies of the runbooks."""

from __future__ import annotations

import getpass
import importlib.util
import subprocess
from pathlib import Path
from typing import Annotated

import typer

from potato_ops.cli.common import expected_failures, fail


def lab(
    ticket: Annotated[
        str, typer.Option("--ticket", metavar="T", help="The incident's ticket: names its folder.")
    ] = "",
    operator: Annotated[
        str,
        typer.Option(
            "--operator",
            metavar="O",
            envvar="POTATO_OPS_OPERATOR",
            help="Who works the incident (default: your login name).",
        ),
    ] = "",
    folder: Annotated[
        Path | None,
        typer.Option(
            "--folder",
            metavar="DIR",
            help="The incident's folder (default: $POTATO_OPS_HOME/incidents/<ticket>).",
            show_default=False,
        ),
    ] = None,
    port: Annotated[int | None, typer.Option("--port", min=1, max=65535, help="Serve on this port.")] = None,
    no_browser: Annotated[bool, typer.Option("--no-browser", help="Do not open a browser.")] = False,
    prepare_only: Annotated[
        bool, typer.Option("--prepare-only", help="Make the folder, print the command, start nothing.")
    ] = False,
) -> None:
    """Open JupyterLab on a working copy of the runbooks for one incident.

    The copies live in the incident's folder (saving never touches the tracked notebooks), open
    as notebooks on a double click (jupytext), name the database in their first cell and default
    to this ticket and operator; every run made from them is archived in the folder's records/.
    Needs JupyterLab and jupytext (pip install 'potato-ops[notebooks]').
    """
    from potato_ops.notebook_runs.lab import lab_command, prepare_lab

    who = operator or _login_name()
    prepared = prepare_lab(ticket=ticket, operator=who, folder=folder)
    command = lab_command(prepared, port=port, open_browser=not no_browser)
    typer.echo(f"incident folder: {prepared.folder}")
    typer.echo(f"    notebooks: {prepared.notebooks} (working copies)")
    typer.echo(f"    records:   {prepared.records}")
    typer.echo(f"    database:  {prepared.database}")
    if prepare_only:
        typer.echo("    command:   " + " ".join(command))
        return
    missing = [name for name in ("jupyterlab", "jupytext") if importlib.util.find_spec(name) is None]
    if missing:
        raise fail(f"{' and '.join(missing)} not installed: pip install 'potato-ops[notebooks]'")
    done = subprocess.run(command, env=prepared.environment(), check=False)
    raise typer.Exit(done.returncode)


def _login_name() -> str:
    try:
        return getpass.getuser()
    except (OSError, KeyError):  # no login name in a bare container
        return ""


def register(app: typer.Typer) -> None:
    """Add ``lab`` to the application."""
    app.command("lab")(expected_failures(lab))
