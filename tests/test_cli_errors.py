"""Every expected failure of the command is one ``error:`` line and a documented exit status,
and writes nothing: no row, no database file, no report, no textfile. On both databases where a
database is involved.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import select, update
from typer.testing import CliRunner

from potato_ops import Storage
from potato_ops.cli import app
from potato_ops.db.schema import ops_backups
from tests.conftest import add_runs, add_user, snapshot

runner = CliRunner()


def invoke(db_url: str | None, *args: str, cwd: Path | None = None) -> tuple[int, str, str]:
    env = {"POTATO_DATABASE_URL": db_url} if db_url else {}
    result = runner.invoke(app, [*args], env=env)
    return result.exit_code, result.stdout, result.stderr


def assert_one_line_error(err: str, starts: str) -> None:
    assert err.count("\n") == 1 and err.endswith("\n"), err
    assert err.startswith("error: " + starts), err
    assert "Traceback" not in err


@pytest.fixture
def populated(storage: Storage) -> Storage:
    """User u with marks, matching runs and two backups; user v with one backup."""
    add_user(storage, "u", ["2024-03-01", "2024-03-02", "2024-03-09"])
    add_runs(storage, "u", [("2024-03-01", "2024-03-02"), ("2024-03-09", "2024-03-09")])
    add_user(storage, "v", ["2024-02-01"])
    add_runs(storage, "v", [("2024-02-01", "2024-02-01")])
    storage.backup_user_runs("u")
    storage.backup_user_runs("u")
    storage.backup_user_runs("v")
    return storage


def backup_ids(storage: Storage, user_id: str) -> list[int]:
    with storage.engine.connect() as conn:
        found = conn.execute(
            select(ops_backups.c.id).where(ops_backups.c.user_id == user_id).order_by(ops_backups.c.id)
        )
        return [int(i) for i in found.scalars()]


CASES = [
    pytest.param(
        ["rebuild", "--user-id", "u", "--from", "0001-01-01"],
        1,
        "--from 0001-01-01 is outside the supported range 0002-01-01..9998-12-31",
        id="rebuild-from-year-1",
    ),
    pytest.param(
        ["rebuild", "--user-id", "u", "--to", "9999-12-31"],
        1,
        "--to 9999-12-31 is outside the supported range",
        id="rebuild-to-year-9999",
    ),
    pytest.param(
        ["audit", "--no-notebook", "--since", "99999999d"],
        1,
        "since '99999999d' reaches back before the year 1",
        id="audit-since-too-far",
    ),
    pytest.param(
        ["metrics", "--since", "99999999d"],
        1,
        "since '99999999d' reaches back before the year 1",
        id="metrics-since-too-far",
    ),
    pytest.param(
        ["prune-backups", "--older-than", "inf"],
        2,
        "--older-than inf: give a finite number of days",
        id="prune-older-than-inf",
    ),
    pytest.param(
        ["prune-backups", "--older-than", "1e12"],
        2,
        "--older-than 1e+12: reaches back before the year 1",
        id="prune-older-than-huge",
    ),
    pytest.param(
        ["bulk-rebuild", "--all", "--from", "0001-01-01", "--execute"],
        1,
        "--from 0001-01-01 is outside the supported range",
        id="bulk-from-year-1-refused-up-front",
    ),
    pytest.param(
        ["bulk-rebuild", "--all", "--batch-size", "0", "--execute"],
        1,
        "--batch-size must be a whole number of at least 1, not 0",
        id="bulk-names-the-option-typed",
    ),
    pytest.param(["flag", ""], 2, "flag name '' must be non-empty", id="flag-unnamed"),
    pytest.param(["flag", " ", "--on"], 2, "flag name ' ' must be non-empty", id="flag-blank"),
    pytest.param(["runs", "--user-id", "nobody"], 1, "no user with id 'nobody'", id="runs-unknown-user"),
    pytest.param(
        ["backups", "--user-id", "nobody"], 1, "no user with id 'nobody'", id="backups-unknown-user"
    ),
    pytest.param(["backup", "--user-id", "nobody"], 1, "no user with id 'nobody'", id="backup-unknown-user"),
    pytest.param(
        ["validate", "--user-id", "nobody"], 1, "no user with id 'nobody'", id="validate-unknown-user"
    ),
    pytest.param(
        ["restore", "--user-id", "nobody", "--backup-id", "1"],
        1,
        "no user with id 'nobody'",
        id="restore-unknown-user",
    ),
    pytest.param(
        ["set-timezone", "UTC", "--email", "nobody@example.com"],
        1,
        "no user with email 'nobody@example.com'",
        id="set-timezone-unknown-email",
    ),
]


@pytest.mark.parametrize(("args", "code", "message"), CASES)
def test_refused_with_one_line_and_nothing_written(
    populated: Storage, db_url: str, args: list[str], code: int, message: str
) -> None:
    before = snapshot(populated)

    got, out, err = invoke(db_url, *args)

    assert (got, out) == (code, "")
    assert_one_line_error(err, message)
    assert snapshot(populated) == before


def test_non_utf8_user_ids_file_is_named(populated: Storage, db_url: str, tmp_path: Path) -> None:
    ids = tmp_path / "ids.txt"
    ids.write_bytes(b"u\n\xff\xfe v\n")
    before = snapshot(populated)

    got, out, err = invoke(db_url, "bulk-rebuild", "--user-ids-file", str(ids), "--execute")

    assert (got, out) == (1, "")
    assert_one_line_error(err, f"--user-ids-file {ids}: not UTF-8 text (byte 2)")
    assert snapshot(populated) == before


def test_missing_user_ids_file_is_named(populated: Storage, db_url: str, tmp_path: Path) -> None:
    missing = tmp_path / "nope.txt"
    got, out, err = invoke(db_url, "bulk-rebuild", "--user-ids-file", str(missing))

    assert (got, out) == (1, "")
    assert_one_line_error(err, f"--user-ids-file {missing}: cannot read: No such file or directory")


@pytest.mark.parametrize(
    "payload",
    ['[{"id":1', '{"a":1}', '[{"id":1}]', "[1, 2]", '[{"id": 1, "start_date": "never"}]'],
    ids=["truncated", "not-a-list", "missing-fields", "not-runs", "bad-date"],
)
def test_a_damaged_backup_is_named_and_the_rest_listed(populated: Storage, db_url: str, payload: str) -> None:
    first, second = backup_ids(populated, "u")
    with populated.engine.begin() as conn:
        conn.execute(update(ops_backups).where(ops_backups.c.id == first).values(payload=payload))
    before = snapshot(populated)

    got, out, err = invoke(db_url, "backups", "--user-id", "u")

    assert got == 3
    assert [line.split()[0] for line in out.splitlines()] == [str(second)]
    assert_one_line_error(err, f"backup {first} is damaged: its runs cannot be read")

    got, out, err = invoke(db_url, "restore", "--user-id", "u", "--backup-id", str(first))

    assert (got, out) == (1, "")
    assert_one_line_error(err, f"backup {first} is damaged: its runs cannot be read")
    assert snapshot(populated) == before


def test_non_numeric_port_is_one_line(tmp_path: Path) -> None:
    got, out, err = invoke("postgresql+psycopg://postgres:pw@127.0.0.1:abc/db", "runs", "--user-id", "u")

    assert (got, out) == (1, "")
    assert_one_line_error(err, "not a database URL (the port must be a number): ")
    assert "pw" not in err


# --- nothing is created --------------------------------------------------------------------------

READING_COMMANDS = [
    ["runs", "--user-id", "u"],
    ["backups", "--user-id", "u"],
    ["validate"],
    ["metrics"],
    ["audit", "--no-notebook"],
    ["operations"],
    ["progress", "abc"],
    ["flag"],
    ["rebuild", "--user-id", "u"],
    ["refresh-active"],
]


@pytest.mark.parametrize("args", READING_COMMANDS, ids=lambda a: a[0])
def test_a_missing_sqlite_file_is_named_and_not_created(tmp_path: Path, args: list[str]) -> None:
    missing = tmp_path / "nothing.sqlite3"

    got, out, err = invoke(f"sqlite:///{missing}", *args)

    assert (got, out) == (1, "")
    assert_one_line_error(err, f"database file {missing} does not exist (potato-ops init-db creates it)")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("args", READING_COMMANDS[:3], ids=lambda a: a[0])
def test_a_missing_folder_is_named(tmp_path: Path, args: list[str]) -> None:
    missing = tmp_path / "no-such-folder" / "potato.sqlite3"

    got, out, err = invoke(f"sqlite:///{missing}", *args)

    assert (got, out) == (1, "")
    assert_one_line_error(err, f"database folder {missing.parent} does not exist")
    assert list(tmp_path.iterdir()) == []


def test_the_embedded_database_is_not_created_by_a_read(tmp_path: Path) -> None:
    # conftest points POTATO_OPS_HOME at tmp_path/home, which does not exist yet.
    got, _, err = invoke(None, "validate")

    assert got == 1
    assert_one_line_error(err, "database folder ")
    assert not (tmp_path / "home").exists()


# --- rules files and textfiles ---------------------------------------------------------------------


def test_a_rules_file_nested_3000_deep_is_one_line(populated: Storage, db_url: str, tmp_path: Path) -> None:
    deep = tmp_path / "deep.yaml"
    deep.write_text("alerts: " + "[" * 3000 + "]" * 3000 + "\n")

    for args in (
        ["audit", "--no-notebook", "--rules", str(deep)],
        ["alerts", "export", "--rules", str(deep)],
    ):
        got, out, err = invoke(db_url, *args)
        assert (got, out) == (1, ""), args
        assert_one_line_error(err, "not valid alert rules: YAML nested too deeply")


def test_a_huge_rules_file_is_refused_by_size(tmp_path: Path) -> None:
    rule = '  - {name: "R%d", condition: "slow_users > 0", severity: "P2"}\n'
    big = tmp_path / "big.yaml"
    big.write_text("alerts:\n" + "".join(rule % i for i in range(5000)))

    got, out, err = invoke(None, "alerts", "export", "--rules", str(big))

    assert (got, out) == (1, "")
    assert_one_line_error(err, f"alert rules file '{big}' is larger than 262144 bytes")


def test_too_many_rules_are_refused(tmp_path: Path) -> None:
    many = tmp_path / "many.yaml"
    many.write_text(
        "alerts:\n"
        + "".join(f"- {{name: R{i}, condition: slow_users>0, severity: P2}}\n" for i in range(1001))
    )

    got, out, err = invoke(None, "alerts", "export", "--rules", str(many))

    assert (got, out) == (1, "")
    assert_one_line_error(err, "line 2: 'alerts:' holds 1001 entries; at most 1000 are allowed")


def test_a_missing_rules_file_is_named(tmp_path: Path) -> None:
    got, out, err = invoke(None, "alerts", "export", "--rules", str(tmp_path / "nope.yaml"))

    assert (got, out) == (1, "")
    assert_one_line_error(err, f"--rules {tmp_path / 'nope.yaml'}: no such file")


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("missing/potato.prom", "folder {dir}/missing does not exist"),
        ("potato.txt", "node_exporter's textfile collector reads only *.prom files"),
    ],
    ids=["missing-folder", "wrong-suffix"],
)
def test_a_bad_textfile_is_refused_before_any_work(
    populated: Storage, db_url: str, tmp_path: Path, name: str, message: str
) -> None:
    target = tmp_path / name
    reports = tmp_path / "reports"
    for command in (["metrics"], ["audit", "--reports-dir", str(reports)]):
        got, out, err = invoke(db_url, *command, "--textfile", str(target))
        assert (got, out) == (1, "")
        assert_one_line_error(err, f"--textfile {target}: " + message.format(dir=tmp_path))
    assert not target.exists() and not reports.exists()
