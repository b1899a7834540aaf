"""Change capture: triggers on ``day_marks`` and the statements that read what they captured.

Every committed insert, update or delete of a day mark sets its user's row in
``ops_mark_changes`` to a new position (and the time of the change), in the app's own
transaction: a rolled-back change captures nothing. The table holds one row per user who ever
changed a mark, so it stays as small as ``users``; positions are unique, not ordered by commit
(PostgreSQL draws them from an identity, on Citus each node from its own range), so a rebuild
compares positions for equality only: the position it read under its lock, before reading the
marks, against the position now. Equal means no change committed in between.

* PostgreSQL: a PL/pgSQL row trigger; on Citus it runs on the user's shard and writes the
  co-located shard of ``ops_mark_changes`` (``citus.enable_unsafe_triggers`` is set only while
  the trigger is created).
* SQLite: three row triggers; writers are serialized, so the next position is the largest + 1.

``install_capture`` (called by ``init-db`` / ``create_schema``) is idempotent. The per-operation
rows (``ops_capture_seen``) say what each user's rebuild read under, how often catch-up rebuilt
it, and which change came after the operation's final pass.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import BigInteger, Connection, DateTime, Engine, Text, bindparam, text

from potato_ops.db.engine import chunks, is_postgres
from potato_ops.domain.dates import as_utc

TRIGGER = "potato_capture_mark_change"
_SQLITE_TRIGGERS = {
    f"{TRIGGER}_insert": "AFTER INSERT ON day_marks BEGIN {upsert_new} END",
    f"{TRIGGER}_update": "AFTER UPDATE ON day_marks BEGIN {upsert_old} {upsert_new} END",
    f"{TRIGGER}_delete": "AFTER DELETE ON day_marks BEGIN {upsert_old} END",
}
_SQLITE_UPSERT = (
    "INSERT INTO ops_mark_changes (user_id, position, changed_at) "
    "SELECT {row}.user_id, coalesce(max(position), 0) + 1, strftime('%Y-%m-%d %H:%M:%f', 'now') || '000' "
    "FROM ops_mark_changes WHERE true "
    "ON CONFLICT (user_id) DO UPDATE SET position = excluded.position, changed_at = excluded.changed_at;"
)
# For a user who changed before (the usual case) the row is updated in place: no index column
# changes, so PostgreSQL updates it without touching an index, which costs the app much less
# than an upsert's speculative insert; the upsert covers a user's first change.
_PG_TOUCH = """
        UPDATE {schema}.ops_mark_changes
            SET position = nextval({sequence}), changed_at = clock_timestamp()
            WHERE user_id = {row}.user_id;
        IF NOT FOUND THEN
            {upsert}
        END IF;"""
# Citus refuses a volatile function (nextval) in an UPDATE of a distributed table: the upsert
# alone there, its position drawn by the column's identity.
_PG_UPSERT = (
    "INSERT INTO {schema}.ops_mark_changes AS c (user_id, changed_at) "
    "VALUES ({row}.user_id, clock_timestamp()) ON CONFLICT (user_id) "
    "DO UPDATE SET position = EXCLUDED.position, changed_at = EXCLUDED.changed_at;"
)
_PG_FUNCTION = """
CREATE OR REPLACE FUNCTION {schema}.{name}() RETURNS trigger LANGUAGE plpgsql AS $body$
BEGIN
    IF TG_OP <> 'DELETE' THEN{touch_new}
    END IF;
    IF TG_OP = 'DELETE' OR (TG_OP = 'UPDATE' AND NEW.user_id IS DISTINCT FROM OLD.user_id) THEN{touch_old}
    END IF;
    RETURN NULL;
END
$body$
"""
_TABLE = "ops_mark_changes"
# Sentinel position of a row a rebuild made to hold the lock of a user who never changed.
NO_CHANGE = 0


@dataclass(frozen=True)
class MarkChange:
    """A user's last captured change: its position and when it was made."""

    user_id: str
    position: int
    changed_at: datetime


def install_capture(engine: Engine) -> None:
    """Create the capture triggers on ``day_marks`` where missing (idempotent)."""
    with engine.begin() as conn:
        if is_postgres(conn):
            _install_postgres(conn)
        else:
            _install_sqlite(conn)


