"""potato-ops on a Citus cluster: the layout, the conversion in place, and single-user routing.

Needs the cluster at $POTATO_TEST_CITUS_URL (``cluster.sh start DIR PORT``): skipped loudly
without it, failed under CI. Each test works in a schema of its own on the coordinator.
"""

from __future__ import annotations

import os
import re
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import typer
from sqlalchemy import Engine, create_engine, event, insert, text
from sqlalchemy.exc import IntegrityError
from typer.testing import CliRunner

from potato_ops import Storage, group_consecutive_dates
from potato_ops.cli.core import register
from potato_ops.db.distributed import COORDINATOR_ONLY, placement
from potato_ops.db.schema import metadata, runs
from potato_ops.demo.synth import seed
from potato_ops.domain.models import ViolationKind
from tests import test_audit_cli, test_detection, test_notebooks, test_notebooks_pg, test_rebuild
from tests.conftest import CITUS, CITUS_URL_VAR, NOW, MutableClock, _pg_unavailable, add_runs, add_user, spans

on_citus = pytest.mark.parametrize("backend", [CITUS])
PER_USER = (
    "day_marks",
    "runs",
    "ops_backups",
    "ops_rebuild_history",
    "ops_timezone_changes",
    "ops_operation_items",
    "ops_mark_changes",
    "ops_capture_seen",
)


@pytest.fixture
def plain_schema() -> Iterator[str]:
    """A schema on the coordinator with the single-server layout (nothing distributed): its URL."""
    admin_url = os.environ.get(CITUS_URL_VAR, "")
    if not admin_url:
        _pg_unavailable(f"${CITUS_URL_VAR} is not set", "Citus test cluster")
    name = f"potato_plain_{uuid.uuid4().hex[:8]}"
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE SCHEMA "{name}"'))
    except Exception as exc:
        _pg_unavailable(f"{exc.__class__.__name__}: {str(exc).splitlines()[0]}", "Citus test cluster")
    yield f"{admin_url}{'&' if '?' in admin_url else '?'}options=-csearch_path%3D{name}"
    with admin.connect() as conn:
        conn.execute(text(f'DROP SCHEMA IF EXISTS "{name}" CASCADE'))
    admin.dispose()


def init_db(url: str, *args: str) -> tuple[int, str, str]:
    app = typer.Typer()
    register(app)
    result = CliRunner().invoke(app, ["init-db", *args], env={"POTATO_DATABASE_URL": url})
    return result.exit_code, result.stdout, result.stderr


def table_rows(engine: Engine) -> dict[str, list[tuple[Any, ...]]]:
    with engine.connect() as conn:
        return {
            t.name: sorted(map(tuple, conn.execute(t.select()).all()), key=repr)
            for t in metadata.sorted_tables
        }


@pytest.mark.citus
@pytest.mark.postgres
def test_an_existing_database_converts_in_place(plain_schema: str) -> None:
    storage = Storage.connect(plain_schema, clock=MutableClock())
    storage.create_schema()
    seeded = seed(storage.engine, users_count=40, days=60, corrupt=0.3, now=NOW)
    clean = next(u for u in seeded.user_ids if u not in seeded.corrupted_users)
    storage.rebuild_user_runs(clean, dry_run=False)  # a backup and a history row, nothing repaired
    before = table_rows(storage.engine)
    code, out, _ = init_db(plain_schema)
    assert code == 0 and "run init-db --distributed" in out  # the extension is seen, nothing moved

    code, out, err = init_db(plain_schema, "--distributed")

    assert (code, err) == (0, "")
    assert "runs: primary key (user_id, id)" in out
    with storage.engine.connect() as conn:
        placed = placement(conn)
        groups: dict[str, int] = dict(
            conn.execute(
                text(
                    "SELECT logicalrelid::regclass::text, colocationid FROM pg_dist_partition "
                    "WHERE logicalrelid::regclass::text = ANY(:n)"
                ),
                {"n": [*PER_USER, "users"]},
            ).all()
        )
        keys: dict[str, str] = dict(
            conn.execute(
                text(
                    "SELECT conrelid::regclass::text, pg_get_constraintdef(oid) FROM pg_constraint "
                    "WHERE contype = 'p' AND connamespace = current_schema()::regnamespace"
                )
            ).all()
        )
    assert placed == {**dict.fromkeys([*PER_USER, "users"], "distributed"), "feature_flags": "reference"}
    assert len(set(groups.values())) == 1  # one co-location group: a user's rows live together
    assert not set(COORDINATOR_ONLY) & set(placed)
    for table in PER_USER:
        assert "user_id" in keys[table], keys[table]
    assert table_rows(storage.engine) == before  # every row kept, through the shards
    assert init_db(plain_schema, "--distributed")[0] == 0  # idempotent
    report = storage.validate_invariants()
    assert set(report.users_with_violations) == seeded.corrupted_users


def test_distributed_layout_needs_citus(tmp_path: Path) -> None:
    code, out, err = init_db(f"sqlite:///{tmp_path / 'x.sqlite3'}", "--distributed")
    assert (code, out) == (1, "")
    assert err.startswith("error: a distributed layout needs PostgreSQL") and err.count("\n") == 1


@on_citus
def test_the_no_overlap_constraint_holds_on_the_shards(storage: Storage) -> None:
    add_user(storage, "u1", ["2024-03-01"])
    add_runs(storage, "u1", [("2024-03-01", "2024-03-03")])
    with pytest.raises(IntegrityError, match="runs_no_overlap"), storage.engine.begin() as conn:
        conn.execute(
            insert(runs).values(user_id="u1", start_date="2024-03-03", end_date="2024-03-04", day_count=2)
        )


