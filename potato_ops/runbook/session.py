"""The database a notebook works on, and the safety checklist shown before it acts.

``open_session`` connects through the environment variable the notebook was told about (never
a URL parameter). With the default variable unset it uses the embedded SQLite database and
creates its tables when missing, so a notebook runs as committed on a fresh machine; any
other database must already have the schema (``potato-ops init-db``).
"""

from __future__ import annotations

import html
import os
from dataclasses import dataclass

import polars as pl
from sqlalchemy.exc import SQLAlchemyError

from potato_ops.errors import ConfigError, SchemaError
from potato_ops.monitoring.alerts import default_rules
from potato_ops.runbook.check_token import runbook_step
from potato_ops.runbook.display import Shown
from potato_ops.runbook.params import Common
from potato_ops.storage import Storage

TABLE_ROWS = 100


@dataclass(frozen=True, repr=False)
class Session(Shown):
    """An open database with what the notebook was told about the run."""

    storage: Storage
    common: Common
    database: dict[str, str]
    embedded: bool
    schema_created: bool
    feature_flag: bool

    def title(self) -> str:
        return "Database"

    def lines(self) -> list[tuple[str, str]]:
        found = [
            ("warn", self.common.embedded_warning())
            if self.embedded
            else ("info", f"from ${self.common.database_url_env}"),
            ("info", f"{self.database['url']} ({self.database['server_version']})"),
        ]
        if self.schema_created:
            found.append(("warn", "the embedded database had no tables: created them (empty)"))
        found.append(("info", f"operator: {self.common.operator or '(not given)'}"))
        found.append(("info", f"ticket: {self.common.ticket or '(not given)'}"))
        found.append(
            (
                "ok" if self.feature_flag else "warn",
                f"feature flag {Storage.RUNS_V2_FLAG}: {'on' if self.feature_flag else 'off'}",
            )
        )
        return found

    def record(self) -> dict[str, str]:
        """Return the ``database`` field of the archived result (URL masked)."""
        return dict(self.database)


@runbook_step()
def open_session(common: Common) -> Session:
    """Return an open session on the database named by ``common.database_url_env``.

    Raises ConfigError when the database cannot be reached and SchemaError when its tables are
    missing (other than on the embedded database, whose tables are created). Also makes polars
    show tables whole (up to TABLE_ROWS rows), so an archived record holds what was seen.
    """
    pl.Config.set_tbl_rows(TABLE_ROWS)
    pl.Config.set_fmt_str_lengths(120)
    embedded = not os.environ.get(common.database_url_env)
    storage = Storage.connect(env_var=common.database_url_env)
    created = False
    try:
        if embedded:
            try:
                storage.check_schema()
            except SchemaError:
                storage.create_schema()
                created = True
        else:
            storage.check_schema()
        database = storage.describe()
        flag = storage.get_feature_flag(Storage.RUNS_V2_FLAG)
    except SQLAlchemyError as exc:
        first = str(getattr(exc, "orig", exc) or exc).strip().splitlines()[0]
        raise ConfigError(f"cannot use the database {storage.url}: {first}") from None
    return Session(storage, common, database, embedded, created, flag)


@dataclass(frozen=True)
class CheckItem:
    """One line of the safety checklist: state is ok, warn, problem or info."""

    label: str
    state: str
    detail: str


@dataclass(frozen=True, repr=False)
class SafetyChecklist(Shown):
    """The playbook's safety checklist as it applies to this run."""

    procedure: str
    items: tuple[CheckItem, ...]

    def title(self) -> str:
        return f"Safety checklist: {self.procedure}"

    def lines(self) -> list[tuple[str, str]]:
        return [(i.state, f"{i.label}: {i.detail}") for i in self.items]

    @property
    def warnings(self) -> list[CheckItem]:
        """Return the items that need a person's attention."""
        return [i for i in self.items if i.state in ("warn", "problem")]

    def _repr_html_(self) -> str:
        boxes = {"ok": "☑", "info": "☐", "warn": "⚠", "problem": "☒"}
        colours = {"ok": "#1a7f37", "info": "#57606a", "warn": "#9a6700", "problem": "#cf222e"}
        rows = "".join(
            f'<tr><td style="color:{colours.get(i.state, "#24292f")};font-size:1.2em">'
            f"{boxes.get(i.state, '☐')}</td><td><b>{html.escape(i.label)}</b></td>"
            f"<td>{html.escape(i.detail)}</td></tr>"
            for i in self.items
        )
        return (
            f"<div><strong>{html.escape(self.title())}</strong>"
            f'<table style="border-collapse:collapse">{rows}</table></div>'
        )


def safety_checklist(
    session: Session,
    procedure: str,
    *,
    dry_run: bool | None,
    backups: str = "per_user",
    bulk: bool = False,
) -> SafetyChecklist:
    """Return the checklist for a procedure.

    ``dry_run`` None means the procedure never writes. ``backups`` says how the runs it replaces
    are kept: ``per_user`` (in the same transaction as each change), ``skipped`` (the operator
    chose no backup) or ``restore`` (the procedure itself restores a backup).
    """
    live = dry_run is False
    items: list[CheckItem] = []
    if dry_run is None:
        items.append(CheckItem("Mode", "ok", "read-only: this procedure never writes"))
    elif dry_run:
        items.append(CheckItem("Mode", "ok", "DRY RUN: changes are computed and shown, then rolled back"))
    else:
        items.append(CheckItem("Mode", "warn", "LIVE: changes will be committed"))
    if bulk:
        items.append(
            CheckItem(
                "Maintenance window scheduled",
                "warn" if live else "ok",
                "confirm one is scheduled (this cannot be checked from here)"
                if live
                else "not needed for a dry run",
            )
        )
    if not live:
        items.append(CheckItem("Database backup completed", "ok", "nothing is written, no backup needed"))
    elif backups == "skipped":
        items.append(
            CheckItem("Database backup completed", "problem", "skip_backup=True: NO backups are kept")
        )
    elif backups == "restore":
        items.append(
            CheckItem("Database backup completed", "ok", "the runs replaced are backed up before the restore")
        )
    else:
        items.append(
            CheckItem(
                "Database backup completed",
                "ok",
                "each user's runs are backed up in the same transaction as their change (ops_backups)",
            )
        )
    flag = session.feature_flag
    flag_detail = "on" if flag else "off"
    if not flag and bulk and live:
        flag_detail += ": a real bulk rebuild is refused unless ignore_feature_flag=True"
    elif not flag:
        flag_detail += ": the app does not serve runs from this table yet"
    items.append(CheckItem(f"Feature flag {Storage.RUNS_V2_FLAG}", "ok" if flag else "warn", flag_detail))
    items.append(
        CheckItem(
            "Monitoring alerts configured",
            "ok",
            f"{len(default_rules())} alert rules shipped (07_monitoring_audit evaluates them)",
        )
    )
    if not live:
        rollback = ("ok", "nothing to roll back")
    elif backups == "skipped":
        rollback = ("problem", "no backups: a rollback would need a rebuild from day_marks")
    else:
        rollback = ("ok", "restore the backups listed below with 06_restore_from_backup")
    items.append(CheckItem("Rollback plan confirmed", *rollback))
    items.append(CheckItem("Database", "info", session.database["url"]))
    return SafetyChecklist(procedure, tuple(items))
