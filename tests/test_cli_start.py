"""The command starts light: ``--help`` of every command loads no heavy library, flags show as
flags, and ``--version`` answers. (How fast is measured by benchmarks/cli_start.py, not here.)
"""

from __future__ import annotations

import json
import subprocess
import sys
from importlib import metadata
from typing import Any

import typer
from typer.testing import CliRunner

from potato_ops import __version__
from potato_ops.cli import app

HEAVY = (
    "sqlalchemy",
    "polars",
    "matplotlib",
    "papermill",
    "nbformat",
    "nbconvert",
    "prometheus_client",
    "psycopg",
)

# Runs every command's --help in one fresh interpreter, then reports which heavy libraries
# that loaded; a command whose --help imports one shows up here.
SCRIPT = """
import json, sys
import typer
from typer.testing import CliRunner
from potato_ops.cli import app

def names(group, prefix=()):
    command = typer.main.get_command(group)
    for name, sub in command.commands.items():
        if hasattr(sub, "commands"):
            yield from ((prefix + (name, n)) for n in sub.commands)
        else:
            yield prefix + (name,)

commands = [list(c) for c in names(app)]
codes = [CliRunner().invoke(app, [*c, "--help"]).exit_code for c in [[]] + commands]
heavy = sorted({m.split(".")[0] for m in sys.modules} & set(sys.argv[1:]))
print(json.dumps({"commands": commands, "codes": codes, "heavy": heavy}))
"""


def test_no_help_loads_a_heavy_library() -> None:
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, *HEAVY], capture_output=True, text=True, timeout=120, check=True
    )
    found = json.loads(done.stdout)

    assert len(found["commands"]) >= 20
    assert set(found["codes"]) == {0}
    assert found["heavy"] == []


def test_importing_the_package_loads_no_database_library() -> None:
    code = "import sys, potato_ops; print(sorted(m for m in sys.modules if m.split('.')[0] in sys.argv[1:]))"
    done = subprocess.run([sys.executable, "-c", code, *HEAVY], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


def test_version() -> None:
    result = CliRunner().invoke(app, ["--version"])
    assert (result.exit_code, result.stdout) == (0, f"potato-ops {__version__}\n")


def command_names() -> list[list[str]]:
    """Return every command as the words that invoke it (``["alerts", "export"]``)."""
    group: Any = typer.main.get_command(app)
    found = []
    for name, sub in group.commands.items():
        found += [[name, inner] for inner in sub.commands] if hasattr(sub, "commands") else [[name]]
    return found


def test_boolean_flags_show_as_flags() -> None:
    for words in command_names():
        result = CliRunner().invoke(app, [*words, "--help"])
        assert result.exit_code == 0
        assert "<bool>" not in result.stdout and "BOOLEAN" not in result.stdout, words
    help_text = CliRunner().invoke(app, ["rebuild", "--help"]).stdout
    dry_run = next(line for line in help_text.splitlines() if "--dry-run" in line)
    assert dry_run.split()[:2] == ["--dry-run", "Compute"]


# A run whose parameters are refused, and --list, in one fresh interpreter: the libraries
# loaded by then, and each exit code.
REFUSED_SCRIPT = """
import json, sys
from typer.testing import CliRunner
from potato_ops.cli import app

refused = CliRunner().invoke(app, ["run", "01", "-p", "dry_run", "maybe", "--reports-dir", sys.argv[1]])
listed = CliRunner().invoke(app, ["run", "--list"])
heavy = sorted({m.split(".")[0] for m in sys.modules} & set(sys.argv[2:]))
print(json.dumps({"refused": refused.exit_code, "listed": listed.exit_code, "heavy": heavy}))
"""


def test_a_refused_parameter_answers_before_the_notebook_machinery_loads(tmp_path: Any) -> None:
    done = subprocess.run(
        [sys.executable, "-c", REFUSED_SCRIPT, str(tmp_path / "reports"), *HEAVY],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    found = json.loads(done.stdout)

    assert (found["refused"], found["listed"]) == (4, 0)
    assert found["heavy"] == []
    assert not (tmp_path / "reports").exists()  # nothing archived for a run that never started


HIDDEN_SCRIPT = """
import importlib.util, json, sys
import potato_ops.notebook_runs.execute
import potato_ops.notebook_runs.archive
loaded = "rfc3987_syntax" in sys.modules
installed = importlib.util.find_spec("rfc3987_syntax") is not None
print(json.dumps({"loaded": loaded, "installed": installed, "jsonschema": "jsonschema" in sys.modules}))
"""


def test_execute_notebook_loads_jsonschema_without_the_iri_grammar() -> None:
    # jsonschema imports rfc3987_syntax (a grammar compiled at import, over a second) when it
    # is installed; execute_notebook's imports leave it out, and leave it importable.
    done = subprocess.run(
        [sys.executable, "-c", HIDDEN_SCRIPT], capture_output=True, text=True, timeout=120, check=True
    )
    found = json.loads(done.stdout)

    try:
        metadata.distribution("rfc3987-syntax")
        installed = True
    except metadata.PackageNotFoundError:
        installed = False
    assert found["jsonschema"] is True
    assert found["loaded"] is False
    assert found["installed"] is installed  # still found: the hiding entry was removed again
