"""An incident's JupyterLab folder: working copies of the runbooks, their records beside them.

``prepare_lab`` makes ``<incidents>/<ticket>/`` holding

* ``notebooks/``: a copy of every runbook (the jupytext ``.py`` source), whose first cell names
  the incident and the database it works on, and whose parameters default to this ticket and
  operator; saving in JupyterLab changes these copies, never the tracked notebooks;
* ``records/``: where every run made from these notebooks is archived (the kernels get
  ``POTATO_OPS_REPORTS_DIR``), so the incident's records are in one folder;
* ``.jupyter/``: JupyterLab settings that open a ``.py`` runbook as a notebook (jupytext's
  notebook view) on a double click.

``lab_command`` gives the ``jupyter lab`` command and environment that serve it.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path

from potato_ops.config import DATABASE_URL_ENV, home_dir, mask_url, resolve_database_url
from potato_ops.errors import ConfigError
from potato_ops.notebook_runs.catalog import notebooks_dir
from potato_ops.notebook_runs.confirm import database_name

INCIDENTS_DIR = "incidents"
JUPYTEXT_VIEWER = "Jupytext Notebook"
_SAFE = re.compile(r"[^A-Za-z0-9_.\-]+")
_DOCMANAGER_SETTINGS = "@jupyterlab/docmanager-extension/plugin.jupyterlab-settings"


@dataclass(frozen=True)
class LabFolder:
    """An incident's folder and what it holds."""

    folder: Path
    notebooks: Path
    records: Path
    settings: Path
    workspaces: Path
    ticket: str
    operator: str
    database: str  # the URL, password masked
    notebook_files: tuple[Path, ...]

    def environment(self, base: dict[str, str] | None = None) -> dict[str, str]:
        """Return the environment JupyterLab (and so every kernel it starts) runs with."""
        env = dict(os.environ if base is None else base)
        env.update(
            POTATO_OPS_REPORTS_DIR=str(self.records),
            JUPYTERLAB_SETTINGS_DIR=str(self.settings),
            JUPYTERLAB_WORKSPACES_DIR=str(self.workspaces),
        )
        return env


def incident_folder_name(ticket: str, now: dt.datetime | None = None) -> str:
    """Return the folder name of an incident: its ticket, else the time it was opened."""
    if ticket:
        return _SAFE.sub("-", ticket).strip("-.") or "incident"
    stamp = (now or dt.datetime.now(dt.UTC)).astimezone(dt.UTC)
    return f"incident-{stamp:%Y%m%dT%H%M%SZ}"


def prepare_lab(
    *,
    ticket: str = "",
    operator: str = "",
    folder: Path | None = None,
    source: Path | None = None,
    env_var: str = DATABASE_URL_ENV,
) -> LabFolder:
    """Return the incident's folder, made or refreshed: existing working copies are kept as edited."""
    target = folder or home_dir() / INCIDENTS_DIR / incident_folder_name(ticket)
    originals = sorted((source or notebooks_dir()).glob("[0-9][0-9]_*.py"))
    if not originals:
        raise ConfigError(f"no runbook notebooks (NN_name.py) in {source or notebooks_dir()}")
    url = mask_url(resolve_database_url(None, env_var))
    copies = target / "notebooks"
    records = target / "records"
    settings = target / ".jupyter" / "lab" / "user-settings"
    workspaces = target / ".jupyter" / "lab" / "workspaces"
    for made in (copies, records, settings, workspaces):
        made.mkdir(parents=True, exist_ok=True)
    viewer = settings / _DOCMANAGER_SETTINGS
    viewer.parent.mkdir(parents=True, exist_ok=True)
    viewer.write_text(json.dumps({"defaultViewers": {"python": JUPYTEXT_VIEWER}}, indent=2), encoding="utf-8")
    written: list[Path] = []
    for original in originals:
        copy = copies / original.name
        if not copy.exists():  # a copy already worked on in this incident stays as it is
            text = original.read_text(encoding="utf-8")
            copy.write_text(
                working_copy(
                    text, ticket=ticket, operator=operator, database=url, env_var=env_var, records=records
                ),
                encoding="utf-8",
            )
        written.append(copy)
    return LabFolder(target, copies, records, settings, workspaces, ticket, operator, url, tuple(written))


def working_copy(text: str, *, ticket: str, operator: str, database: str, env_var: str, records: Path) -> str:
    """Return a runbook's jupytext source as an incident's working copy.

    A first cell names the incident and the database; the parameters ``operator`` and
    ``ticket`` default to this incident's.
    """
    text = _default(text, "operator", operator)
    text = _default(text, "ticket", ticket)
    name = database_name(env_var)
    banner = [
        "# %% [markdown]",
        f"# **Incident {ticket or '(no ticket)'}**, operator {operator or '(not given)'}",
        "#",
        f"# Database: `{database}` (from `${env_var}`); a live run is confirmed with `confirm = {name!r}`.",
        "#",
        f"# Records of every run from this folder: `{records}`.",
        "",
    ]
    header = re.match(r"(# ---\n(?:#.*\n)*?# ---\n\n?)", text)
    cut = header.end() if header else 0
    return text[:cut] + "\n".join(banner) + "\n" + text[cut:]


def _default(text: str, name: str, value: str) -> str:
    if not value:
        return text
    pattern = re.compile(rf'^({re.escape(name)}: str = )"[^"\n]*"', re.MULTILINE)
    return pattern.sub(lambda m: m[1] + json.dumps(value), text, count=1)


def lab_command(lab: LabFolder, *, port: int | None = None, open_browser: bool = True) -> list[str]:
    """Return the command that serves the incident's notebooks in JupyterLab."""
    command = [sys.executable, "-m", "jupyterlab", f"--ServerApp.root_dir={lab.notebooks}"]
    if port is not None:
        command.append(f"--ServerApp.port={port}")
    if not open_browser:
        command.append("--no-browser")
    if os.geteuid() == 0:  # a container's root: JupyterLab refuses to start without it
        command.append("--allow-root")
    return command
