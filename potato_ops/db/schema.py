"""Tables, for both dialects, and the checks that a database matches them.

App tables (``users``, ``day_marks``, ``runs``, ``feature_flags``) belong to the app: they are
created only where missing (for the embedded demo and the tests). Ops tables (``ops_*``) belong
to this package and are created whenever missing, without touching app data.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    Connection,
    Date,
    DateTime,
    Engine,
    Float,
    Identity,
    Index,
    Integer,
    MetaData,
    PrimaryKeyConstraint,
    Table,
    Text,
    event,
    func,
    inspect,
    text,
)
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.schema import DDL
from sqlalchemy.sql.functions import FunctionElement

from potato_ops.errors import SchemaError

metadata = MetaData()


class new_uuid_text(FunctionElement[str]):
    """A new random UUID as text, as each dialect makes one (the app's ids default to UUIDs)."""

    type = Text()
    inherit_cache = True


@compiles(new_uuid_text, "postgresql")
def _uuid_postgresql(_element: new_uuid_text, _compiler: Any, **_kw: Any) -> str:
    return "(gen_random_uuid()::text)"


@compiles(new_uuid_text, "sqlite")
def _uuid_sqlite(_element: new_uuid_text, _compiler: Any, **_kw: Any) -> str:
    # Version 4 layout: xxxxxxxx-xxxx-4xxx-[89ab]xxx-xxxxxxxxxxxx
    return (
        "(lower(hex(randomblob(4))) || '-' || lower(hex(randomblob(2))) || '-4' || "
        "substr(lower(hex(randomblob(2))), 2) || '-' || substr('89ab', 1 + (abs(random()) % 4), 1) || "
        "substr(lower(hex(randomblob(2))), 2) || '-' || lower(hex(randomblob(6))))"
    )


RUNS_V2_FLAG = "ff.potato.runs_v2"


users = Table(
    "users",
    metadata,
    Column("id", Text, primary_key=True, server_default=new_uuid_text()),
    Column("email", Text, unique=True),
    Column("timezone", Text, nullable=False, server_default="UTC"),
    Column(
        "created_at",
        DateTime(timezone=True),
        nullable=False,
        server_default=func.current_timestamp(),
    ),
)

day_marks = Table(
    "day_marks",
    metadata,
    Column("user_id", Text, nullable=False),
    Column("date", Date, nullable=False),
    Column("value", Boolean, nullable=False, server_default=text("true")),
    Column(
        "updated_at",
        DateTime(timezone=True),
        nullable=False,
        server_default=func.current_timestamp(),
    ),
    PrimaryKeyConstraint("user_id", "date", name="day_marks_pkey"),
)

runs = Table(
    "runs",
    metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), Identity(), primary_key=True),
    Column("user_id", Text, nullable=False),
    Column("start_date", Date, nullable=False),
    Column("end_date", Date, nullable=False),
    Column("day_count", Integer, nullable=False),
    Column("active", Boolean, nullable=False, server_default=text("false")),
    Column(
        "created_at",
        DateTime(timezone=True),
        nullable=False,
        server_default=func.current_timestamp(),
    ),
    CheckConstraint("start_date <= end_date", name="runs_start_before_end"),
    Index("ix_runs_user_start", "user_id", "start_date"),
    Index(
        "ux_runs_one_active_per_user",
        "user_id",
        unique=True,
        postgresql_where=text("active"),
        sqlite_where=text("active"),
    ),
    sqlite_autoincrement=True,  # never reuse an id, so a backup restores its runs' own ids
)

feature_flags = Table(
    "feature_flags",
    metadata,
    Column("name", Text, primary_key=True),
    Column("enabled", Boolean, nullable=False, server_default=text("false")),
)

# PostgreSQL-only: the generated span and the no-overlap exclusion constraint.
event.listen(
    metadata,
    "before_create",
    DDL("CREATE EXTENSION IF NOT EXISTS btree_gist").execute_if(  # type: ignore[no-untyped-call]
        dialect="postgresql"
    ),
)
event.listen(
    runs,
    "after_create",
    DDL(  # type: ignore[no-untyped-call]
        "ALTER TABLE runs ADD COLUMN span daterange "
        "GENERATED ALWAYS AS (daterange(start_date, end_date, '[]')) STORED; "
        "ALTER TABLE runs ADD CONSTRAINT runs_no_overlap "
        "EXCLUDE USING gist (user_id WITH =, span WITH &&)"
    ).execute_if(dialect="postgresql"),
)

APP_TABLES = (users, day_marks, runs, feature_flags)

