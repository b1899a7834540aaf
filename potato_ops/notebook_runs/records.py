"""Each notebook run's record kept in the database too (``ops_run_records``).

Two jobs. It anchors the archive outside its folder: the hash of every archived run's manifest
and its place in the chain are in the database, so removing the newest run with its index line,
or rewriting a run and its index, shows in ``compare_with_database``. And it keeps the record
of a run whose archive could not be written (disk full, folder gone), so a change that
committed is never left without a record.

The database is the one the notebook worked on: the URL in the environment variable its
``database_url_env`` parameter names (``POTATO_DATABASE_URL`` by default), else the embedded
SQLite file when it exists.
"""

from __future__ import annotations

import datetime as dt
import getpass
import json
import logging
import os
import socket
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy.exc import SQLAlchemyError

from potato_ops.config import (
    DATABASE_URL_ENV,
    database_url_in,
    default_sqlite_path,
    mask_secrets,
    mask_url,
    normalize_url,
)
from potato_ops.db.engine import make_engine
from potato_ops.db.run_records import StoredRecord, insert_stored_record, stored_records
from potato_ops.errors import ConfigError, RecordNotArchivedError, ReportError, SecretLeakError
from potato_ops.notebook_runs.archive import (
    ArchivedExecution,
    IndexEntry,
    archive_execution,
    readable_entries,
    scrub_data,
)
from potato_ops.redact import collect_secrets, ensure_no_secrets

logger = logging.getLogger("potato_ops")

RECORDS_TABLE = "ops_run_records"


def archive_location(reports: Path) -> str:
    """Return the name the database knows an archive folder by: ``host:absolute path``."""
    return f"{socket.gethostname()}:{reports.resolve()}"


def database_url_of_execution(parameters: Mapping[str, object]) -> str | None:
    """Return the URL of the database the notebook worked on, or None when there is none."""
    env_name = parameters.get("database_url_env")
    try:
        url = database_url_in(env_name if isinstance(env_name, str) and env_name else DATABASE_URL_ENV)
    except ConfigError as exc:
        logger.warning("the run's record cannot be kept in its database: %s", exc)
        return None
    if url:
        return url
    embedded = default_sqlite_path()
    return f"sqlite:///{embedded}" if embedded.is_file() else None


def _timestamp(value: object) -> dt.datetime:
    try:
        parsed = dt.datetime.fromisoformat(str(value))
    except ValueError:
        return dt.datetime.now(dt.UTC)
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC)


def record_row(
    result: Mapping[str, Any],
    *,
    archive: str,
    secrets: Sequence[str],
    archived: ArchivedExecution | None = None,
    archive_error: str | None = None,
) -> dict[str, Any]:
    """Return the ``ops_run_records`` row of a run, scrubbed of secrets (SecretLeakError if one stays)."""
    clean: dict[str, Any] = scrub_data(dict(result), secrets)
    found = clean.get("parameters")
    parameters: dict[str, Any] = found if isinstance(found, dict) else {}
    operator = str(parameters.get("operator") or "") or _login_name()
    row: dict[str, Any] = {
        "run_id": str(clean.get("run_id", "")),
        "notebook": str(clean.get("notebook", "")),
        "status": str(clean.get("status", "")),
        "verdict": str(clean.get("verdict", "")),
        "operator": operator,
        "parameters": json.dumps(parameters, sort_keys=True, ensure_ascii=False),
        "operation_ids": json.dumps(list(clean.get("operation_ids") or [])),
        "started_at": _timestamp(clean.get("started_at")),
        "finished_at": _timestamp(clean.get("finished_at")),
        "recorded_at": dt.datetime.now(dt.UTC),
        "archive": archive,
        "seq": archived.entry.seq if archived else None,
        "manifest_sha256": archived.entry.manifest_sha256 if archived else None,
        "entry_hash": archived.entry.entry_hash if archived else None,
        "signature": archived.signature.signature if archived and archived.signature else None,
        "archive_error": scrub_data(archive_error, secrets) if archive_error else None,
        "result": json.dumps(clean, sort_keys=True, ensure_ascii=False),
    }
    for name, value in row.items():
        if isinstance(value, str):
            ensure_no_secrets(value, secrets, f"{RECORDS_TABLE}.{name}")
    return row


def _login_name() -> str:
    try:
        return getpass.getuser()
    except (OSError, KeyError):  # no login name in a bare container
        return f"uid {os.getuid()}"


def keep_record(url: str, row: Mapping[str, Any]) -> str:
    """Return where the row was kept after inserting it; ReportError when the database refuses."""
    try:
        engine = make_engine(url)
    except (SQLAlchemyError, ValueError):
        # Not a URL at all: its text may be any secret, so it is never shown.
        raise ReportError(
            f"cannot keep the run's record in {RECORDS_TABLE}: the database URL is not a URL (not shown)"
        ) from None
    try:
        with engine.begin() as conn:
            insert_stored_record(conn, row)
    except SQLAlchemyError as exc:
        detail = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
        raise ReportError(
            f"cannot keep the run's record in {RECORDS_TABLE} of {mask_url(url)}: {mask_secrets(detail)}"
        ) from None
    finally:
        engine.dispose()
    return f"{RECORDS_TABLE} (run_id {row['run_id']}) of {mask_url(url)}"


