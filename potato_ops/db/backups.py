"""Persisted backups of users' runs: checksummed snapshots, restore, retention."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from datetime import date, datetime

from sqlalchemy import Connection, RowMapping, delete, func, insert, select
from sqlalchemy.exc import DataError, IntegrityError

from potato_ops.db.engine import run_prepared
from potato_ops.db.schema import ops_backups, runs
from potato_ops.domain.dates import as_utc
from potato_ops.domain.models import Backup, BackupMetadata, Run
from potato_ops.domain.runs import should_be_active
from potato_ops.errors import BackupError


def _payload(backup_runs: Sequence[Run]) -> str:
    """Return the runs as the JSON text a backup stores: compact, keys sorted.

    The very text ``json.dumps([...], sort_keys=True, separators=(",", ":"))`` gives for the
    runs' fields (dates ISO), written directly: a backup is taken on every rebuild, and the
    json encoder costs several times this.
    """
    return (
        "["
        + ",".join(
            f'{{"active":{"true" if r.active else "false"},"day_count":{int(r.day_count)},'
            f'"end_date":"{r.end_date.isoformat()}","id":{"null" if r.id is None else int(r.id)},'
            f'"start_date":"{r.start_date.isoformat()}"}}'
            for r in backup_runs
        )
        + "]"
    )


def backup_checksum(user_id: str, backup_runs: Sequence[Run]) -> str:
    """Return the SHA-256 of the canonical JSON of a user's runs.

    The canonical JSON is ``{"runs": [...], "user_id": ...}``, compact with sorted keys.
    """
    return _checksum(user_id, _payload(backup_runs))


def _checksum(user_id: str, payload: str) -> str:
    body = '{"runs":' + payload + ',"user_id":' + json.dumps(user_id) + "}"
    return hashlib.sha256(body.encode()).hexdigest()


def make_backup(
    user_id: str,
    user_runs: Sequence[Run],
    timestamp: datetime,
    *,
    reason: str = "manual",
    operation_id: str | None = None,
) -> Backup:
    """Return an unsaved backup (id None) of the runs given."""
    return _made(user_id, user_runs, timestamp, reason, operation_id)[0]


def _made(
    user_id: str, user_runs: Sequence[Run], timestamp: datetime, reason: str, operation_id: str | None
) -> tuple[Backup, str]:
    """Return an unsaved backup of the runs and its payload (written once: checksum and row)."""
    ordered = sorted(user_runs, key=lambda r: (r.start_date, r.end_date, r.id or 0))
    payload = _payload(ordered)
    meta = BackupMetadata(len(ordered), _checksum(user_id, payload), reason, operation_id)
    return Backup(None, user_id, timestamp, ordered, meta), payload


_INSERT_RETURNING_ID = insert(ops_backups).returning(ops_backups.c.id, sort_by_parameter_order=True)


def save_backups(conn: Connection, backups: Sequence[Backup]) -> list[Backup]:
    """Persist backups in one statement; return them with their ids."""
    return _insert(conn, [(b, _payload(b.runs)) for b in backups])


def take_backups(
    conn: Connection,
    owned: Sequence[tuple[str, Sequence[Run]]],
    timestamp: datetime,
    *,
    reason: str,
    operation_id: str | None = None,
) -> list[Backup]:
    """Back up each (user id, runs) given, in one statement; return the saved backups.

    ``make_backup`` and ``save_backups`` in one.
    """
    return _insert(conn, [_made(uid, found, timestamp, reason, operation_id) for uid, found in owned])


def _insert(conn: Connection, made: Sequence[tuple[Backup, str]]) -> list[Backup]:
    if not made:
        return []
    rows = [
        {
            "user_id": b.user_id,
            "created_at": b.timestamp,
            "operation_id": b.metadata.operation_id,
            "reason": b.metadata.reason,
            "run_count": b.metadata.total_runs,
            "checksum": b.metadata.checksum,
            "payload": payload,
        }
        for b, payload in made
    ]
    if len(rows) == 1:  # a single-user rebuild's: the statement prepared once
        ids = run_prepared(conn, _INSERT_RETURNING_ID, rows[0])
    else:
        ids = [tuple(row) for row in conn.execute(_INSERT_RETURNING_ID, rows)]
    return [
        Backup(new_id, b.user_id, b.timestamp, b.runs, b.metadata)
        for (new_id,), (b, _payload_text) in zip(ids, made, strict=True)
    ]


def _payload_runs(backup_id: int, user_id: str, raw: object) -> list[Run]:
    """Return the runs a backup row's payload holds; BackupError naming the backup if damaged."""
    try:
        payload = json.loads(str(raw))
        if not isinstance(payload, list) or not all(isinstance(r, dict) for r in payload):
            raise ValueError("not a list of runs")
        return [
            Run(
                None if r["id"] is None else int(r["id"]),
                user_id,
                date.fromisoformat(r["start_date"]),
                date.fromisoformat(r["end_date"]),
                int(r["day_count"]),
                bool(r["active"]),
            )
            for r in payload
        ]
    except (ValueError, TypeError, KeyError, RecursionError) as exc:
        detail = f"missing {exc}" if isinstance(exc, KeyError) else str(exc).splitlines()[0][:120]
        raise BackupError(f"backup {backup_id} is damaged: its runs cannot be read ({detail})") from None


