"""The ``potato-ops`` command: a thin skin over the package.

Each command opens the database, makes one library call and prints its result; a
``PotatoOpsError`` becomes one line on stderr and a documented exit code (see ``exitcodes``).
Every module of this package defines one function per command and a ``register(app)`` that
adds them. Nothing here imports a heavy library at import time: ``--help`` and ``--version``
print at once, and each command loads what it uses when it runs. Help is click's plain text
(``rich_markup_mode=None``): it loads no rich, and a flag shows as a flag.
"""

from __future__ import annotations

from typing import Annotated

import typer

from potato_ops.cli import bulk as bulk
from potato_ops.cli import core as core
from potato_ops.cli import demo as demo
from potato_ops.cli import lab as lab
from potato_ops.cli import monitoring as monitoring
from potato_ops.cli import notebooks as notebooks


def _show_version(value: bool) -> None:
    if value:
        from potato_ops import __version__

        typer.echo(f"potato-ops {__version__}")
        raise typer.Exit()


app = typer.Typer(
    name="potato-ops",
    help="Rebuild, back up, restore and validate Project Potato's runs table.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)


@app.callback()
def _options(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_show_version, is_eager=True, help="Print the version and exit."),
    ] = False,
) -> None:
    """Rebuild, back up, restore and validate Project Potato's runs table."""


for _module in (core, bulk, notebooks, lab, monitoring, demo):
    _module.register(app)


def main() -> None:
    """Run the command line."""
    app()