ops_backups = Table(
    "ops_backups",
    metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), Identity(), primary_key=True),
    Column("user_id", Text, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("operation_id", Text),
    Column("reason", Text, nullable=False),
    Column("run_count", Integer, nullable=False),
    Column("checksum", Text, nullable=False),
    Column("payload", Text, nullable=False),
    Index("ix_ops_backups_user", "user_id", "created_at"),
    Index("ix_ops_backups_created", "created_at"),
    sqlite_autoincrement=True,
)

ops_rebuild_history = Table(
    "ops_rebuild_history",
    metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), Identity(), primary_key=True),
    Column("operation_id", Text, nullable=False),
    Column("user_id", Text, nullable=False),
    Column("kind", Text, nullable=False),  # rebuild | partial_rebuild | restore
    Column("started_at", DateTime(timezone=True), nullable=False),
    Column("finished_at", DateTime(timezone=True), nullable=False),
    Column("duration_ms", Float, nullable=False),
    Column("success", Boolean, nullable=False),
    Column("runs_deleted", Integer, nullable=False, server_default="0"),
    Column("runs_created", Integer, nullable=False, server_default="0"),
    Column("days_processed", Integer, nullable=False, server_default="0"),
    Column("violations", Integer, nullable=False, server_default="0"),
    Column("from_date", Date),
    Column("to_date", Date),
    Column("error", Text),
    Index("ix_ops_history_user", "user_id", "finished_at"),
    Index("ix_ops_history_finished", "finished_at"),
    Index("ix_ops_history_operation", "operation_id"),
)

ops_operations = Table(
    "ops_operations",
    metadata,
    Column("id", Text, primary_key=True),
    Column("kind", Text, nullable=False),
    Column("status", Text, nullable=False),
    Column("dry_run", Boolean, nullable=False),
    Column("config", Text, nullable=False),
    Column("total_users", Integer, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("started_at", DateTime(timezone=True)),
    Column("heartbeat_at", DateTime(timezone=True)),
    Column("finished_at", DateTime(timezone=True)),
    Column("runner_host", Text),
    Column("runner_pid", Integer),
    Column("runner_token", Text),
    Column("cancel_requested", Boolean, nullable=False, server_default=text("false")),
    Column("error", Text),
    # Bumped by every takeover (resume): a batch commits only under the epoch its worker
    # joined, so a runner that lost the operation can never write again.
    Column("epoch", Integer, nullable=False, server_default="0"),
    # `potato-ops pause`: every worker stops at its next batch boundary until `resume`.
    Column("pause_requested", Boolean, nullable=False, server_default=text("false")),
    Index("ix_ops_operations_created", "created_at"),
)

ops_operation_items = Table(
    "ops_operation_items",
    metadata,
    Column("operation_id", Text, nullable=False),
    Column("user_id", Text, nullable=False),
    Column("position", Integer, nullable=False),
    Column("status", Text, nullable=False),  # pending | completed | failed
    Column("attempts", Integer, nullable=False, server_default="0"),
    Column("changed", Boolean),
    Column("runs_deleted", Integer),
    Column("runs_created", Integer),
    Column("active_flags_changed", Integer),
    Column("duration_ms", Float),
    Column("error_class", Text),
    Column("error_message", Text),
    Column("finished_at", DateTime(timezone=True)),
    PrimaryKeyConstraint("operation_id", "user_id", name="ops_operation_items_pkey"),
    Index("ix_ops_items_status", "operation_id", "status", "position"),
    # The ETA reads the most recent finishes in this order, never the whole operation.
    Index("ix_ops_items_finished", "operation_id", "finished_at"),
)

# The operation's items counted by status, kept exact by every writer of the items in the
# same transaction (``ledger``), so counting an operation never reads its items. ``slot`` is
# the batch that wrote a difference (-1: the operation as a whole: create, reopen, catch-up),
# so concurrent batches never update the same row; a count sums the slots of one status.
# The row (slot -1, pending) is written with the operation: it marks a tallied operation.
# Not per user: on Citus it stays a plain table on the coordinator.
ops_operation_tallies = Table(
    "ops_operation_tallies",
    metadata,
    Column("operation_id", Text, nullable=False),
    Column("slot", Integer, nullable=False),
    Column("status", Text, nullable=False),
    Column("users", BigInteger, nullable=False, server_default="0"),
    Column("changed", BigInteger, nullable=False, server_default="0"),
    Column("runs_deleted", BigInteger, nullable=False, server_default="0"),
    Column("runs_created", BigInteger, nullable=False, server_default="0"),
    Column("duration_ms", Float, nullable=False, server_default="0"),
    PrimaryKeyConstraint("operation_id", "slot", "status", name="ops_operation_tallies_pkey"),
)

# The operation's batches: what workers (threads, processes, hosts) claim. Batch n holds the
# items at positions n*size+1 .. (n+1)*size. A claim is a lease: the claimer's token and when
# it lapses; a batch commits only while its claim is still the committer's.
ops_operation_batches = Table(
    "ops_operation_batches",
    metadata,
    Column("operation_id", Text, nullable=False),
    Column("batch_no", Integer, nullable=False),
    Column("status", Text, nullable=False),  # pending | done
    Column("claim_token", Text),
    Column("claim_host", Text),
    Column("claim_pid", Integer),
    Column("claimed_at", DateTime(timezone=True)),
    Column("expires_at", DateTime(timezone=True)),
    Column("finished_at", DateTime(timezone=True)),
    PrimaryKeyConstraint("operation_id", "batch_no", name="ops_operation_batches_pkey"),
    Index("ix_ops_batches_status", "operation_id", "status", "batch_no"),
)

# One row per wait of one runner of an operation (paused, outside its window, throttled on
# standby lag or load): its reason as last seen, when it began and ended. Per operation, not
# per user: kept on the coordinator with the operation rows.
ops_throttle_episodes = Table(
    "ops_throttle_episodes",
    metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), Identity(), primary_key=True),
    Column("operation_id", Text, nullable=False),
    Column("runner_token", Text, nullable=False),
    Column("runner_host", Text),
    Column("runner_pid", Integer),
    Column("kind", Text, nullable=False),  # paused | window | replica_lag | load
    Column("reason", Text, nullable=False),
    Column("started_at", DateTime(timezone=True), nullable=False),
    Column("last_checked_at", DateTime(timezone=True), nullable=False),
    Column("ended_at", DateTime(timezone=True)),
    Column("checks", Integer, nullable=False, server_default="1"),
    Index("ix_ops_throttle_episodes_op", "operation_id", "ended_at"),
)