def _from_row(row: RowMapping) -> Backup:
    user_id = str(row["user_id"])
    backup_runs = _payload_runs(int(row["id"]), user_id, row["payload"])
    created = row["created_at"]
    assert isinstance(created, datetime)
    meta = BackupMetadata(
        int(row["run_count"]),
        str(row["checksum"]),
        str(row["reason"]),
        None if row["operation_id"] is None else str(row["operation_id"]),
    )
    return Backup(int(row["id"]), user_id, as_utc(created), backup_runs, meta)


def fetch_backups_reporting_damage(conn: Connection, user_id: str) -> tuple[list[Backup], list[BackupError]]:
    """Return a user's readable backups, newest first, and one BackupError per damaged one."""
    rows = conn.execute(
        select(ops_backups)
        .where(ops_backups.c.user_id == user_id)
        .order_by(ops_backups.c.created_at.desc(), ops_backups.c.id.desc())
    ).mappings()
    readable: list[Backup] = []
    damaged: list[BackupError] = []
    for row in rows:
        try:
            readable.append(_from_row(row))
        except BackupError as exc:
            damaged.append(exc)
    return readable, damaged


def fetch_backups(conn: Connection, user_id: str) -> list[Backup]:
    """Return a user's persisted backups, newest first; BackupError names the first damaged one."""
    readable, damaged = fetch_backups_reporting_damage(conn, user_id)
    if damaged:
        raise damaged[0]
    return readable


def fetch_backup(conn: Connection, backup_id: int, user_id: str | None = None) -> Backup:
    """Return one persisted backup, or raise BackupError.

    With the user's id the lookup is keyed by it (one shard on a distributed database); a
    backup of another user is then looked up by id alone, so the refusal can name its owner.
    """
    row = None
    if user_id is not None:
        mine = select(ops_backups).where(ops_backups.c.user_id == user_id, ops_backups.c.id == backup_id)
        row = conn.execute(mine).mappings().first()
    if row is None:
        row = conn.execute(select(ops_backups).where(ops_backups.c.id == backup_id)).mappings().first()
    if row is None:
        raise BackupError(f"no backup with id {backup_id}")
    return _from_row(row)


def verify_backup(user_id: str, backup: Backup) -> None:
    """Raise BackupError unless the backup belongs to user_id and its checksum matches."""
    if backup.user_id != user_id:
        raise BackupError(f"backup {backup.id} belongs to user {backup.user_id!r}, not {user_id!r}: refused")
    if any(r.user_id != user_id for r in backup.runs):
        raise BackupError(f"backup {backup.id} holds runs of another user: refused")
    ordered = sorted(backup.runs, key=lambda r: (r.start_date, r.end_date, r.id or 0))
    if backup_checksum(user_id, ordered) != backup.metadata.checksum:
        raise BackupError(f"backup {backup.id} fails its checksum (tampered or corrupt): refused")
    if backup.metadata.total_runs != len(backup.runs):
        raise BackupError(
            f"backup {backup.id} says {backup.metadata.total_runs} runs but holds {len(backup.runs)}"
        )


def replace_runs(conn: Connection, user_id: str, new_runs: Sequence[Run], today: date) -> int:
    """Replace all of a user's runs with new_runs (ids kept); return how many were deleted.

    The active flag is set by the rule at ``today``; if corrupt runs would make more than one
    active, only the latest-ending one is flagged, as the partial unique index requires.
    """
    deleted = conn.execute(delete(runs).where(runs.c.user_id == user_id)).rowcount
    flags = [should_be_active(r.start_date, r.end_date, today) for r in new_runs]
    if sum(flags) > 1:
        latest = max((i for i, f in enumerate(flags) if f), key=lambda i: new_runs[i].end_date)
        flags = [i == latest for i in range(len(flags))]
    rows = [
        {
            **({"id": r.id} if r.id is not None else {}),
            "user_id": user_id,
            "start_date": r.start_date,
            "end_date": r.end_date,
            "day_count": r.day_count,
            "active": flag,
        }
        for r, flag in zip(new_runs, flags, strict=True)
    ]
    try:
        with conn.begin_nested():
            for row in rows:
                conn.execute(insert(runs), row)
    except (IntegrityError, DataError) as exc:  # DataError: PostgreSQL's span of start > end
        raise BackupError(f"the backup's runs cannot be stored: {exc.orig}") from exc
    return int(deleted)


def prune_backups(conn: Connection, cutoff: datetime, keep_latest: int = 1) -> int:
    """Delete backups created before cutoff, keeping each user's newest ``keep_latest``."""
    ranked = select(
        ops_backups.c.id,
        func.row_number()
        .over(
            partition_by=ops_backups.c.user_id,
            order_by=(ops_backups.c.created_at.desc(), ops_backups.c.id.desc()),
        )
        .label("rank"),
    ).subquery()
    keep = select(ranked.c.id).where(ranked.c.rank <= keep_latest)
    result = conn.execute(
        delete(ops_backups).where(ops_backups.c.created_at < cutoff, ops_backups.c.id.not_in(keep))
    )
    return int(result.rowcount)
