"""Statements on ``ops_run_records``: the database's copy of each notebook run's record."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, delete, insert, select

from potato_ops.db.schema import ops_run_records


@dataclass(frozen=True)
class StoredRecord:
    """An execution's record as the database keeps it: its archive and the hashes that anchor it."""

    run_id: str
    notebook: str
    status: str
    archive: str
    seq: int | None
    manifest_sha256: str | None
    entry_hash: str | None
    signature: str | None
    archive_error: str | None
    recorded_at: dt.datetime


def insert_stored_record(conn: Connection, row: Mapping[str, Any]) -> None:
    """Insert one run's record; the caller commits."""
    conn.execute(insert(ops_run_records).values(**row))


def replace_run_record(conn: Connection, row: Mapping[str, Any]) -> None:
    """Insert one run's record in place of any row with its run_id; the caller commits."""
    delete_run_record(conn, str(row["run_id"]))
    insert_stored_record(conn, row)


def delete_run_record(conn: Connection, run_id: str) -> None:
    """Delete the record with this run_id, if any; the caller commits."""
    conn.execute(delete(ops_run_records).where(ops_run_records.c.run_id == run_id))


def operation_ids_for_ticket(conn: Connection, ticket: str) -> set[str]:
    """Return the operation ids of every recorded notebook run made for this ticket."""
    rows = conn.execute(
        select(ops_run_records.c.parameters, ops_run_records.c.operation_ids).where(
            ops_run_records.c.parameters.contains(json.dumps(ticket))
        )
    ).all()
    found: set[str] = set()
    for parameters, operation_ids in rows:
        try:
            if json.loads(parameters).get("ticket") == ticket:
                found.update(str(op) for op in json.loads(operation_ids))
        except (ValueError, AttributeError):  # a damaged row names no ticket
            continue
    return found


def stored_records(conn: Connection, archive: str) -> list[StoredRecord]:
    """Return the runs recorded for one archive folder, archived ones by their place first."""
    rows = conn.execute(
        select(ops_run_records)
        .where(ops_run_records.c.archive == archive)
        .order_by(ops_run_records.c.seq, ops_run_records.c.recorded_at, ops_run_records.c.run_id)
    ).mappings()
    return [
        StoredRecord(
            run_id=r["run_id"],
            notebook=r["notebook"],
            status=r["status"],
            archive=r["archive"],
            seq=r["seq"],
            manifest_sha256=r["manifest_sha256"],
            entry_hash=r["entry_hash"],
            signature=r["signature"],
            archive_error=r["archive_error"],
            recorded_at=r["recorded_at"],
        )
        for r in rows
    ]