ops_timezone_changes = Table(
    "ops_timezone_changes",
    metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), Identity(), primary_key=True),
    Column("user_id", Text, nullable=False),
    Column("old_timezone", Text),
    Column("new_timezone", Text, nullable=False),
    Column("changed_at", DateTime(timezone=True), nullable=False),
    Index("ix_ops_tz_user", "user_id", "changed_at"),
)

# One row per notebook run that ended: its record kept in the database, and, once archived,
# the hash of its manifest and its place in the folder's chain. A run is not per user, so the
# key is the run id alone. The row anchors the archive outside its folder (a removed newest
# run shows), and keeps the record of a run whose archiving failed (its change is not lost).
ops_run_records = Table(
    "ops_run_records",
    metadata,
    Column("run_id", Text, primary_key=True),
    Column("notebook", Text, nullable=False),
    Column("status", Text, nullable=False),
    Column("verdict", Text, nullable=False),
    Column("operator", Text, nullable=False),
    Column("parameters", Text, nullable=False),  # JSON object, scrubbed of secrets
    Column("operation_ids", Text, nullable=False),  # JSON list
    Column("started_at", DateTime(timezone=True), nullable=False),
    Column("finished_at", DateTime(timezone=True), nullable=False),
    Column("recorded_at", DateTime(timezone=True), nullable=False),
    Column("archive", Text, nullable=False),  # host:absolute folder the run was archived in
    Column("seq", Integer),  # NULL: not archived
    Column("manifest_sha256", Text),
    Column("entry_hash", Text),
    Column("signature", Text),  # base64 ed25519 signature of entry_hash, when signing is on
    Column("archive_error", Text),  # why the run could not be archived
    Column("result", Text, nullable=False),  # the whole result JSON, scrubbed of secrets
    Index("ix_ops_run_records_archive", "archive", "seq"),
)

# Change capture (``potato_ops.db.capture``): the triggers on ``day_marks`` keep, per user, the
# position of the last committed change (one row per user who ever changed, so it never grows
# past the users). A rebuild notes the position it read under; a different position later
# means the marks changed after that read.
ops_mark_changes = Table(
    "ops_mark_changes",
    metadata,
    Column("user_id", Text, nullable=False),
    # PostgreSQL draws it from the column's identity (on Citus, each node its own range);
    # SQLite's trigger takes the next integer (its writers are serialized).
    Column("position", BigInteger, Identity(), nullable=False),
    Column("changed_at", DateTime(timezone=True), nullable=False),
    PrimaryKeyConstraint("user_id", name="ops_mark_changes_pkey"),
)