def _install_postgres(conn: Connection) -> None:
    schema = str(conn.execute(text("SELECT current_schema()")).scalar_one())
    quoted = conn.dialect.identifier_preparer.quote_schema(schema)
    # Two processes running init-db at once must not race on CREATE.
    conn.execute(text("SELECT pg_advisory_xact_lock(1347376129, 1)"))
    sequence = conn.execute(
        text("SELECT pg_get_serial_sequence(:t, 'position')"), {"t": f"{quoted}.{_TABLE}"}
    ).scalar_one()
    literal = "'" + str(sequence).replace("'", "''") + "'"
    citus = conn.execute(text("SELECT 1 FROM pg_extension WHERE extname = 'citus'")).first() is not None
    touch: dict[str, str] = {}
    for row in ("NEW", "OLD"):
        upsert = _PG_UPSERT.format(schema=quoted, row=row)
        touch[row] = (
            f"\n        {upsert}"
            if citus
            else _PG_TOUCH.format(schema=quoted, sequence=literal, row=row, upsert=upsert)
        )
    function = _PG_FUNCTION.format(
        schema=quoted, name=TRIGGER, touch_new=touch["NEW"], touch_old=touch["OLD"]
    )
    conn.execute(text(function))
    present = conn.execute(
        text("SELECT 1 FROM pg_trigger WHERE tgrelid = to_regclass('day_marks') AND tgname = :name"),
        {"name": TRIGGER},
    ).first()
    if present is None:
        if citus:
            # Citus creates the trigger on every shard; it runs there and writes only the
            # co-located shard of ops_mark_changes (same user id), which is what it allows.
            conn.execute(text("SELECT set_config('citus.enable_unsafe_triggers', 'on', true)"))
        conn.execute(
            text(
                f"CREATE TRIGGER {TRIGGER} AFTER INSERT OR UPDATE OR DELETE ON day_marks "
                f"FOR EACH ROW EXECUTE FUNCTION {quoted}.{TRIGGER}()"
            )
        )


def _install_sqlite(conn: Connection) -> None:
    conn.execute(text(f"CREATE INDEX IF NOT EXISTS ix_{_TABLE}_position ON {_TABLE} (position)"))
    for name, body in _SQLITE_TRIGGERS.items():
        sql = body.format(
            upsert_new=_SQLITE_UPSERT.format(row="NEW"), upsert_old=_SQLITE_UPSERT.format(row="OLD")
        )
        conn.execute(text(f"CREATE TRIGGER IF NOT EXISTS {name} {sql}"))


@contextmanager
def capture_paused(conn: Connection) -> Iterator[None]:
    """Write without capture inside the caller's transaction (the seed: new users, runs right).

    PostgreSQL: ``session_replication_role = replica`` for this transaction only, where the
    role may set it (else capture stays on); SQLite: the triggers are dropped and put back in
    the same transaction, which no other writer can see. Nothing stays paused after a crash.
    """
    if is_postgres(conn):
        if conn.execute(text("SELECT current_setting('is_superuser')")).scalar_one() == "on":
            conn.execute(text("SET LOCAL session_replication_role = replica"))
        yield
        return
    for name in _SQLITE_TRIGGERS:
        conn.execute(text(f"DROP TRIGGER IF EXISTS {name}"))
    yield
    _install_sqlite(conn)


def drop_capture(conn: Connection) -> bool:
    """Drop the PostgreSQL capture trigger if present; return True if it was there."""
    if not capture_installed(conn):
        return False
    conn.execute(text(f"DROP TRIGGER {TRIGGER} ON day_marks"))
    return True


def capture_installed(conn: Connection) -> bool:
    """Return True when the capture triggers are on ``day_marks``."""
    if is_postgres(conn):
        found = conn.execute(
            text("SELECT count(*) FROM pg_trigger WHERE tgrelid = to_regclass('day_marks') AND tgname = :n"),
            {"n": TRIGGER},
        ).scalar_one()
        return bool(found)
    found = conn.execute(
        text("SELECT count(*) FROM sqlite_master WHERE type = 'trigger' AND name LIKE :p"),
        {"p": f"{TRIGGER}_%"},
    ).scalar_one()
    return int(found) == len(_SQLITE_TRIGGERS)


_POSITIONS_PG = text("SELECT user_id, position FROM ops_mark_changes WHERE user_id = ANY(:uids)")
_POSITIONS_SQLITE = text("SELECT user_id, position FROM ops_mark_changes WHERE user_id IN :uids").bindparams(
    bindparam("uids", expanding=True)
)


def positions(conn: Connection, user_ids: Sequence[str]) -> dict[str, int]:
    """Return the users' capture positions now (users who never changed are left out)."""
    stmt = _POSITIONS_PG if is_postgres(conn) else _POSITIONS_SQLITE
    found: dict[str, int] = {}
    for part in chunks(list(user_ids)):
        found.update((uid, int(pos)) for uid, pos in conn.execute(stmt, {"uids": list(part)}).all())
    return found


def position(conn: Connection, user_id: str) -> int | None:
    """Return one user's capture position now, or None if the user never changed."""
    return positions(conn, [user_id]).get(user_id)


_HOLD = text(
    "INSERT INTO ops_mark_changes AS c (user_id, position, changed_at) "
    "VALUES (:uid, :none, clock_timestamp()) "
    "ON CONFLICT (user_id) DO UPDATE SET position = c.position RETURNING position"
)