def read_stored_records(url: str, reports: Path) -> list[StoredRecord]:
    """Return the runs the database recorded for the archive folder ``reports``."""
    try:
        engine = make_engine(normalize_url(url))
    except (SQLAlchemyError, ValueError):
        raise ReportError(f"cannot read {RECORDS_TABLE}: the database URL is not a URL (not shown)") from None
    try:
        with engine.connect() as conn:
            return stored_records(conn, archive_location(reports))
    except SQLAlchemyError as exc:
        detail = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
        raise ReportError(f"cannot read {RECORDS_TABLE} of {mask_url(url)}: {detail}") from None
    finally:
        engine.dispose()


def compare_with_database(entries: Iterable[IndexEntry], recorded: Iterable[StoredRecord]) -> list[str]:
    """Return one line per difference between the folder's index and the database's copy:
    runs the database has that the folder lost, hashes that differ, runs it never recorded."""
    in_folder = {e.run_id: e for e in entries}
    archived = {r.run_id: r for r in recorded if r.manifest_sha256 is not None}
    problems: list[str] = []
    for run_id, row in archived.items():
        entry = in_folder.get(run_id)
        if entry is None:
            problems.append(
                f"{run_id}: recorded in the database (entry {row.seq}, {row.status}) "
                "but missing from the folder"
            )
        elif (entry.manifest_sha256, entry.entry_hash, entry.seq) != (
            row.manifest_sha256,
            row.entry_hash,
            row.seq,
        ):
            problems.append(f"{run_id}: its manifest or index entry differs from the database's copy")
    for run_id in in_folder.keys() - archived.keys():
        problems.append(f"{run_id}: in the folder but not recorded in the database")
    return sorted(problems)


def verify_against_database(url: str, reports: Path) -> list[str]:
    """Return the differences between the archive folder and the database's records of it."""
    return compare_with_database(readable_entries(reports), read_stored_records(url, reports))


def archive_with_record(
    *,
    run_id: str,
    notebook_name: str,
    notebook: Mapping[str, Any],
    result: Mapping[str, Any],
    reports: Path,
    database_url: str | None,
    signing_key: Ed25519PrivateKey | None = None,
) -> tuple[ArchivedExecution, str | None]:
    """Return the archived run and, when its record could not be kept in the database, why.

    When archiving fails, the record is kept in the database instead and RecordNotArchivedError
    (SecretLeakError for a secret that could not be scrubbed) says where; it says so too when
    the database could not keep it either, naming the run's operation ids.
    """
    secrets = collect_secrets()
    location = archive_location(reports)
    try:
        archived = archive_execution(
            run_id=run_id,
            notebook_name=notebook_name,
            notebook=notebook,
            result=result,
            reports_dir=reports,
            secrets=secrets,
            signing_key=signing_key,
        )
    except Exception as exc:  # whatever stopped the archive, the record is kept
        # Damage of the archive's own files that the preflight could not see (it happened
        # since), a full disk, a secret: the change may have committed, so keep the record.
        reason = str(exc) if isinstance(exc, ReportError) else f"{type(exc).__name__}: {exc}"
        reason = mask_secrets(" ".join(reason.split()))[:500]
        kept = _keep_unarchived(database_url, result, location, secrets, reason)
        if isinstance(exc, SecretLeakError):
            raise SecretLeakError(f"{exc}; {kept}") from None
        status = result.get("status", "?")
        raise RecordNotArchivedError(
            f"{notebook_name} ended ({status}) but its record could not be archived in {reports} "
            f"({reason}); {kept}"
        ) from None
    if database_url is None:
        # The notebook used no database (the embedded one does not exist): nothing to anchor in.
        logger.info("archived %s; no database to record its hash in", run_id)
        return archived, None
    try:
        row = record_row(result, archive=location, secrets=secrets, archived=archived)
        keep_record(database_url, row)
    except ReportError as exc:
        logger.warning("archived %s, but its hash is not in the database: %s", run_id, exc)
        return archived, str(exc)
    return archived, None


def _keep_unarchived(
    database_url: str | None,
    result: Mapping[str, Any],
    location: str,
    secrets: Sequence[str],
    reason: str,
) -> str:
    """Return where the record of a run that could not be archived was kept, or that it was not."""
    operations = ", ".join(str(op) for op in result.get("operation_ids") or []) or "none"
    if database_url is None:
        return f"there is no database to keep it in: NO RECORD KEPT (operation ids: {operations})"
    try:
        row = record_row(result, archive=location, secrets=secrets, archive_error=reason)
        where = keep_record(database_url, row)
    except ReportError as exc:
        return f"nor could it be kept in the database: {exc}: NO RECORD KEPT (operation ids: {operations})"
    return f"the record is kept in {where}"
