"""A live run is confirmed by naming the database it changes: ``confirm`` = the database's name.

A writing notebook declares ``confirm: str = ""``. With ``dry_run=False`` it runs only when
``confirm`` equals the name of the database its ``database_url_env`` variable points at (the
PostgreSQL database's name, the SQLite file's name), so editing ``dry_run`` and pressing Run
All is not enough to change a database, and a scheduler confirms with one more parameter
(``-p confirm NAME``). ``potato-ops run`` refuses an unconfirmed live run before the kernel
starts; the notebook's check cell refuses it too, and says what to type.
"""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import unquote, urlsplit

from potato_ops.config import DATABASE_URL_ENV, default_sqlite_path, normalize_url

CONFIRM = "confirm"


def database_name(env_var: str = DATABASE_URL_ENV) -> str:
    """Return the name a live run must be confirmed with for the database env_var points at."""
    url = os.environ.get(env_var or DATABASE_URL_ENV, "").strip()
    if not url:
        return default_sqlite_path().name
    parts = urlsplit(normalize_url(url))
    if parts.scheme.split("+")[0] == "sqlite":
        return Path(unquote(parts.path)).name
    return unquote(parts.path.lstrip("/"))


def unconfirmed_live_run(dry_run: bool, confirm: object, env_var: str = DATABASE_URL_ENV) -> str | None:
    """Return why a live run is not confirmed (None when it is, or when it is a dry run)."""
    if dry_run:
        return None
    name = database_name(env_var)
    given = str(confirm or "").strip()
    if name and given == name:
        return None
    told = f" (got {given!r})" if given else ""
    return (
        f"a live run (dry_run=False) changes the database {name!r}: set confirm = {name!r} to go "
        f"ahead{told}, or keep dry_run=True"
    )


def confirm_hint(env_var: str = DATABASE_URL_ENV) -> str:
    """Return the line the check cell shows for a dry run: what a live run would need."""
    return f"a live run needs dry_run=False and confirm = {database_name(env_var)!r}"