def hold_position(conn: Connection, user_id: str) -> int | None:
    """Lock the user's capture row until the transaction ends; return its position (PostgreSQL).

    A change the app commits after this waits for the caller's commit (its trigger updates the
    locked row), so a position equal to the one read before the marks proves the marks the
    caller used are still the committed ones when it commits. A user with no row gets one at
    ``NO_CHANGE`` (returned as None); a concurrent first change then wins the insert and its
    position comes back instead.
    """
    found = int(conn.execute(_HOLD, {"uid": user_id, "none": NO_CHANGE}).scalar_one())
    return None if found == NO_CHANGE else found


def unchanged(seen: int | None, now: int | None) -> bool:
    """Return True when two readings of a user's position say no change came in between."""
    return (seen or NO_CHANGE) == (now or NO_CHANGE)


_SEEN_UPSERT = text(
    "INSERT INTO ops_capture_seen (operation_id, user_id, position, caught_up) VALUES (:op, :uid, :pos, 0) "
    "ON CONFLICT (operation_id, user_id) DO UPDATE SET position = excluded.position"
)


def record_seen(conn: Connection, operation_id: str, seen: Mapping[str, int]) -> None:
    """Write, for each user, the capture position its rebuild in the operation read under."""
    if seen:
        conn.execute(_SEEN_UPSERT, [{"op": operation_id, "uid": u, "pos": p} for u, p in seen.items()])


_CHANGED_AFTER = text(
    "SELECT c.user_id, c.position, c.changed_at FROM ops_mark_changes c "
    "JOIN ops_operation_items i ON i.user_id = c.user_id AND i.operation_id = :op "
    "LEFT JOIN ops_capture_seen s ON s.user_id = c.user_id AND s.operation_id = :op "
    "WHERE i.status = 'completed' AND c.position <> :none "
    "AND (s.position IS NULL OR s.position <> c.position) "
    "ORDER BY c.user_id"
).columns(user_id=Text, position=BigInteger, changed_at=DateTime(timezone=True))


def changed_after_rebuild(conn: Connection, operation_id: str) -> list[MarkChange]:
    """Return the operation's completed users whose marks changed after their rebuild read them."""
    rows = conn.execute(_CHANGED_AFTER, {"op": operation_id, "none": NO_CHANGE}).all()
    return [MarkChange(uid, int(pos), as_utc(at)) for uid, pos, at in rows]


_CAUGHT_UP = text(
    "INSERT INTO ops_capture_seen (operation_id, user_id, caught_up) VALUES (:op, :uid, 1) "
    "ON CONFLICT (operation_id, user_id) DO UPDATE SET caught_up = ops_capture_seen.caught_up + 1"
)


def record_caught_up(conn: Connection, operation_id: str, user_ids: Sequence[str]) -> None:
    """Count one more catch-up rebuild for each of the users."""
    if user_ids:
        conn.execute(_CAUGHT_UP, [{"op": operation_id, "uid": u} for u in user_ids])


_LATE = text(
    "INSERT INTO ops_capture_seen (operation_id, user_id, caught_up, late_position, late_changed_at) "
    "VALUES (:op, :uid, 0, :pos, :at) "
    "ON CONFLICT (operation_id, user_id) DO UPDATE SET late_position = excluded.late_position, "
    "late_changed_at = excluded.late_changed_at"
)


def record_late(conn: Connection, operation_id: str, changes: Sequence[MarkChange]) -> None:
    """Record the changes that came after the operation's final pass (the app's to maintain)."""
    if changes:
        conn.execute(
            _LATE,
            [{"op": operation_id, "uid": c.user_id, "pos": c.position, "at": c.changed_at} for c in changes],
        )


@dataclass(frozen=True)
class CatchUpCounts:
    """An operation's catch-up as the ledger holds it."""

    caught_up_users: int = 0
    late_users: int = 0


# Each count reads its partial index (``ix_ops_capture_seen_caught_up`` / ``_late``): the users
# it counts, not the operation's row per rebuilt user.
_COUNTS = text(
    "SELECT (SELECT count(*) FROM ops_capture_seen WHERE operation_id = :op AND caught_up > 0), "
    "(SELECT count(*) FROM ops_capture_seen WHERE operation_id = :op AND late_position IS NOT NULL)"
)


def catch_up_counts(conn: Connection, operation_id: str) -> CatchUpCounts:
    """Return how many users catch-up rebuilt, and how many changed after the final pass."""
    caught, late = conn.execute(_COUNTS, {"op": operation_id}).one()
    return CatchUpCounts(int(caught), int(late))


_LATE_ROWS = text(
    "SELECT user_id, late_position, late_changed_at FROM ops_capture_seen "
    "WHERE operation_id = :op AND late_position IS NOT NULL ORDER BY user_id"
).columns(user_id=Text, late_position=BigInteger, late_changed_at=DateTime(timezone=True))


def late_changes(conn: Connection, operation_id: str) -> list[MarkChange]:
    """Return the changes recorded as after the operation's final pass."""
    rows = conn.execute(_LATE_ROWS, {"op": operation_id}).all()
    return [MarkChange(uid, int(pos), as_utc(at)) for uid, pos, at in rows]
