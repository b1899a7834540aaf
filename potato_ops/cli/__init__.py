"""The ``potato-ops`` command: a thin skin over the package.

Each command opens the database, makes one library call and prints its result; a
``PotatoOpsError`` becomes one line on stderr and a documented exit code (see ``exitcodes``).
Commands live in the modules of this package, each registering itself on ``app``.
"""

from __future__ import annotations

import typer

from potato_ops.cli import bulk as bulk
from potato_ops.cli import core as core
from potato_ops.cli import demo as demo
from potato_ops.cli import monitoring as monitoring
from potato_ops.cli import notebooks as notebooks

app = typer.Typer(
    name="potato-ops",
    help="Rebuild, back up, restore and validate Project Potato's runs table.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

for _module in (core, bulk, notebooks, monitoring, demo):
    _module.register(app)


def main() -> None:
    """Run the command line."""
    app()