# ---------------------------------------------------------------------------- router proof

SHARD = re.compile(r"\b([a-z_]+)_(\d{6,})\b")
SERVER = re.compile(r"on server \S+@([\d.]+:\d+)")


def logging_storage(url: str, notices: list[str]) -> Storage:
    """A Storage whose sessions log every command Citus sends to a shard, into notices."""
    engine = create_engine(
        url.replace(
            "options=",
            "options=-ccitus.log_remote_commands%3Don%20-ccitus.log_local_commands%3Don%20"
            "-cclient_min_messages%3Dnotice%20",
        )
    )

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.add_notice_handler(lambda d: notices.append(d.message_primary or ""))

    return Storage(engine, clock=MutableClock())


@on_citus
def test_single_user_statements_reach_only_that_user_s_shard_group(storage: Storage, db_url: str) -> None:
    seeded = seed(storage.engine, users_count=30, days=60, corrupt=0.5, now=NOW)
    uid = next(
        iter(seeded.corrupted_users - {u for u, k in seeded.corrupted.items() if k == ViolationKind.ORPHAN})
    )
    with storage.engine.connect() as conn:
        group = {
            int(
                conn.execute(
                    text(
                        "SELECT get_shard_id_for_distribution_column(CAST(:t AS regclass), CAST(:u AS text))"
                    ),
                    {"t": t, "u": uid},
                ).scalar_one()
            )
            for t in (*PER_USER, "users")
        }
        node = conn.execute(
            text("SELECT nodename || ':' || nodeport FROM pg_dist_shard_placement WHERE shardid = :s"),
            {"s": min(group)},
        ).scalar_one()
        reference = set(
            conn.execute(
                text("SELECT shardid FROM pg_dist_shard WHERE logicalrelid::regclass::text = 'feature_flags'")
            ).scalars()
        )
    notices: list[str] = []
    logged = logging_storage(db_url, notices)

    result = logged.rebuild_user_runs(uid, dry_run=False)
    backup = logged.backup_user_runs(uid)
    assert result.success and result.backup is not None
    logged.restore_user_runs(uid, int(result.backup.id or 0))  # by id: the lookup is keyed by the user too
    logged.restore_user_runs(uid, backup)

    commands = [n for n in notices if "issuing" in n or "executing" in n]
    shards = [int(s) for n in commands for _, s in SHARD.findall(n)]
    assert shards, notices[:5]  # the logging works: commands naming shards were seen
    assert set(shards) - reference <= group, [
        n for n in commands if set(map(int, [s for _, s in SHARD.findall(n)])) - reference - group
    ]
    assert set(SERVER.findall(" ".join(c for c in commands if SHARD.search(c)))) <= {node}
    expected = [
        (s.isoformat(), e.isoformat())
        for s, e in group_consecutive_dates(m.date for m in storage.get_user_day_marks(uid) if m.value)
    ]
    assert spans(storage, uid) == expected
    logged.close()


# ---------------------------------------------------------------------------- core procedures


@on_citus
def test_rebuild_touches_only_that_user_on_citus(storage: Storage) -> None:
    test_rebuild.test_full_rebuild_touches_only_that_user(storage)


@on_citus
def test_second_rebuild_changes_nothing_on_citus(storage: Storage) -> None:
    test_rebuild.test_second_rebuild_changes_nothing(storage)


@on_citus
def test_scan_finds_exactly_the_corrupted_users_on_citus(storage: Storage) -> None:
    seeded = seed(storage.engine, users_count=test_detection.USERS, days=120, corrupt=0.3, now=NOW)
    test_detection.test_validate_invariants_finds_exactly_the_corrupted_users(storage, seeded)
    test_detection.test_rebuilding_the_corrupted_users_leaves_only_the_orphans(storage, seeded)


@on_citus
def test_audit_on_citus(storage: Storage, db_url: str) -> None:
    test_audit_cli.test_since_widens_the_window(storage, db_url)


# ---------------------------------------------------------------------------- notebooks


@pytest.fixture
def seeded_citus(db_url: str, monkeypatch: pytest.MonkeyPatch) -> test_notebooks.SeededDatabase:
    """A seeded database on the coordinator, reachable through $POTATO_DATABASE_URL."""
    found = test_notebooks.seed_database(db_url)
    monkeypatch.setenv("POTATO_DATABASE_URL", db_url)
    return found


@pytest.mark.notebook
@on_citus
def test_single_user_recovery_notebook_on_citus(
    seeded_citus: test_notebooks.SeededDatabase, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    test_notebooks_pg.test_single_user_recovery_on_postgres_never_archives_the_password(
        seeded_citus, tmp_path / "reports", monkeypatch
    )


@pytest.mark.notebook
@on_citus
def test_bulk_recovery_notebook_on_citus(seeded_citus: test_notebooks.SeededDatabase, tmp_path: Path) -> None:
    test_notebooks_pg.test_bulk_recovery_on_postgres(seeded_citus, tmp_path / "reports")


@pytest.mark.notebook
@on_citus
def test_monitoring_audit_notebook_on_citus(
    seeded_citus: test_notebooks.SeededDatabase, tmp_path: Path
) -> None:
    report = seeded_citus.storage.validate_invariants()
    record, result = test_notebooks.run("07_monitoring_audit", {"since": "7d"}, tmp_path / "reports")
    assert record.status == "problem", result["verdict"]
    assert result["figures"]["invariant_violations"] == report.total
    assert result["figures"]["users_with_violations"] == len(report.users_with_violations)
    assert result["database"]["dialect"] == "postgresql"