# Per operation and user: the capture position the user's last rebuild in the operation read
# under, how many times catch-up rebuilt it, and a change that came after the final pass.
ops_capture_seen = Table(
    "ops_capture_seen",
    metadata,
    Column("operation_id", Text, nullable=False),
    Column("user_id", Text, nullable=False),
    Column("position", BigInteger),
    Column("caught_up", Integer, nullable=False, server_default="0"),
    Column("late_position", BigInteger),
    Column("late_changed_at", DateTime(timezone=True)),
    PrimaryKeyConstraint("operation_id", "user_id", name="ops_capture_seen_pkey"),
    # The few users catch-up rebuilt, and those changed after the final pass, counted on every
    # progress read without reading the operation's row per user.
    Index(
        "ix_ops_capture_seen_caught_up",
        "operation_id",
        postgresql_where=text("caught_up > 0"),
        sqlite_where=text("caught_up > 0"),
    ),
    Index(
        "ix_ops_capture_seen_late",
        "operation_id",
        postgresql_where=text("late_position IS NOT NULL"),
        sqlite_where=text("late_position IS NOT NULL"),
    ),
)

# One row per whole-database invariant scan: what it found and when, so every metrics output
# (a quick run without a scan, the exporter) can show the last scan's figures and their age.
# ``source`` says who scanned ('scan', 'metrics', 'audit'): the audit's rows are its success
# times. Not per user: on Citus it stays a plain table on the coordinator.
ops_scan_results = Table(
    "ops_scan_results",
    metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), Identity(), primary_key=True),
    Column("source", Text, nullable=False),
    Column("scanned_at", DateTime(timezone=True), nullable=False),
    Column("duration_ms", Float, nullable=False),
    Column("users_scanned", Integer, nullable=False),
    Column("violations", Integer, nullable=False),
    Column("users_with_violations", Integer, nullable=False),
    Column("by_kind", Text, nullable=False),  # JSON object: kind -> violation records
    Index("ix_ops_scan_results_source", "source", "scanned_at"),
)

OPS_TABLES = (
    ops_backups,
    ops_rebuild_history,
    ops_operations,
    ops_operation_items,
    ops_operation_tallies,
    ops_operation_batches,
    ops_throttle_episodes,
    ops_timezone_changes,
    ops_run_records,
    ops_mark_changes,
    ops_capture_seen,
    ops_scan_results,
)


def create_schema(engine: Engine) -> None:
    """Create missing app tables and ops tables; existing tables and data are left alone."""
    with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            # Two processes creating the schema at once must not race on CREATE.
            conn.execute(text("SELECT pg_advisory_xact_lock(1347376129, 0)"))
        metadata.create_all(conn, checkfirst=True)
        _add_missing_ops_columns(conn)
        _add_missing_ops_indexes(conn)
    check_schema(engine)


def _add_missing_ops_columns(conn: Connection) -> None:
    """Add ops columns a database made by an older release lacks (each has a default)."""
    inspector = inspect(conn)
    for table in OPS_TABLES:
        have = {c["name"] for c in inspector.get_columns(table.name)}
        for column in table.columns:
            if column.name in have or (not column.nullable and column.server_default is None):
                continue
            kind = column.type.compile(dialect=conn.dialect)
            default = ""
            if column.server_default is not None:
                default = f" NOT NULL DEFAULT {column.server_default.arg}"  # type: ignore[attr-defined]
            conn.execute(text(f"ALTER TABLE {table.name} ADD COLUMN {column.name} {kind}{default}"))


def _add_missing_ops_indexes(conn: Connection) -> None:
    """Create ops indexes a database made by an older release lacks (create_all skips them)."""
    inspector = inspect(conn)
    for table in OPS_TABLES:
        have = {i["name"] for i in inspector.get_indexes(table.name)}
        for index in table.indexes:
            if index.name not in have:
                index.create(conn)


def check_schema(engine: Engine) -> None:
    """Raise SchemaError naming every table or column the contract needs and the db lacks."""
    inspector = inspect(engine)
    present = set(inspector.get_table_names())
    missing: list[str] = []
    for table in metadata.sorted_tables:
        if table.name not in present:
            missing.append(table.name)
            continue
        have = {c["name"] for c in inspector.get_columns(table.name)}
        missing.extend(f"{table.name}.{c.name}" for c in table.columns if c.name not in have)
    if missing:
        raise SchemaError(
            "database schema is missing "
            + ", ".join(missing)
            + " (run `potato-ops init-db` or Storage.create_schema())",
            missing,
        )
